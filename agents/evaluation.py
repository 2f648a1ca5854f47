"""The project's one rollout loop, and the evaluation of many ``(policy, seed)`` units with it.

:func:`rollout` runs one episode of any policy with SB3's ``predict`` (rules, the oracle,
trained controllers) and returns its per-step log (:data:`STEP_COLUMNS`); studies that need
more than the log (the bank's state, what recall saw) pass a ``before_step`` hook instead of
writing their own loop. :func:`evaluate` runs every unit of a comparison, with resume hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

#: Per-step columns of the log, in order; ``metrics`` reads these.
STEP_COLUMNS = [
    "agent", "seed", "t", "phase", "step_in_phase", "task_id", "visit", "is_revisit", "action",
    "switched", "invalid_load", "accuracy", "zero_shot_accuracy", "reward", "loss",
    "skipped_updates", "bank_entries", "bank_bytes", "truncation_gap", "evicted_task",
    "reserve_skipped", "protected_tasks",
]


#: ``before_step(obs, info, action)``: see :func:`rollout`.
StepHook = Callable[[dict[str, np.ndarray], dict[str, Any], "int | np.ndarray"], None]


def rollout(
    env: gym.Env,
    policy: Any,
    seed: int,
    agent_name: str | None = None,
    before_step: StepHook | None = None,
) -> pd.DataFrame:
    """Run one episode and return its per-step log.

    Args:
        env: An nsr-gym env (wrapped or not).
        policy: Anything with SB3's ``predict(obs, state, episode_start, deterministic)``;
            optional ``reset(seed)`` and ``observe(info)`` hooks are called when present, and
            ``bind(env)`` right after each ``env.reset`` (agents that plan on the env, such as
            the clairvoyant).
        seed: Seeds the env's ``reset`` and the policy's own randomness.
        agent_name: Name for the ``agent`` column (default ``policy.name``).
        before_step: Called as ``before_step(obs, info, action)`` just before each
            ``env.step``: the observation the policy saw, the ``info`` of the ``reset`` or the
            previous step (``next_task_id``, ``next_is_phase_start``, ... of the step about to
            run) and the action chosen (an ``int``; for a ``MultiDiscrete`` action space the
            int64 array of shape ``(2,)``, allocation then retention; a policy that returns only
            an allocation there, such as the memoryless rules, gets retention ``0``: it writes
            nothing into the bank). The env is not stepped
            yet, so its bank still holds what the policy saw. For studies that log more than the
            step log; it changes nothing in the returned log.

    Returns:
        One row per step with ``STEP_COLUMNS``; ``action`` is the allocation (``a[0]`` of a
        ``MultiDiscrete`` action).
    """
    name = agent_name or getattr(policy, "name", type(policy).__name__)
    if hasattr(policy, "reset"):
        policy.reset(seed)
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "bind"):  # reference agents that plan on the env (the clairvoyant)
        policy.bind(env)
    multi = isinstance(env.action_space, gym.spaces.MultiDiscrete)
    observe = getattr(policy, "observe", None)
    if observe is not None:
        observe(info)
    rows: list[dict[str, Any]] = []
    state, episode_start = None, np.ones(1, dtype=bool)
    terminated = truncated = False
    while not (terminated or truncated):
        action, state = policy.predict(
            obs, state=state, episode_start=episode_start, deterministic=True
        )
        episode_start = np.zeros(1, dtype=bool)
        if multi:  # (allocation, retention): the whole vector goes to the env
            action = np.asarray(action, dtype=np.int64).reshape(-1)
            if action.size == 1:  # a policy that only allocates keeps nothing: retention 0
                action = np.array([action[0], 0], dtype=np.int64)
        else:
            action = int(np.asarray(action).reshape(-1)[0])
        if before_step is not None:
            before_step(obs, info, action)
        obs, reward, terminated, truncated, info = env.step(action)
        if observe is not None:
            observe(info)
        logged = int(action[0]) if multi else action
        row = {"agent": name, "seed": seed, "action": logged, "reward": float(reward)}
        row.update({k: info[k] for k in STEP_COLUMNS if k in info and k not in row})
        row["t"] = len(rows)
        rows.append(row)
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def evaluate(
    make_env: Callable[[], gym.Env],
    policies: dict[str, Callable[[], Any]],
    seeds: Iterable[int],
    progress: bool = True,
    on_unit_done: Callable[[str, int, pd.DataFrame], None] | None = None,
    skip: Callable[[str, int], pd.DataFrame | None] | None = None,
) -> pd.DataFrame:
    """Roll out every ``(policy, seed)`` unit and concatenate the step logs.

    Args:
        make_env: Builds the env (one, reused: ``reset(seed)`` restarts everything).
        policies: Name -> factory of the policy.
        seeds: Seeds; the same seeds for every policy give paired comparisons (same stream,
            same data order: the env draws data order independently of the actions taken).
        progress: Show a tqdm bar over units.
        on_unit_done: Called with ``(agent, seed, log)`` after each unit (checkpointing).
        skip: Returns a stored log for a unit already done (resume), or ``None`` to run it.

    Returns:
        The units' step logs (:data:`STEP_COLUMNS`) concatenated, policy by policy, seed by seed.
    """
    from tqdm.auto import tqdm

    seeds = list(seeds)
    units = [(name, seed) for name in policies for seed in seeds]
    logs: list[pd.DataFrame] = []
    bar = tqdm(total=len(units), disable=not progress, desc="rollouts", unit="run")
    env: gym.Env | None = None
    try:
        for name, seed in units:
            bar.set_postfix_str(f"{name} seed={seed}")
            log = skip(name, seed) if skip is not None else None
            if log is None:
                env = env or make_env()
                log = rollout(env, policies[name](), seed, agent_name=name)
                if on_unit_done is not None:
                    on_unit_done(name, seed, log)
            logs.append(log)
            bar.update(1)
    finally:
        bar.close()
        if env is not None:
            env.close()
    return pd.concat(logs, ignore_index=True)
