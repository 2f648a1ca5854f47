"""theory.theorem1, theory.simulate, theory.capacity: closed forms equal the reference simulator."""

from __future__ import annotations

import numpy as np
import pytest

import nsr_gym.theory.theorem1 as t1
from nsr_gym.theory.capacity import hits_per_cycle, simulate_hits
from nsr_gym.theory.model import ExpCurve, bank_experience
from nsr_gym.theory.simulate import (
    KEEP,
    StepContext,
    load,
    simulated_regret_per_cycle,
    trace_cyclic,
)
from nsr_gym.theory.theorem1 import (
    CyclicSetting,
    bank_regret_bound_kappa1,
    bank_regret_slope,
    bank_regret_vs_prescient,
    delta_switch,
    delta_switch_asymptotic,
    delta_switch_min,
    lower_bound_m0,
    lower_bound_m1,
    regret_always_fresh,
    regret_fixed_slot,
    regret_keep_current,
    regret_per_cycle,
    regret_random_slot,
)

# (M, L, C, tau, lam, kappa, gamma)
GRID = [
    (3, 40, 5, 6.0, 0.1, 1.0, 0.0),
    (4, 10, 6, 3.0, 0.3, 0.7, 0.0),
    (2, 5, 4, 8.0, 0.0, 0.5, 0.0),
    (5, 7, 3, 2.5, 1.2, 0.9, 0.0),
    (3, 12, 4, 4.0, 0.05, 0.8, 0.3),
    (2, 6, 5, 5.0, 0.2, 1.0, 0.9),
]


def make(
    M: int, L: int, C: int, tau: float, lam: float, kappa: float, gamma: float
) -> CyclicSetting:
    return CyclicSetting(M, L, C, ExpCurve(0.95, 0.75, tau), lam, kappa, gamma)


SETTINGS = [make(*g) for g in GRID]
COMPLETE = [s for s in SETTINGS if s.gamma == 0.0]
IDS = [f"M{g[0]}-L{g[1]}-C{g[2]}-tau{g[3]}-lam{g[4]}-k{g[5]}-g{g[6]}" for g in GRID]
COMPLETE_IDS = [i for i, g in zip(IDS, GRID, strict=True) if g[6] == 0.0]


def theory_md_form(s: CyclicSetting, policy: str) -> float:
    """THEORY.md's tight-case formulas, written with S = sum_{c>=2} Delta_c."""
    S = sum(delta_switch(s, c) for c in range(2, s.C + 1))
    M, C, lam = s.M, s.C, s.lam
    return {
        "always_fresh": M * S + lam * (M - 1),
        "keep_current": M * S - lam * (C - 1) * M,
        "fixed_slot": (M - 1) * S + lam * (M - 1),
        "bank": 0.0,
    }[policy]


# --------------------------------------------------------------------------- exact closed forms


@pytest.mark.parametrize("policy", ["bank", "always_fresh", "keep_current", "fixed_slot"])
@pytest.mark.parametrize("setting", SETTINGS, ids=IDS)
def test_simulated_regret_equals_closed_form(setting: CyclicSetting, policy: str) -> None:
    sim = simulated_regret_per_cycle(setting, policy)
    np.testing.assert_allclose(sim, regret_per_cycle(setting, policy), rtol=0, atol=1e-9)


@pytest.mark.parametrize("policy", ["bank", "always_fresh", "keep_current", "fixed_slot"])
@pytest.mark.parametrize("setting", COMPLETE, ids=COMPLETE_IDS)
def test_theory_md_tight_formulas_are_exact_under_complete_forgetting(
    setting: CyclicSetting, policy: str
) -> None:
    total = float(np.sum(regret_per_cycle(setting, policy)))
    assert total == pytest.approx(theory_md_form(setting, policy), abs=1e-9)


def test_total_regret_helpers() -> None:
    s = SETTINGS[1]
    for fn, name in [
        (regret_always_fresh, "always_fresh"),
        (regret_keep_current, "keep_current"),
        (regret_fixed_slot, "fixed_slot"),
    ]:
        assert fn(s) == pytest.approx(simulated_regret_per_cycle(s, name).sum(), abs=1e-9)
    assert t1.regret_bank(s) == 0.0


def test_keep_current_with_forgetting_differs_from_theory_md_form() -> None:
    s = make(2, 6, 5, 5.0, 0.2, 1.0, 0.9)  # gamma^((M-1)L) = 0.53: keep-current remembers
    assert regret_keep_current(s) < theory_md_form(s, "keep_current") - 1e-3


def test_random_slot_expectation_matches_monte_carlo() -> None:
    s = make(3, 8, 5, 4.0, 0.1, 0.8, 0.0)
    draws = np.array(
        [simulated_regret_per_cycle(s, "random_slot", rng=i).sum() for i in range(300)]
    )
    se = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean() - regret_random_slot(s)) < 4 * se


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("setting", COMPLETE, ids=COMPLETE_IDS)
def test_lower_bounds_hold_for_memoryless_policies(setting: CyclicSetting) -> None:
    m1, m0 = lower_bound_m1(setting), lower_bound_m0(setting)
    assert m1.simplified <= m1.exact + 1e-12 and m0.simplified <= m0.exact + 1e-12
    for policy in ["fixed_slot", "random_slot", "always_fresh", "keep_current"]:
        assert np.sum(regret_per_cycle(setting, policy)) >= m1.exact - 1e-9
    for policy in ["always_fresh", "keep_current"]:  # M0 is a subclass of the bank-free rules
        assert np.sum(regret_per_cycle(setting, policy)) >= m0.exact - 1e-9


@pytest.mark.parametrize("setting", COMPLETE, ids=COMPLETE_IDS)
def test_tight_cases_sit_at_ratio_one(setting: CyclicSetting) -> None:
    ratio_m0 = regret_keep_current(setting) / lower_bound_m0(setting).exact
    assert ratio_m0 == pytest.approx(1.0, abs=1e-12)
    no_cost = CyclicSetting(setting.M, setting.L, setting.C, setting.curve, 0.0, setting.kappa)
    ratio_m1 = regret_fixed_slot(no_cost) / lower_bound_m1(no_cost).exact
    assert ratio_m1 == pytest.approx(1.0, abs=1e-12)
    # with lam > 0 fixed-slot sits lam (M - 1) C above the M1 bound
    gap = regret_fixed_slot(setting) - lower_bound_m1(setting).exact
    if delta_switch_min(setting) >= setting.lam:
        assert gap == pytest.approx(setting.lam * (setting.M - 1) * setting.C, abs=1e-9)


def test_history_aware_policies_fall_below_the_m1_bound() -> None:
    """Round-robin (a phase counter) and feedback search are not memoryless: pinned here."""
    s = make(3, 40, 5, 6.0, 0.05, 1.0, 0.0)
    bound = lower_bound_m1(s).exact
    assert bound > 1.0
    rr = simulated_regret_per_cycle(s, "round_robin")
    np.testing.assert_allclose(rr, 0.0, atol=1e-9)  # exactly B on a strict cycle
    fs = simulated_regret_per_cycle(s, "feedback_search").sum()
    assert 0.0 < fs < bound


def test_lam_above_delta_keep_current_beats_the_bank_and_bounds_stay_valid() -> None:
    s = make(3, 10, 5, 2.0, 5.0, 1.0, 0.0)
    assert delta_switch_min(s) < s.lam
    assert regret_keep_current(s) < 0
    m1, m0 = lower_bound_m1(s), lower_bound_m0(s)
    assert m1.simplified <= m1.exact + 1e-12
    for policy in ["fixed_slot", "random_slot", "always_fresh", "keep_current"]:
        assert np.sum(regret_per_cycle(s, policy)) >= m1.exact - 1e-9
    assert regret_keep_current(s) == pytest.approx(m0.exact, abs=1e-9)


def test_bounds_refuse_incomplete_forgetting() -> None:
    s = make(3, 12, 4, 4.0, 0.05, 0.8, 0.3)
    with pytest.raises(ValueError):
        lower_bound_m1(s)
    with pytest.raises(ValueError):
        lower_bound_m0(s)
    with pytest.raises(ValueError):
        regret_random_slot(s)


# --------------------------------------------------------------------------- Delta and Theorem 2


def test_delta_switch_values() -> None:
    s = make(3, 40, 8, 6.0, 0.0, 0.8, 0.0)
    assert delta_switch(s, 1) == 0.0
    assert delta_switch(s, 2) == pytest.approx(delta_switch_min(s))
    ds = [delta_switch(s, c) for c in range(2, 60)]
    assert np.all(np.diff(ds) >= -1e-15)
    assert ds[-1] == pytest.approx(delta_switch_asymptotic(s), rel=1e-9)
    s1 = make(3, 200, 4, 6.0, 0.0, 1.0, 0.0)
    assert delta_switch_asymptotic(s1) == pytest.approx(s1.curve.area, rel=1e-12)
    assert delta_switch_min(s1) == pytest.approx(s1.curve.area, rel=1e-9)  # L >> tau: about D tau


@pytest.mark.parametrize("setting", SETTINGS, ids=IDS)
def test_theorem2_bank_regret_vs_prescient(setting: CyclicSetting) -> None:
    tr = trace_cyclic(setting, "bank")
    acc_regret = float(np.sum(setting.curve.a_star - tr.acc))
    reward_regret = float(np.sum(setting.curve.a_star - tr.rewards))
    assert bank_regret_vs_prescient(setting) == pytest.approx(acc_regret, abs=1e-9)
    with_cost = bank_regret_vs_prescient(setting, include_switch_cost=True)
    assert with_cost == pytest.approx(reward_regret, abs=1e-9)
    if setting.kappa == 1.0:
        assert bank_regret_vs_prescient(setting) <= bank_regret_bound_kappa1(setting) + 1e-12


def test_theorem2_bounded_at_kappa_one_and_linear_below() -> None:
    totals = [bank_regret_vs_prescient(make(3, 10, C, 6.0, 0.1, 1.0, 0.0)) for C in (5, 50, 200)]
    bound = bank_regret_bound_kappa1(make(3, 10, 5, 6.0, 0.1, 1.0, 0.0))
    assert all(t <= bound + 1e-12 for t in totals) and totals[-1] == pytest.approx(bound, rel=1e-9)
    s = make(3, 10, 200, 6.0, 0.1, 0.7, 0.0)
    shorter = make(3, 10, 199, 6.0, 0.1, 0.7, 0.0)
    step = bank_regret_vs_prescient(s) - bank_regret_vs_prescient(shorter)
    assert step == pytest.approx(bank_regret_slope(s), rel=1e-9)
    assert bank_regret_slope(make(3, 10, 5, 6.0, 0.1, 1.0, 0.0)) == 0.0


# --------------------------------------------------------------------------- simulator details


def test_simulator_rejects_loading_an_empty_slot() -> None:
    with pytest.raises(ValueError):
        trace_cyclic(SETTINGS[0], lambda ctx: load(0))


def test_simulator_records_bank_experience() -> None:
    s = make(3, 5, 4, 3.0, 0.1, 0.6, 0.0)
    tr = trace_cyclic(s, "bank")
    first = tr.acc.reshape(s.C, s.M, s.L)[:, 0, 0]  # task 0, first step of each visit
    H = np.array([bank_experience(c, s.L, s.kappa) for c in range(1, s.C + 1)])
    np.testing.assert_allclose(first, s.curve.acc(H + 1), atol=1e-12)
    assert tr.switched.sum() == s.M * (s.C - 1)


def test_custom_policy_callable() -> None:
    seen: list[StepContext] = []

    def keep(ctx: StepContext) -> int:
        seen.append(ctx)
        return KEEP

    s = SETTINGS[2]
    np.testing.assert_allclose(
        simulated_regret_per_cycle(s, keep), simulated_regret_per_cycle(s, "keep_current"), atol=0
    )
    assert len(seen) == s.n_steps and np.isnan(seen[0].last_acc)


def test_theorem1_reexports_the_simulator() -> None:
    assert t1.simulate_cyclic(SETTINGS[0], "bank").shape == (SETTINGS[0].n_steps,)


# --------------------------------------------------------------------------- capacity K < M


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "belady", "reject", "pin"])
@pytest.mark.parametrize(("M", "K"), [(3, 2), (5, 2), (5, 4), (7, 3), (4, 1), (4, 4), (4, 6)])
def test_hits_per_cycle_match_the_table(policy: str, M: int, K: int) -> None:
    cycles = 1 + (M - 1) * 6  # Belady's pattern has period M - 1 cycles
    hits = simulate_hits(policy, M, K, cycles)
    assert hits[0] == 0  # cold start: every first visit misses
    assert hits[1:].mean() == pytest.approx(hits_per_cycle(policy, M, K), abs=1e-12)


def test_hits_table_values() -> None:
    for policy in ("lru", "fifo", "lfu"):
        assert hits_per_cycle(policy, 5, 3) == 0.0
    assert hits_per_cycle("belady", 5, 3) == pytest.approx(5 * 2 / 4)
    assert hits_per_cycle("reject", 5, 3) == 3.0
    with pytest.raises(ValueError):
        hits_per_cycle("mru", 5, 3)
