"""``simulate_analytic`` (many analytic episodes at once) equals the env, run by run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.agents import (
    AlwaysFresh,
    FixedSlot,
    KeepCurrent,
    Oracle,
    RandomSlot,
    RoundRobin,
    SimilarityRule,
    rollout,
)
from nsr_gym.studies.analytic_sweep import simulate_analytic

POLICIES = {"keep-current": KeepCurrent, "always-fresh": AlwaysFresh, "fixed-slot": FixedSlot,
            "random-slot": RandomSlot, "round-robin": RoundRobin, "similarity": SimilarityRule,
            "oracle": Oracle, "oracle-keep": lambda: Oracle(first_visit="keep")}
SEEDS = [0, 3]


def _env_runs(policy: str, env_kw: dict, learner: dict) -> np.ndarray:
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", learner=learner, **env_kw)
    logs = [rollout(env, POLICIES[policy](), seed) for seed in SEEDS]
    env.close()
    return np.stack([log["reward"].to_numpy() for log in logs])


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("env_kw, learner", [
    (dict(schedule="cyclic", phase_length=6, n_cycles=3), dict(probe_noise=0.05)),
    (dict(schedule="recurring", phase_length=4, n_cycles=3, capacity=3, eviction="lru"),
     dict(gamma=0.5, kappa=0.8, transfer=0.1, tau=(3.0, 4.0, 5.0, 6.0, 7.0))),
    (dict(schedule="recurring", phase_length=3, n_cycles=3, capacity=2, eviction="lfu",
          lambda_switch=0.2), dict(task_similarity=0.6, probe_noise=0.2)),
])
def test_batched_simulation_equals_the_env(policy, env_kw, learner):
    batch = simulate_analytic(policy, SEEDS, **env_kw, **learner)
    np.testing.assert_allclose(batch.reward, _env_runs(policy, env_kw, learner), rtol=0, atol=1e-12)


def test_per_run_settings_and_errors():
    tau = np.array([[2.0] * 5, [20.0] * 5])
    batch = simulate_analytic("oracle", [0, 0], tau=tau, phase_length=5, n_cycles=2)
    assert batch.reward.shape == (2, 50) and batch.returns[0] > batch.returns[1]  # faster learner
    with pytest.raises(ValueError, match="policy"):
        simulate_analytic("ppo", [0])
    with pytest.raises(ValueError, match="eviction"):
        simulate_analytic("oracle", [0], eviction="least_unique")
