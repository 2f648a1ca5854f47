"""Theorem 3 (theory.capacity): closed forms equal the step-level simulation and the analytic env.

Closed forms to 1e-9 against ``simulate_capacity`` (the env's semantics slot by slot) over several
``(M, K, L, C, tau, lambda, kappa)``, and against ``AllocationEnv`` itself for the evictions it has
(``lru``, ``fifo``, ``reject`` = pin). Belady with bypass against an exhaustive search over every
cache schedule on small request sequences.
"""

from __future__ import annotations

import functools
import itertools

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.agents import Oracle, rollout
from nsr_gym.theory import CyclicSetting, ExpCurve
from nsr_gym.theory.capacity import (
    MISS_ACTIONS,
    RETENTION_RULES,
    _cache_hits,
    bank_inf_return,
    belady_bypass_hits,
    capacity_hit_pattern,
    capacity_lower_bound,
    capacity_regret,
    capacity_regret_per_cycle,
    capacity_return,
    capacity_return_per_cycle,
    hits_per_cycle,
    simulate_capacity,
)
from nsr_gym.theory.theorem1 import delta_switch_min, lower_bound_m0

A_STAR, D = 0.93, 0.55
# (M, K, L, C, tau, lam, kappa)
GRID = [
    (3, 1, 4, 4, 2.0, 0.05, 1.0),
    (3, 2, 6, 5, 3.0, 0.1, 0.7),
    (4, 2, 5, 4, 1.5, 0.0, 0.4),
    (5, 3, 6, 4, 3.0, 0.1, 0.7),
    (5, 2, 3, 6, 6.0, 0.2, 1.0),
    (6, 4, 8, 3, 2.5, 0.15, 0.85),
    (4, 3, 2, 5, 1.0, 1.5, 0.9),  # lam > Delta: outside the theorem, the forms still hold
]
IDS = [f"M{g[0]}-K{g[1]}-L{g[2]}-C{g[3]}-tau{g[4]}-lam{g[5]}-k{g[6]}" for g in GRID]


def _setting(M, K, L, C, tau, lam, kappa) -> CyclicSetting:
    return CyclicSetting(M, L, C, ExpCurve(A_STAR, D, tau), lam, kappa)


@pytest.mark.parametrize("g", GRID, ids=IDS)
@pytest.mark.parametrize("rule", RETENTION_RULES)
@pytest.mark.parametrize("on_miss", MISS_ACTIONS)
def test_closed_forms_equal_the_step_simulation(g, rule, on_miss):
    s, K = _setting(*g), g[1]
    rewards = simulate_capacity(s, K, rule, on_miss).reshape(s.C, -1).sum(axis=1)
    np.testing.assert_allclose(capacity_return_per_cycle(s, K, rule, on_miss), rewards,
                               rtol=0, atol=1e-9)
    assert capacity_return(s, K, rule, on_miss) == pytest.approx(rewards.sum(), abs=1e-9)
    assert capacity_regret(s, K, rule, on_miss) == pytest.approx(
        bank_inf_return(s).sum() - rewards.sum(), abs=1e-9)


@pytest.mark.parametrize("g", GRID, ids=IDS)
def test_theorem3_bound_and_who_attains_it(g):
    s, (M, K) = _setting(*g), g[:2]
    bound = capacity_lower_bound(s, K)
    assert bound.simplified <= bound.exact + 1e-12
    x = [capacity_regret_per_cycle(s, K, r, o) for r in RETENTION_RULES for o in MISS_ACTIONS]
    assert all(r.sum() >= bound.exact - 1e-9 for r in x)
    if delta_switch_min(s) >= s.lam:
        # (iii) pinning with keep-on-miss attains the per-cycle bound exactly
        assert capacity_regret(s, K, "pin", "keep") == pytest.approx(bound.exact, abs=1e-9)
        assert bound.simplified == pytest.approx((s.C - 1) * (M - K) * (
            delta_switch_min(s) - s.lam), abs=1e-12)
    # (iv) LRU and FIFO hit nothing and pay the M0 rate: keep-current's regret against B
    for rule in ("lru", "fifo"):
        assert capacity_regret(s, K, rule, "keep") == pytest.approx(lower_bound_m0(s).exact,
                                                                    abs=1e-9)
    # fresh-on-miss pays lam more per miss, and lam (M - 1) in cycle 1
    extra = s.lam * ((M - 1) + (M - K) * (s.C - 1))
    assert capacity_regret(s, K, "pin", "fresh") == pytest.approx(
        capacity_regret(s, K, "pin", "keep") + extra, abs=1e-9)


@pytest.mark.parametrize(("M", "K", "C"), [(3, 1, 5), (5, 2, 9), (5, 3, 9), (7, 3, 13), (4, 4, 3),
                                           (4, 6, 3)])
def test_hit_patterns(M, K, C):
    for rule in RETENTION_RULES:
        pattern = capacity_hit_pattern(rule, M, K, C)
        cache = "reject" if rule == "pin" else rule
        np.testing.assert_array_equal(pattern.ravel(), _cache_hits(cache, M, K, C))
        assert not pattern[0].any() and np.all(pattern.sum(axis=1) <= min(K, M))  # Theorem 3 (i)
        if rule != "belady":
            assert np.all(pattern[1:].sum(axis=1) == hits_per_cycle(cache, M, K))
    # Belady with bypass is pinning on a strict cycle
    cyc = [p % M for p in range(M * C)]
    np.testing.assert_array_equal(belady_bypass_hits(cyc, K),
                                  capacity_hit_pattern("pin", M, K, C).ravel())


def _env(M, K, L, C, tau, lam, kappa, eviction) -> gym.Env:
    learner = dict(a_star=A_STAR, D=D, tau=tau, kappa=kappa, gamma=0.0, transfer=0.0,
                   eval_samples=0, probe_noise=0.01)
    tasks = "split_digits" if M in (2, 5) else "permuted_digits"
    return gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", tasks=tasks, n_tasks=M,
                    phase_length=L, n_cycles=C, lambda_switch=lam, learner=learner, capacity=K,
                    eviction=eviction)


@pytest.mark.parametrize("g", GRID[:6], ids=IDS[:6])
@pytest.mark.parametrize(("eviction", "rule"), [("lru", "lru"), ("fifo", "fifo"),
                                                ("reject", "pin")])
def test_closed_forms_equal_the_analytic_env(g, eviction, rule):
    s, K = _setting(*g), g[1]
    env = _env(*g, eviction=eviction)
    for on_miss in MISS_ACTIONS:
        log = rollout(env, Oracle(first_visit=on_miss), seed=0)
        got = log["reward"].to_numpy().reshape(s.C, -1).sum(axis=1)
        want = capacity_return_per_cycle(s, K, rule, on_miss)
        if on_miss == "fresh":
            want = want.copy()
            want[0] -= s.lam  # the env's Oracle also FRESHes at the very first step
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    env.close()


def _exhaustive_hits(seq: tuple[int, ...], K: int) -> int:
    """The most hits of any cache schedule (S_{t+1} any subset of S_t | {r_t}, size <= K)."""

    @functools.cache
    def best(t: int, cache: frozenset[int]) -> int:
        if t == len(seq):
            return 0
        cand = sorted(cache | {seq[t]})
        nxt = max(best(t + 1, frozenset(c)) for n in range(min(K, len(cand)) + 1)
                  for c in itertools.combinations(cand, n))
        return int(seq[t] in cache) + nxt

    return best(0, frozenset())


def test_belady_bypass_is_optimal_on_every_short_sequence():
    for n, items, K in ((6, 3, 1), (6, 3, 2), (7, 4, 2)):
        for seq in itertools.product(range(items), repeat=n):
            assert int(belady_bypass_hits(seq, K).sum()) == _exhaustive_hits(seq, K), (seq, K)


def test_belady_bypass_is_optimal_on_random_recurrence():
    rng = np.random.default_rng(0)
    for _ in range(60):
        items, K = int(rng.integers(3, 6)), int(rng.integers(1, 4))
        seq = tuple(int(x) for x in rng.integers(0, items, size=int(rng.integers(8, 13))))
        assert int(belady_bypass_hits(seq, K).sum()) == _exhaustive_hits(seq, K), (seq, K)


def test_rejects_what_the_theorem_does_not_cover():
    s = CyclicSetting(4, 3, 3, ExpCurve(A_STAR, D, 2.0), 0.1, 1.0, gamma=0.5)
    with pytest.raises(ValueError, match="gamma"):
        capacity_lower_bound(s, 2)
    with pytest.raises(ValueError, match="gamma"):
        capacity_return(s, 2, "pin")
    ok = CyclicSetting(4, 3, 3, ExpCurve(A_STAR, D, 2.0), 0.1)
    with pytest.raises(ValueError, match="retention rule"):
        capacity_regret(ok, 2, "mru")
    with pytest.raises(ValueError, match="on_miss"):
        capacity_regret(ok, 2, "pin", on_miss="load")
    with pytest.raises(ValueError, match="K >= 1"):
        belady_bypass_hits([0, 1], 0)
