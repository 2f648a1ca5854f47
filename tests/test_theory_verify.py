"""theory.verify: slopes, the seed bootstrap, and the one-sided verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nsr_gym.theory.estimate import paired_delta_switch
from nsr_gym.theory.model import ExpCurve
from nsr_gym.theory.simulate import trace_cyclic
from nsr_gym.theory.theorem1 import CyclicSetting
from nsr_gym.theory.verify import (
    bootstrap_slope_ratio,
    cum_regret_by_cycle,
    one_sided_verdict,
    regret_slope,
)


def test_regret_slope_on_a_line_ignores_cycle_one() -> None:
    y = np.array([100.0, 3.0, 5.0, 7.0, 9.0])  # cycle 1 is an outlier the slope must not see
    assert regret_slope(y) == pytest.approx(2.0)
    slopes = regret_slope(np.stack([y, 2 * y]))
    np.testing.assert_allclose(slopes, [2.0, 4.0])
    with pytest.raises(ValueError):
        regret_slope([1.0, 2.0])


def test_cum_regret_by_cycle() -> None:
    ref = np.ones(12)
    got = np.r_[np.zeros(4), np.ones(4), np.zeros(4)]
    np.testing.assert_allclose(cum_regret_by_cycle(ref, got, 3), [4.0, 4.0, 8.0])
    both = cum_regret_by_cycle(np.stack([ref, ref]), np.stack([got, ref]), 3)
    np.testing.assert_allclose(both[1], 0.0)


@pytest.mark.parametrize(
    ("upper", "width", "max_width", "expected"),
    [
        (1.02, 0.1, 0.5, "holds"),  # tight policy: interval around 1
        (0.96, 0.1, 0.5, "holds"),  # within tolerance
        (0.90, 0.1, 0.5, "violated"),
        (0.90, 2.0, 0.5, "violated"),  # entirely below even though wide
        (1.50, 2.0, 0.5, "inconclusive"),  # too wide to confirm
        (math.nan, math.nan, None, "inconclusive"),
        (5.0, 1.0, None, "holds"),  # lower limit is never required to be >= 1
    ],
)
def test_one_sided_verdict(
    upper: float, width: float, max_width: float | None, expected: str
) -> None:
    assert one_sided_verdict(upper, tol=0.05, ci_width=width, max_width=max_width) == expected


def test_bootstrap_recovers_a_known_slope() -> None:
    rng = np.random.default_rng(1)
    n, C, M, lam = 300, 8, 4, 0.1
    delta_true, ratio_true = 2.0, 1.3
    slope_true = ratio_true * (M - 1) * (delta_true - lam)
    cycles = np.arange(1, C + 1)
    seed_slope = slope_true + rng.normal(0, 0.5, n)
    Y = seed_slope[:, None] * cycles[None, :] + rng.normal(0, 0.3, (n, C)) + 5.0
    d = delta_true + rng.normal(0, 0.1, n)
    res = bootstrap_slope_ratio(Y, d, M, lam, "M1", n_resamples=2000, rng=0)
    assert res.slope == pytest.approx(slope_true, rel=0.02)
    assert res.ci_low < ratio_true < res.ci_high
    assert res.ci_width == pytest.approx(res.ci_high - res.ci_low) and res.ci_width < 0.1
    assert res.verdict(max_width=0.2) == "holds"
    again = bootstrap_slope_ratio(Y, d, M, lam, "M1", n_resamples=2000, rng=0)
    assert again == res  # deterministic given the seed
    m0 = bootstrap_slope_ratio(Y, d, M, lam, "M0", rng=0)
    assert m0.ratio == pytest.approx(res.ratio * (M - 1) / M)


def test_bootstrap_on_simulated_tight_policy_sits_at_one() -> None:
    """Keep-current against the M0 bound, noise off; L >> tau so Delta_c is constant to ~q^L."""
    s = CyclicSetting(3, 60, 6, ExpCurve(0.95, 0.75, 4.0), 0.2)
    b, k = trace_cyclic(s, "bank"), trace_cyclic(s, "keep_current")
    f = trace_cyclic(s, "always_fresh")
    cum = cum_regret_by_cycle(b.rewards, k.rewards, s.C)
    delta = paired_delta_switch(b.acc, f.acc, b.phase, b.cycle >= 2)
    res = bootstrap_slope_ratio(np.tile(cum, (5, 1)), np.full(5, delta), s.M, s.lam, "M0", rng=0)
    assert res.ratio == pytest.approx(1.0, abs=1e-6)  # Delta_c varies by Phi(0) q^{(c-1)L}
    assert res.verdict(max_width=0.05) == "holds"


def test_bootstrap_flags_a_violation_and_an_undefined_ratio() -> None:
    rng = np.random.default_rng(2)
    n, C, M = 50, 6, 3
    Y = (0.5 * (M - 1) * 1.0) * np.arange(1, C + 1)[None, :] + rng.normal(0, 0.1, (n, C))
    res = bootstrap_slope_ratio(Y, np.full(n, 1.0), M, 0.0, "M1", rng=0)
    assert res.ratio == pytest.approx(0.5, abs=0.05) and res.verdict() == "violated"
    undefined = bootstrap_slope_ratio(Y, np.full(n, 0.1), M, 0.5, "M1", rng=0)
    assert math.isnan(undefined.ratio) and undefined.n_invalid == 2000
    assert undefined.verdict() == "inconclusive"


def test_bootstrap_takes_theorem3s_factor() -> None:
    rng = np.random.default_rng(3)
    n, C, M, K = 40, 6, 5, 2
    Y = np.cumsum(np.full((n, C), 3.0) + rng.normal(0, 0.05, (n, C)), axis=1)
    d = np.full(n, 1.05)
    t3 = bootstrap_slope_ratio(Y, d, M, 0.05, "M0", rng=0, factor=M - K)
    m0 = bootstrap_slope_ratio(Y, d, M, 0.05, "M0", rng=0)
    assert t3.ratio == pytest.approx(m0.ratio * M / (M - K)) and t3.bound_slope == 3.0
    with pytest.raises(ValueError, match="factor"):
        bootstrap_slope_ratio(Y, d, M, 0.05, "M0", factor=0)


def test_attainment_verdict_is_two_sided() -> None:
    from nsr_gym.theory.verify import attainment_verdict

    assert attainment_verdict(0.98, 1.03) == "tight"
    assert attainment_verdict(1.0, 1.0) == "tight"
    assert attainment_verdict(0.90, 0.96, tol=0.05) == "tight"  # reaches into [0.95, 1.05]
    assert attainment_verdict(1.2, 1.4) == "not tight"
    assert attainment_verdict(0.5, 0.9) == "not tight"
    assert attainment_verdict(0.2, 1.9, max_width=0.5) == "inconclusive"
    assert attainment_verdict(float("nan"), 1.0) == "inconclusive"
