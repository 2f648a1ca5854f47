"""Env classes and their Gymnasium registrations (made on ``import nsr_gym``)."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from nsr_gym.envs.allocation import (
    DROP,
    FRESH,
    KEEP,
    LOAD_OFFSET,
    RESERVE_MODES,
    RETENTION_MODES,
    WRITE_OFFSET,
    AllocationEnv,
    RetentionInfo,
    StepInfo,
)
from nsr_gym.envs.paper import PAPER_BENCHMARKS, make_paper_env

ENTRY_POINT = "nsr_gym.envs.allocation:AllocationEnv"
PAPER_ENTRY_POINT = "nsr_gym.envs.paper:make_paper_env"
MERGED_ENTRY_POINT = "nsr_gym.envs:with_learner_defaults"
BACKEND_ENTRY_POINT = "nsr_gym.envs:with_backend_learner_defaults"

#: Registered benchmarks: id suffix -> kwargs of ``AllocationEnv``. Variants that differ only by
#: numbers are registrations, not classes.
BENCHMARKS: dict[str, dict] = {
    # ---- Split-Digits: five binary tasks from scikit-learn's bundled digits ----------------
    "CyclicSplitDigits": dict(tasks="split_digits", n_tasks=5, schedule="cyclic",
                              phase_length=30, n_cycles=4),
    "RecurringSplitDigits": dict(tasks="split_digits", n_tasks=5, schedule="recurring",
                                 phase_length=30, n_cycles=4),
    # ---- Heterogeneous and domain-incremental offline benchmarks (issue 5) -----------------
    # The 5-Datasets protocol offline: every task once in order, then three passes of revisits
    # in seeded order. Ten-way tasks get two updates per step.
    "FiveDomains": dict(tasks="five_domains", n_tasks=5, schedule="revisit",
                        phase_length=30, n_cycles=4, updates_per_step=2),
    "PermutedDigits": dict(tasks="permuted_digits", n_tasks=5, schedule="revisit",
                           phase_length=30, n_cycles=4, updates_per_step=2),
    # ---- Backbones where activation caching matters (issue 6) ------------------------------
    # Split-Digits on a ViT-tiny-shaped backbone: 16 patches of 2x2 pixels, 12 frozen blocks,
    # LoRA on the top 2 blocks' qkv/proj/fc1/fc2. The fast torch path caches the activations
    # entering block 10, so only the adapted blocks run per step (`nsr-gym perf` measures it).
    # gym.make(..., learner={...}) adds to these learner options (see with_learner_defaults).
    "CyclicSplitDigitsViT": dict(tasks="split_digits", n_tasks=5, schedule="cyclic",
                                 phase_length=30, n_cycles=4,
                                 learner_defaults=dict(backbone="vit")),
    # ---- Long horizon: hundreds of tasks (issue 8) -----------------------------------------
    # 1000 pixel-permutation tasks arriving in order, revisits drawn by a Zipf law over stack
    # distance (schedule="zipf:1.5", "geometric:0.2", ... for other laws): 3000 phases of 10 steps
    # of 5 updates (a 10-way permuted task needs ~50 updates to pass 0.6 on the torch backend).
    # The torch backend caches ~0.6 MB of data and features per task at construction (~1.8 GB
    # resident at 1000 tasks); pass n_tasks=300 for a lighter torch run.
    # Pass capacity=100 (and eviction=...) for a capped bank; `nsr-gym study scaling` does.
    "LongHorizonPermutedDigits": dict(tasks="permuted_digits", n_tasks=1000, schedule="zipf",
                                      phase_length=10, n_cycles=3, updates_per_step=5),
    # ---- MNIST-1D, generated offline from a seed (issue 16; nsr_gym.data_mnist1d) ----------
    # The Split-Digits and FiveDomains protocols on 40-sample signals, on the random MLP; the
    # Pretrained variants run on the CNN that `nsr-gym pretrain` trained on signals no task uses
    # (nsr_gym/weights, checksum verified), with LoRA on its Linear layers.
    "CyclicSplitMNIST1D": dict(tasks="split_mnist1d", n_tasks=5, schedule="cyclic",
                               phase_length=30, n_cycles=4),
    "MNIST1DDomains": dict(tasks="mnist1d_domains", n_tasks=5, schedule="revisit",
                           phase_length=30, n_cycles=4, updates_per_step=2),
    "CyclicSplitMNIST1DPretrained": dict(tasks="split_mnist1d", n_tasks=5, schedule="cyclic",
                                         phase_length=30, n_cycles=4,
                                         learner_defaults=dict(backbone="pretrained")),
    "MNIST1DDomainsPretrained": dict(tasks="mnist1d_domains", n_tasks=5, schedule="revisit",
                                     phase_length=30, n_cycles=4, updates_per_step=2,
                                     learner_defaults=dict(backbone="pretrained")),
    # ---- The hard track (issue 18): memory binds and the similarity rule leaves headroom ----
    # `nsr-gym study hard-track` measures each against the clairvoyant (results/hard_track).
    # The LRU trap: a strict cycle of 5 tasks through 3 slots. The env's default eviction (LRU)
    # evicts each task just before it returns, so it hits nothing; retention="agent" hands the
    # agent the write-or-drop decision (pinning K tasks hits K per cycle: Theorem 3).
    "LRUTrapSplitDigits": dict(tasks="split_digits", n_tasks=5, schedule="cyclic",
                               phase_length=30, n_cycles=4, capacity=3, retention="agent"),
    # Skewed recurrence: 20 pixel-permutation tasks through 3 slots, revisits drawn by a Zipf
    # law over stack distance (s = 1); which of them to keep is the agent's decision.
    "SkewedRecurrencePermutedDigits": dict(tasks="permuted_digits", n_tasks=20,
                                           schedule="zipf:1", phase_length=10, n_cycles=3,
                                           updates_per_step=5, capacity=3, retention="agent"),
    # Ambiguous recall: alike tasks (the ten digits under five transforms) and noisy probes,
    # a slot for every task: the best cosine is often another task's entry. Per backend: the
    # torch learner's probe batch is 4 examples (64 elsewhere); the analytic model's task keys
    # share 0.9 of their direction, with probe noise 0.15 (0.05 elsewhere).
    "AmbiguousRecallFiveDomains": dict(
        tasks="five_domains", n_tasks=5, schedule="recurring", phase_length=10, n_cycles=6,
        updates_per_step=2,
        backend_learner_defaults=dict(torch=dict(probe_size=4),
                                      analytic=dict(task_similarity=0.9, probe_noise=0.15))),
}
#: The hard track's benchmarks (names in :data:`BENCHMARKS`); the rest are the standard track.
HARD_TRACK = ("LRUTrapSplitDigits", "SkewedRecurrencePermutedDigits",
              "AmbiguousRecallFiveDomains")


def with_learner_defaults(learner_defaults: dict[str, Any], learner: dict[str, Any] | None = None,
                          **kwargs: Any) -> AllocationEnv:
    """An :class:`AllocationEnv` whose ``learner`` options start from ``learner_defaults``.

    The entry point of variants that differ in the learner (such as a backbone): ``gym.make``
    replaces a registered keyword wholesale, so a user's ``learner={"lr": 1e-2}`` would
    otherwise drop the variant's own options; here the user's are merged on top.
    """
    return AllocationEnv(learner={**learner_defaults, **(learner or {})}, **kwargs)


def with_backend_learner_defaults(backend_learner_defaults: dict[str, dict[str, Any]],
                                  backend: str = "torch",
                                  learner: dict[str, Any] | None = None,
                                  **kwargs: Any) -> AllocationEnv:
    """An :class:`AllocationEnv` whose ``learner`` options start from those of its backend.

    The entry point of variants whose learner options differ by backend (a torch-only option
    such as ``probe_size`` is refused by the analytic model, and the other way round):
    ``backend_learner_defaults[backend]`` is merged under the user's ``learner`` options, as
    :func:`with_learner_defaults` does for one set.
    """
    defaults = backend_learner_defaults.get(backend, {})
    return AllocationEnv(backend=backend, learner={**defaults, **(learner or {})}, **kwargs)


def _entry_point(kwargs: dict[str, Any]) -> str:
    if "backend_learner_defaults" in kwargs:
        return BACKEND_ENTRY_POINT
    return MERGED_ENTRY_POINT if "learner_defaults" in kwargs else ENTRY_POINT


def env_id(benchmark: str) -> str:
    """The registered id of a benchmark name, e.g. ``nsr_gym/CyclicSplitDigits-v0``."""
    return f"nsr_gym/{benchmark}-v0"


def register_envs() -> None:
    """Register every benchmark, offline (:data:`BENCHMARKS`) and paper-scale
    (:data:`PAPER_BENCHMARKS`, which need ``data_root=...``); idempotent, so re-imports and
    spawned workers are safe."""
    for table, paper in ((BENCHMARKS, False), (PAPER_BENCHMARKS, True)):
        for name, kwargs in table.items():
            if env_id(name) in registry:
                continue
            entry_point = PAPER_ENTRY_POINT if paper else _entry_point(kwargs)
            register(id=env_id(name), entry_point=entry_point, kwargs=dict(kwargs),
                     disable_env_checker=False)


__all__ = ["DROP", "AllocationEnv", "BENCHMARKS", "FRESH", "HARD_TRACK", "KEEP", "LOAD_OFFSET",
           "PAPER_BENCHMARKS", "RESERVE_MODES", "RETENTION_MODES", "WRITE_OFFSET",
           "RetentionInfo", "StepInfo", "env_id", "make_paper_env", "register_envs",
           "with_backend_learner_defaults", "with_learner_defaults"]
