"""The analytic backend through the Gymnasium API equals THEORY.md's closed forms.

Noise off (``eval_samples = 0``, ``transfer = 0``, complete forgetting), the env's per-cycle
regrets of the rule agents against the comparator B (``Oracle(first_visit="keep")``) equal
``theory.regret_per_cycle`` to 1e-9. The one place the env and THEORY.md differ is pinned here:

* **always-fresh pays ``lam`` once more in cycle 1.** The env's observation at ``reset`` has
  ``task_shift = 1`` (the first task is a shift from nothing), so ``AlwaysFresh`` FRESHes at the
  very first step, where the adapter is already fresh; THEORY.md's ``lam (M - 1)`` counts FRESH
  at phases ``1..M-1`` only. Cycles ``2..C``, and so every regret slope, are unaffected.

Capacity ``K < M`` hits per cycle match ``theory.capacity`` for the env's evictions, and the
recovery times of ``nsr_gym.metrics`` match ``theory.recovery_time_fresh``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import metrics
from nsr_gym.agents import AlwaysFresh, FixedSlot, KeepCurrent, Oracle, SimilarityRule, rollout
from nsr_gym.theory import (
    CyclicSetting,
    ExpCurve,
    hits_per_cycle,
    recovery_time_fresh,
    regret_per_cycle,
    simulate_hits,
)

ENV_ID = "nsr_gym/CyclicSplitDigits-v0"

# (M, L, C, tau, lam, kappa)
GRID = [
    (2, 12, 4, 3.0, 0.05, 1.0),
    (3, 8, 5, 2.0, 0.3, 0.6),
    (5, 10, 3, 6.0, 0.0, 0.85),
    (4, 5, 4, 1.5, 0.15, 0.4),
]
IDS = [f"M{g[0]}-L{g[1]}-C{g[2]}-tau{g[3]}-lam{g[4]}-k{g[5]}" for g in GRID]
A_STAR, D = 0.93, 0.55


def make_env(M: int, L: int, C: int, tau: float, lam: float, kappa: float, **kw) -> gym.Env:
    learner = dict(a_star=A_STAR, D=D, tau=tau, kappa=kappa, gamma=0.0, transfer=0.0,
                   eval_samples=0, probe_noise=0.01)
    learner.update(kw.pop("learner", {}))
    # split_digits has 1, 2 or 5 tasks; the analytic backend only uses the family to validate M.
    tasks = "split_digits" if M in (2, 5) else "permuted_digits"
    return gym.make(ENV_ID, backend="analytic", tasks=tasks, n_tasks=M, phase_length=L,
                    n_cycles=C, lambda_switch=lam, learner=learner, **kw)


def setting(M: int, L: int, C: int, tau: float, lam: float, kappa: float) -> CyclicSetting:
    return CyclicSetting(M, L, C, ExpCurve(A_STAR, D, tau), lam, kappa)


def per_cycle(log, C: int) -> np.ndarray:
    return log["reward"].to_numpy().reshape(C, -1).sum(axis=1)


@pytest.mark.parametrize("g", GRID, ids=IDS)
def test_env_regrets_equal_closed_forms(g):
    M, L, C, tau, lam, kappa = g
    env, s = make_env(*g), setting(*g)
    bank = per_cycle(rollout(env, Oracle(first_visit="keep"), seed=1), C)
    # B itself: THEORY.md's M C L a* - M sum_c Phi(H_c) - lam M (C - 1).
    expected_b = M * C * L * A_STAR - M * float(np.sum(s.phi(np.array(
        [sum(kappa**j * L for j in range(1, c)) for c in range(1, C + 1)])))) - lam * M * (C - 1)
    assert bank.sum() == pytest.approx(expected_b, abs=1e-9)
    for policy, name in ((AlwaysFresh(), "always_fresh"), (KeepCurrent(), "keep_current"),
                         (FixedSlot(0), "fixed_slot"), (Oracle(first_visit="keep"), "bank")):
        got = bank - per_cycle(rollout(env, policy, seed=1), C)
        want = regret_per_cycle(s, name)
        if name == "always_fresh":
            want = want.copy()
            want[0] += lam  # the env's FRESH at the very first step (module docstring)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=name)
    env.close()


@pytest.mark.parametrize("g", GRID[:2], ids=IDS[:2])
def test_similarity_rule_equals_bank_after_first_cycle(g):
    M, L, C, tau, lam, kappa = g
    env = make_env(*g)
    bank = per_cycle(rollout(env, Oracle(first_visit="keep"), seed=3), C)
    sim = per_cycle(rollout(env, SimilarityRule(), seed=3), C)
    # Cycle 1: a FRESH (or a load of an unrelated entry, worth the same) at every phase start.
    np.testing.assert_allclose(bank - sim, [lam * M] + [0.0] * (C - 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("eviction", ["lru", "fifo", "lfu", "reject"])
@pytest.mark.parametrize("M,K", [(5, 3), (4, 2), (3, 1)])
def test_capacity_hits_per_cycle_match_table(eviction, M, K):
    C = 5
    env = make_env(M, 3, C, 2.0, 0.05, 1.0, capacity=K, eviction=eviction, privileged_info=True)
    policy = Oracle(first_visit="keep")
    obs, info = env.reset(seed=0)
    policy.observe(info)
    hits = np.zeros(C, dtype=int)
    t, done = 0, False
    while not done:
        if info["next_is_phase_start"] and info["next_task_slot"] >= 0:
            hits[t // (M * 3)] += 1
        obs, _, done, _, info = env.step(int(policy.predict(obs)[0]))
        policy.observe(info)
        t += 1
    cache = "pin" if eviction == "reject" else eviction
    assert hits[0] == 0
    np.testing.assert_array_equal(hits, simulate_hits(cache, M, K, C))
    assert np.all(hits[1:] == hits_per_cycle(cache, M, K))
    env.close()


@pytest.mark.parametrize("eps", [0.01, 0.02, 0.05])
@pytest.mark.parametrize("window", [1, 5])
def test_recovery_times_match_formula(eps, window):
    # THEORY.md's example: D = 0.75, tau = 6, L = 40 -> 25, 21, 16 for eps = 0.01, 0.02, 0.05.
    M, L, C, tau, Dx = 3, 40, 3, 6.0, 0.75
    env = make_env(M, L, C, tau, 0.05, 1.0, learner=dict(D=Dx))
    want = recovery_time_fresh(Dx, tau, L, eps, w=window)
    if window == 1:
        assert want == {0.01: 25, 0.02: 21, 0.05: 16}[eps]
    for policy, expected in ((AlwaysFresh(), want), (KeepCurrent(), want),
                             (Oracle(first_visit="keep"), 0)):
        phases = metrics.phase_table(rollout(env, policy, seed=0), eps=eps, window=window)
        rev = phases[phases["visit"] > 1]
        assert len(rev) == M * (C - 1)
        assert (rev["recovery"] == expected).all(), (policy.name, rev["recovery"].tolist())
        assert (rev["censored"] == 0).all()
    env.close()
