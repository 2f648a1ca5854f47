"""Env classes and their Gymnasium registrations (made on ``import nsr_gym``)."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from nsr_gym.envs.allocation import FRESH, KEEP, LOAD_OFFSET, AllocationEnv

ENTRY_POINT = "nsr_gym.envs.allocation:AllocationEnv"

#: Registered benchmarks: id suffix -> kwargs of ``AllocationEnv``. Variants that differ only by
#: numbers are registrations, not classes.
BENCHMARKS: dict[str, dict] = {
    # ---- Split-Digits: five binary tasks from scikit-learn's bundled digits ----------------
    "CyclicSplitDigits": dict(tasks="split_digits", n_tasks=5, schedule="cyclic",
                              phase_length=30, n_cycles=4),
    "RecurringSplitDigits": dict(tasks="split_digits", n_tasks=5, schedule="recurring",
                                 phase_length=30, n_cycles=4),
    # ---- Heterogeneous and domain-incremental offline benchmarks (issue 5) -----------------
    # ---- Backbones where activation caching matters (issue 6) ------------------------------
    # ---- Long horizon: hundreds of tasks (issue 8) -----------------------------------------
}


def env_id(benchmark: str) -> str:
    """The registered id of a benchmark name, e.g. ``nsr_gym/CyclicSplitDigits-v0``."""
    return f"nsr_gym/{benchmark}-v0"


def register_envs() -> None:
    """Register every benchmark; idempotent, so re-imports and spawned workers are safe."""
    for name, kwargs in BENCHMARKS.items():
        if env_id(name) in registry:
            continue
        register(id=env_id(name), entry_point=ENTRY_POINT, kwargs=dict(kwargs),
                 disable_env_checker=False)


__all__ = ["AllocationEnv", "BENCHMARKS", "FRESH", "KEEP", "LOAD_OFFSET", "env_id", "register_envs"]
