"""``belady-retain``: Belady's MIN with bypass as a retention decision (a privileged reference).

On the LRU trap (a strict cycle, ``K < M``) its hits are the ones Theorem 3 and
``belady_bypass_hits`` name (it is pinning there), its return is the closed form's, never below
pinning's and never above the clairvoyant's; on a random recurrence it hits exactly where
``belady_bypass_hits`` says, at least as often as every other retention rule.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym
from nsr_gym.agents import make_agent, rollout
from nsr_gym.agents.retention import BeladyRetention
from nsr_gym.theory import CyclicSetting, ExpCurve
from nsr_gym.theory.capacity import (
    belady_bypass_hits,
    capacity_hit_pattern,
    capacity_return,
    hits_per_cycle,
)

LRU_TRAP = nsr_gym.env_id("LRUTrapSplitDigits")
RECURRING = nsr_gym.env_id("RecurringSplitDigits")


def phase_hits(log: pd.DataFrame) -> np.ndarray:
    """``(n_phases,)`` bool: phases that start from their task's own experience (a hit).

    On the analytic backend with complete forgetting and no transfer (the defaults) a phase's
    zero-shot accuracy exceeds a fresh start's (phase 0's) only when it starts from an entry of
    its own task, or keeps its own subspace on an immediate repeat, which
    ``belady_bypass_hits`` also counts as a hit."""
    first = log[log["step_in_phase"] == 0].sort_values("phase")
    fresh = float(first["zero_shot_accuracy"].iloc[0])
    return (first["zero_shot_accuracy"] > fresh + 1e-9).to_numpy()


def test_lru_trap_hits_and_return_match_theorem_3():
    env = gym.make(LRU_TRAP, backend="analytic")
    u = env.unwrapped
    M, K, C, L = u.n_tasks, u.capacity, u.n_cycles, u.phase_length
    cfg = u.learner.config
    setting = CyclicSetting(M, L, C, ExpCurve(float(cfg.a_star), float(cfg.D), float(cfg.tau)),
                            u.lambda_switch, cfg.kappa, cfg.gamma)
    for seed in range(3):
        log = rollout(env, make_agent("belady-retain"), seed)
        hits = phase_hits(log)
        schedule = u.task_schedule()
        np.testing.assert_array_equal(hits, belady_bypass_hits(schedule, K))
        np.testing.assert_array_equal(hits.reshape(C, M), capacity_hit_pattern("pin", M, K, C))
        assert hits.reshape(C, M).sum(axis=1).tolist() == [0] + [hits_per_cycle("pin", M, K)] * 3
        got = float(log["reward"].sum())
        # The similarity allocation FRESHes at every miss, the first phase too (lam more than
        # the closed form's convention, which starts from h = 0 without a switch).
        assert got == pytest.approx(capacity_return(setting, K, "pin", "fresh")
                                    - u.lambda_switch, abs=1e-9)
        pin = float(rollout(env, make_agent("pin"), seed)["reward"].sum())
        lru = float(rollout(env, make_agent("lru-retain"), seed)["reward"].sum())
        clairvoyant = float(rollout(env, make_agent("clairvoyant"), seed)["reward"].sum())
        assert pin - 1e-9 <= got <= clairvoyant + 1e-9
        assert got > lru + 1.0  # LRU falls into the trap; Belady does not
    env.close()


def test_recurring_hits_are_belady_bypass_and_the_most_of_any_rule():
    env = gym.make(RECURRING, backend="analytic", capacity=2, retention="agent",
                   phase_length=4, n_cycles=6)
    u = env.unwrapped
    above_pin = 0
    for seed in range(4):
        hits = phase_hits(rollout(env, make_agent("belady-retain"), seed))
        bound = belady_bypass_hits(u.task_schedule(), u.capacity)
        np.testing.assert_array_equal(hits, bound)
        others = {rule: int(phase_hits(rollout(env, make_agent(rule), seed)).sum())
                  for rule in ("pin", "lfu-retain", "lru-retain")}
        assert max(others.values()) <= bound.sum(), others
        above_pin += others["pin"] < bound.sum()
    assert above_pin > 0  # off a strict cycle, evicting by next use is not pinning
    env.close()


def test_belady_is_a_privileged_reference_and_says_what_it_needs():
    agent = make_agent("belady-retain")
    assert isinstance(agent, BeladyRetention) and agent.memory_class == "clairvoyant"
    from nsr_gym.studies.benchmark import retention_need

    assert retention_need(agent) == "agent"
    env = gym.make(LRU_TRAP, backend="analytic", phase_length=2, n_cycles=2)
    obs, _ = env.reset(seed=0)
    agent.reset(0)
    for _ in range(2):  # phase 0: nothing pending, so nothing to decide yet
        obs, *_ = env.step(agent.predict(obs)[0])
    with pytest.raises(RuntimeError, match="bind"):  # a decision needs the schedule
        agent.predict(obs)
    plain = gym.make(LRU_TRAP, backend="analytic", retention="env")
    obs, _ = plain.reset(seed=0)
    with pytest.raises(ValueError, match="retention='agent'"):
        agent.predict(obs)
    env.close()
    plain.close()
