"""Env classes and their Gymnasium registrations (made on ``import nsr_gym``).

Every offline benchmark of :data:`BENCHMARKS` is registered twice:

* ``nsr_gym/<Benchmark>-v0`` on the torch backend (the real learner; pass ``backend="analytic"``
  for the closed-form one), and
* ``nsr_gym/<Benchmark>Analytic-v0``, the same benchmark with ``backend="analytic"`` registered,
  for clients that take only an id (TorchRL's ``GymEnv(id, backend=...)`` names the gym library
  with its own ``backend``; rl-zoo3's ``--env``; Tianshou's env factories). The variants that
  differ only in the torch learner's backbone (``learner_defaults``: the ViT and the pretrained
  CNN) have no analytic twin: the analytic model has no backbone.

How each id is made:

* ``gym.make(id, **kwargs)``: :func:`make_env`, an :class:`AllocationEnv` in
  :class:`~nsr_gym.wrappers.EpisodeLength`, so ``env.spec.max_episode_steps`` is the episode's
  length for the kwargs given (``n_phases * phase_length``, 600 for the defaults), and no
  registered ``TimeLimit`` cuts a longer one (``gym.make(id, n_cycles=8)`` runs 1,200 steps).
* ``gym.make_vec(id, num_envs=N)``: the registered ``vector_entry_point``
  (:data:`VECTOR_ENTRY_POINT`, the batched env: ``N`` learners stepped in one pass; Gymnasium's
  default mode when one is registered; ``shards=k`` divides it over ``k`` processes,
  :class:`~nsr_gym.envs.sharded.ShardedBatchedEnv`). ``vectorization_mode="sync"`` /
  ``"async"`` build ``N`` single envs instead; ``async`` workers are safe under every start
  method (``fork`` included, see :mod:`nsr_gym.threads`).
* ``action_masks()`` (sb3-contrib's convention) is the env's own method. Gymnasium 1.x wrappers do
  not forward attributes, so through ``gym.make``'s wrappers, ``FlattenObservation`` or
  ``Monitor`` it is reached the standard way: ``env.get_wrapper_attr("action_masks")()``, which is
  what sb3-contrib's ``get_action_masks``, SB3's ``DummyVecEnv`` / ``SubprocVecEnv``
  ``env_method("action_masks")`` and Gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv``
  ``call("action_masks")`` do. The same mask is ``info["action_mask"]`` at every reset and step,
  for clients that read masks from the info (TorchRL's ``ActionMask``, Tianshou).
* Paper-scale benchmarks (:data:`PAPER_BENCHMARKS`, torch only, local data) are registered once,
  with neither an analytic twin nor a vector entry point.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import register, registry

from nsr_gym.envs.allocation import (
    DROP,
    FRESH,
    KEEP,
    LOAD_OFFSET,
    RESERVE_MODES,
    RETENTION_MODES,
    TASK_FREE_HIDDEN,
    WRITE_OFFSET,
    AllocationEnv,
    RetentionInfo,
    StepInfo,
)
from nsr_gym.envs.paper import PAPER_BENCHMARKS, make_paper_env
from nsr_gym.wrappers import EpisodeLength

ENTRY_POINT = "nsr_gym.envs:make_env"
VECTOR_ENTRY_POINT = "nsr_gym.envs.batched:make_batched_env"
PAPER_ENTRY_POINT = "nsr_gym.envs.paper:make_paper_env"
#: Suffix of a benchmark's analytic-backend id: ``nsr_gym/CyclicSplitDigitsAnalytic-v0``.
ANALYTIC_SUFFIX = "Analytic"

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
    # gym.make(..., learner={...}) adds to these learner options (see make_env).
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
    # Task-free: no boundary signal. Phase lengths are drawn (10 to ~150 steps, 600 in all), the
    # observation's embedding is a fresh probe batch at every step, and the action's second part
    # writes the active subspace into a slot: the agent detects shifts and reserves by itself.
    # Ten-way permuted tasks, so that keeping one subspace for all of them costs (fine-tuning
    # forgets), and small probe batches, so that a shift is hard to tell from noise: 6 examples
    # on torch (64 elsewhere; with 8, the hard-track study at git 2a4329d, whose files were
    # replaced, scored the similarity rule 0.730 [0.364, 1.075] against the clairvoyant on
    # seeds 100..109, above the track's bar of 0.7), probe noise 0.2 on the analytic model
    # (0.05 elsewhere).
    "TaskFreePermutedDigits": dict(
        tasks="permuted_digits", n_tasks=5, schedule="recurring", phase_length=30, n_cycles=4,
        updates_per_step=2, retention="agent", task_free=True,
        backend_learner_defaults=dict(torch=dict(probe_size=6), analytic=dict(probe_noise=0.2))),
}
#: The hard track's benchmarks (names in :data:`BENCHMARKS`); the rest are the standard track.
HARD_TRACK = ("LRUTrapSplitDigits", "SkewedRecurrencePermutedDigits",
              "AmbiguousRecallFiveDomains", "TaskFreePermutedDigits")


def variant_learner_options(learner_defaults: dict[str, Any] | None,
                            backend_learner_defaults: dict[str, dict[str, Any]] | None,
                            backend: str, learner: dict[str, Any] | Any) -> dict[str, Any] | Any:
    """A variant's learner options (``learner_defaults``, then those of ``backend`` in
    ``backend_learner_defaults``) with the user's ``learner`` options on top; a ready learner
    object is returned as it is. The one merge rule of :func:`make_env` and the batched env."""
    if learner is not None and not isinstance(learner, dict):
        return learner
    defaults = {**(learner_defaults or {}), **(backend_learner_defaults or {}).get(backend, {})}
    return {**defaults, **(learner or {})}


def make_env(learner_defaults: dict[str, Any] | None = None,
             backend_learner_defaults: dict[str, dict[str, Any]] | None = None,
             backend: str = "torch", learner: dict[str, Any] | Any = None,
             **kwargs: Any) -> gym.Env:
    """The entry point of every offline id: an :class:`AllocationEnv` in
    :class:`~nsr_gym.wrappers.EpisodeLength`.

    ``gym.make`` replaces a registered keyword wholesale, so a variant's learner options
    (``learner_defaults``, such as a backbone; ``backend_learner_defaults[backend]``, options
    that only one backend takes) are merged *under* the user's ``learner={...}`` here, instead of
    being dropped by it. A ready :class:`~nsr_gym.learners.base.Learner` passed as ``learner``
    is used as it is.

    Args:
        learner_defaults: Learner options of the variant, for either backend.
        backend_learner_defaults: Backend name -> learner options of the variant on it.
        backend: ``"torch"`` or ``"analytic"``.
        learner: The user's learner options (or a ready learner).
        **kwargs: Further :class:`AllocationEnv` arguments.
    """
    learner = variant_learner_options(learner_defaults, backend_learner_defaults, backend,
                                      learner)
    return EpisodeLength(AllocationEnv(backend=backend, learner=learner, **kwargs))


def env_id(benchmark: str) -> str:
    """The registered id of a benchmark name, e.g. ``nsr_gym/CyclicSplitDigits-v0``."""
    return f"nsr_gym/{benchmark}-v0"


def has_analytic_twin(benchmark: str) -> bool:
    """Whether ``benchmark`` has an ``...Analytic-v0`` id: every offline benchmark except the
    variants that differ only in the torch learner's backbone (``learner_defaults``)."""
    return benchmark in BENCHMARKS and "learner_defaults" not in BENCHMARKS[benchmark]


def analytic_env_id(benchmark: str) -> str:
    """The analytic-backend id of a benchmark, e.g. ``nsr_gym/CyclicSplitDigitsAnalytic-v0``."""
    if not has_analytic_twin(benchmark):
        raise ValueError(f"{benchmark!r} has no analytic-backend id; pass backend='analytic' to "
                         f"gym.make({env_id(benchmark)!r}) where it applies")
    return env_id(benchmark + ANALYTIC_SUFFIX)


def register_envs() -> None:
    """Register every benchmark: offline (:data:`BENCHMARKS`, with their analytic twins and the
    batched vector entry point) and paper-scale (:data:`PAPER_BENCHMARKS`, which need
    ``data_root=...``); idempotent, so re-imports and spawned workers are safe."""
    for name, kwargs in BENCHMARKS.items():
        ids = {env_id(name): dict(kwargs)}
        if has_analytic_twin(name):
            ids[analytic_env_id(name)] = {**kwargs, "backend": "analytic"}
        for eid, registered in ids.items():
            if eid not in registry:
                register(id=eid, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                         kwargs=registered, disable_env_checker=False)
    for name, kwargs in PAPER_BENCHMARKS.items():
        if env_id(name) not in registry:
            register(id=env_id(name), entry_point=PAPER_ENTRY_POINT, kwargs=dict(kwargs),
                     disable_env_checker=False)


__all__ = ["ANALYTIC_SUFFIX", "DROP", "AllocationEnv", "BENCHMARKS", "ENTRY_POINT", "FRESH",
           "HARD_TRACK", "KEEP", "LOAD_OFFSET", "PAPER_BENCHMARKS", "RESERVE_MODES",
           "RETENTION_MODES", "TASK_FREE_HIDDEN", "VECTOR_ENTRY_POINT", "WRITE_OFFSET",
           "RetentionInfo", "StepInfo",
           "analytic_env_id", "env_id", "has_analytic_twin", "make_env", "make_paper_env",
           "register_envs", "variant_learner_options"]
