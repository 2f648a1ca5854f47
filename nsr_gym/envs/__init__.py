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
}


def with_learner_defaults(learner_defaults: dict[str, Any], learner: dict[str, Any] | None = None,
                          **kwargs: Any) -> AllocationEnv:
    """An :class:`AllocationEnv` whose ``learner`` options start from ``learner_defaults``.

    The entry point of variants that differ in the learner (such as a backbone): ``gym.make``
    replaces a registered keyword wholesale, so a user's ``learner={"lr": 1e-2}`` would
    otherwise drop the variant's own options; here the user's are merged on top.
    """
    return AllocationEnv(learner={**learner_defaults, **(learner or {})}, **kwargs)


def _entry_point(kwargs: dict[str, Any]) -> str:
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


__all__ = ["DROP", "AllocationEnv", "BENCHMARKS", "FRESH", "KEEP", "LOAD_OFFSET",
           "PAPER_BENCHMARKS", "RESERVE_MODES", "RETENTION_MODES", "WRITE_OFFSET",
           "RetentionInfo", "StepInfo", "env_id", "make_paper_env", "register_envs",
           "with_learner_defaults"]
