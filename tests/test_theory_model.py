"""theory.model: Phi, Bank experience, recovery times."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsr_gym.theory.model import (
    ExpCurve,
    bank_experience,
    phase_deficit,
    phase_deficit_bruteforce,
    pre_switch_accuracy,
    recovery_time,
    recovery_time_fresh,
)


@settings(max_examples=60, deadline=None)
@given(
    H=st.floats(0.0, 200.0),
    L=st.integers(0, 120),
    D=st.floats(0.0, 1.0),
    tau=st.floats(0.2, 50.0),
)
def test_phase_deficit_closed_form_equals_sum(H: float, L: int, D: float, tau: float) -> None:
    curve = ExpCurve(0.9, D, tau)
    brute = phase_deficit_bruteforce(H, L, curve)
    assert phase_deficit(H, L, curve) == pytest.approx(brute, rel=1e-10, abs=1e-12)


def test_phase_deficit_vectorizes_and_scales_with_experience() -> None:
    curve = ExpCurve(0.95, 0.75, 6.0)
    H = np.array([0.0, 3.0, 40.0])
    phi = phase_deficit(H, 40, curve)
    assert isinstance(phi, np.ndarray) and phi.shape == (3,)
    np.testing.assert_allclose(phi, phase_deficit(0.0, 40, curve) * np.exp(-H / 6.0), rtol=1e-12)


def test_area_is_the_infinite_phase_deficit_about_D_tau() -> None:
    curve = ExpCurve(0.95, 0.75, 6.0)
    assert phase_deficit(0.0, 2000, curve) == pytest.approx(curve.area, rel=1e-12)
    assert curve.area == pytest.approx(0.75 * (6.0 - 0.5), rel=0.01)
    assert curve.q == pytest.approx(math.exp(-1 / 6))


def test_curve_rejects_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        ExpCurve(0.9, 0.5, 0.0)
    with pytest.raises(ValueError):
        ExpCurve(0.9, -0.1, 5.0)


@pytest.mark.parametrize("kappa", [1.0, 0.8, 0.3])
def test_bank_experience_recursion_matches_closed_form(kappa: float) -> None:
    L = 7
    for c in range(1, 9):
        closed = (c - 1) * L if kappa == 1.0 else kappa * L * (1 - kappa ** (c - 1)) / (1 - kappa)
        assert bank_experience(c, L, kappa) == pytest.approx(closed, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        bank_experience(0, L, kappa)


@pytest.mark.parametrize(("eps", "expected"), [(0.01, 25), (0.02, 21), (0.05, 16)])
def test_recovery_time_fresh_theory_example(eps: float, expected: int) -> None:
    assert recovery_time_fresh(0.75, 6.0, 40, eps) == expected


@pytest.mark.parametrize("w", [1, 3, 10])
@pytest.mark.parametrize("eps", [0.0, 0.001, 0.01, 0.05, 0.3])
@pytest.mark.parametrize(("D", "tau", "L"), [(0.75, 6.0, 40), (0.4, 2.5, 10), (0.9, 15.0, 30)])
def test_recovery_time_fresh_equals_definition(
    D: float, tau: float, L: int, eps: float, w: int
) -> None:
    """The formula is exact when a_pre is the mean of the last w steps of a fresh phase."""
    curve = ExpCurve(0.93, D, tau)
    fresh_phase = np.asarray(curve.acc(np.arange(1, L + 1)))
    a_pre = pre_switch_accuracy(fresh_phase, w)
    r, censored = recovery_time(fresh_phase, a_pre, eps)
    assert not censored
    assert recovery_time_fresh(D, tau, L, eps, w) == r


@pytest.mark.parametrize("kappa", [1.0, 0.95])
def test_bank_recovery_is_immediate_at_kappa_one(kappa: float) -> None:
    curve, L = ExpCurve(0.95, 0.75, 6.0), 40
    for c in range(2, 6):
        a_pre = float(curve.acc(bank_experience(c - 1, L, kappa) + L))
        revisit = np.asarray(curve.acc(bank_experience(c, L, kappa) + np.arange(1, L + 1)))
        r, censored = recovery_time(revisit, a_pre, eps=0.0)
        assert not censored
        if kappa == 1.0:
            assert r == 0
        else:  # compression costs a few steps: acc_1 is below a_pre
            assert r > 0


def test_recovery_time_censored_at_L() -> None:
    r, censored = recovery_time([0.1, 0.2, 0.3], a_pre=0.9, eps=0.01)
    assert (r, censored) == (3, True)
    assert recovery_time([0.95, 0.96], a_pre=0.9, eps=0.0) == (0, False)
    assert recovery_time([0.5, 0.89, 0.95], a_pre=0.9, eps=0.01) == (1, False)


def test_recovery_time_is_the_metrics_definition() -> None:
    from nsr_gym import metrics

    assert recovery_time is metrics.recovery_time
