"""theory.estimate: Delta from paired runs, curve fits, forgetting and truncation."""

from __future__ import annotations

import numpy as np
import pytest

from nsr_gym.theory.estimate import (
    fit_exponential,
    forgetting_ratio,
    paired_delta_switch,
    truncation_gap,
)
from nsr_gym.theory.model import ExpCurve
from nsr_gym.theory.simulate import trace_cyclic
from nsr_gym.theory.theorem1 import CyclicSetting, delta_switch


@pytest.mark.parametrize("kappa", [1.0, 0.7])
def test_paired_delta_switch_recovers_the_model_delta(kappa: float) -> None:
    s = CyclicSetting(3, 10, 5, ExpCurve(0.95, 0.75, 4.0), 0.1, kappa)
    b, f = trace_cyclic(s, "bank"), trace_cyclic(s, "always_fresh")
    est = paired_delta_switch(b.acc, f.acc, b.phase, b.cycle >= 2)
    expected = np.mean([delta_switch(s, c) for c in range(2, s.C + 1)])
    assert est == pytest.approx(expected, abs=1e-12)
    # 2-D input: one estimate per seed, schedule shared
    acc_b, acc_f = np.stack([b.acc, b.acc + 0.01]), np.stack([f.acc, f.acc])
    est2 = paired_delta_switch(acc_b, acc_f, b.phase, b.cycle >= 2)
    np.testing.assert_allclose(est2, [expected, expected + 0.01 * s.L], atol=1e-12)


def test_paired_delta_switch_validates() -> None:
    phase = np.repeat(np.arange(4), 3)
    with pytest.raises(ValueError):
        paired_delta_switch(np.zeros(12), np.zeros(12), phase, np.zeros(12, dtype=bool))
    bad = np.zeros(12, dtype=bool)
    bad[4] = True  # flags part of a phase only
    with pytest.raises(ValueError):
        paired_delta_switch(np.zeros(12), np.zeros(12), phase, bad)


def test_fit_exponential_exact_and_noisy() -> None:
    curve = ExpCurve(0.93, 0.6, 5.0)
    s = np.tile(np.arange(1, 41), 4).astype(float)
    fit = fit_exponential(s, curve.acc(s))
    assert (fit.a_star, fit.D, fit.tau) == pytest.approx((0.93, 0.6, 5.0), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.rmse < 1e-8 and fit.n == s.size
    rng = np.random.default_rng(0)
    noisy = fit_exponential(s, np.asarray(curve.acc(s)) + rng.normal(0, 0.01, s.size))
    assert noisy.tau == pytest.approx(5.0, rel=0.1)
    assert noisy.rmse == pytest.approx(0.01, rel=0.2) and noisy.r2 > 0.95
    assert noisy.curve.tau == noisy.tau


def test_forgetting_ratio_in_the_model() -> None:
    curve, M, L, gamma = ExpCurve(0.95, 0.75, 6.0), 2, 6, 0.9
    s = CyclicSetting(M, L, 3, curve, 0.0, 1.0, gamma)
    acc = trace_cyclic(s, "keep_current").acc.reshape(s.C, M, L)
    a0 = float(curve.acc(1.0))
    G = gamma ** ((M - 1) * L)
    rho = forgetting_ratio(acc[1, 0, 0], a0, curve.a_star)
    assert rho == pytest.approx(1 - curve.q ** (G * L), abs=1e-12)
    ends = np.array([a0, curve.a_star])
    assert forgetting_ratio(ends, a0, curve.a_star) == pytest.approx([0.0, 1.0])
    complete = CyclicSetting(M, L, 3, curve, 0.0)
    acc0 = trace_cyclic(complete, "keep_current").acc.reshape(3, M, L)
    assert forgetting_ratio(acc0[1, 0, 0], a0, curve.a_star) == pytest.approx(0.0, abs=1e-12)


def test_truncation_gap() -> None:
    curve, h, kappa = ExpCurve(0.95, 0.75, 6.0), 12.0, 0.8
    eps = truncation_gap(curve.acc(h), curve.acc(kappa * h))
    assert eps == pytest.approx(0.75 * np.exp(-h / 6) * (np.exp((1 - kappa) * h / 6) - 1))
    np.testing.assert_allclose(truncation_gap([0.9, 0.8], [0.85, 0.8]), [0.05, 0.0])
