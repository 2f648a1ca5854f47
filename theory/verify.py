"""Checking a measured regret against Theorem 1's slope, with a seed bootstrap and a one-sided test.

Protocol (theory/THEORY.md, "Verifying"):

1. Per seed, the cumulative regret against B at the end of each cycle, ``(n_seeds, C)``
   (``cum_regret_by_cycle`` builds it from per-step rewards).
2. The regret slope: OLS slope over cycles ``2..C`` (cycle 1 holds first visits, which the bound
   does not count). OLS is linear in the data, so the slope of the seed mean equals the mean of
   the per-seed slopes; the bootstrap uses that to resample cheaply.
3. The ratio ``slope / ((M - 1)(Delta - lam))`` for M1 policies (``M (Delta - lam)`` for M0), with
   ``Delta`` re-estimated inside every resample from the same resampled seeds (the seed is the
   independent unit: its regret and its ``Delta`` come from the same data order).
4. A one-sided verdict: the lower bound is *violated* only when the ratio's upper 95% limit is
   below ``1 - tol``. Tight policies sit exactly at ratio 1, so requiring the lower limit to be
   ``>= 1`` would reject a true bound half the time.
5. Where a theorem also says a policy *attains* its bound (Theorem 3 (iii): pinning; (iv): LRU
   and FIFO at the M0 rate; Theorem 1': keep-current at the M0 bound), ``attainment_verdict``
   is the two-sided check of that claim: "tight" when the ratio's CI reaches into
   ``[1 - tol, 1 + tol]``, "not tight" when the whole CI lies outside it.

Theorem 3's bound has the factor ``M - K`` (misses per revisit cycle with ``K`` slots):
``bootstrap_slope_ratio(..., factor=M - K)`` takes any factor in place of the class's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Attainment",
    "SlopeRatio",
    "Verdict",
    "attainment_verdict",
    "bootstrap_slope_ratio",
    "cum_regret_by_cycle",
    "one_sided_verdict",
    "regret_slope",
]

Verdict = Literal["holds", "violated", "inconclusive"]
Attainment = Literal["tight", "not tight", "inconclusive"]


def cum_regret_by_cycle(rewards_ref: ArrayLike, rewards: ArrayLike, n_cycles: int) -> np.ndarray:
    """Cumulative regret ``sum r(ref) - sum r(pi)`` at the end of each cycle.

    Args:
        rewards_ref: Per-step rewards of the comparator B, ``(T,)`` or ``(n_seeds, T)``.
        rewards: Per-step rewards of the policy, same shape (same seeds).
        n_cycles: ``C``; ``T`` must be a multiple of it.

    Returns:
        ``(C,)`` or ``(n_seeds, C)``.
    """
    ref = np.asarray(rewards_ref, dtype=np.float64)
    got = np.asarray(rewards, dtype=np.float64)
    if ref.shape != got.shape or ref.shape[-1] % n_cycles:
        raise ValueError(
            f"shapes {ref.shape}, {got.shape} must match and split into {n_cycles} cycles"
        )
    per_cycle = (ref - got).reshape(*ref.shape[:-1], n_cycles, -1).sum(axis=-1)
    return np.cumsum(per_cycle, axis=-1)


def regret_slope(cum_regret_by_cycle: ArrayLike) -> float | np.ndarray:
    """OLS slope of cumulative regret against the cycle index, over cycles ``2..C``.

    Args:
        cum_regret_by_cycle: ``(C,)`` (index 0 is cycle 1) or ``(n_seeds, C)`` for one slope per
            seed. Needs ``C >= 3`` (two revisit cycles).

    Returns:
        Regret per cycle: a float, or an array ``(n_seeds,)``.
    """
    y = np.asarray(cum_regret_by_cycle, dtype=np.float64)
    if y.shape[-1] < 3:
        raise ValueError("the slope over cycles 2..C needs C >= 3")
    y = y[..., 1:]
    x = np.arange(2, y.shape[-1] + 2, dtype=np.float64)
    xc = x - x.mean()
    slope = (y - y.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)
    return float(slope) if np.ndim(slope) == 0 else slope


@dataclass(frozen=True)
class SlopeRatio:
    """Bootstrap result of ``bootstrap_slope_ratio``."""

    ratio: float
    """Point estimate: slope of the mean cumulative regret / the bound's slope."""
    ci_low: float
    ci_high: float
    ci_width: float
    slope: float
    """Mean per-seed OLS slope (regret per cycle)."""
    delta: float
    """Mean per-seed ``Delta_switch``."""
    bound_slope: float
    """``(M - 1)(Delta - lam)`` or ``M (Delta - lam)`` at the point estimate."""
    n_seeds: int
    n_resamples: int
    n_invalid: int
    """Resamples with bound slope ``<= 0`` (ratio undefined: the theorem needs ``Delta > lam``)."""

    def verdict(self, tol: float = 0.05, max_width: float | None = None) -> Verdict:
        """``one_sided_verdict`` on this interval."""
        return one_sided_verdict(self.ci_high, tol=tol, ci_width=self.ci_width, max_width=max_width)


def bootstrap_slope_ratio(
    per_seed_cum_regret: ArrayLike,
    per_seed_delta: ArrayLike,
    M: int,
    lam: float,
    policy_class: Literal["M0", "M1"],
    n_resamples: int = 2000,
    rng: np.random.Generator | int | None = None,
    level: float = 0.95,
    factor: float | None = None,
) -> SlopeRatio:
    """Seed-bootstrap CI of ``slope / bound slope``, re-estimating ``Delta`` in every resample.

    Args:
        per_seed_cum_regret: ``(n_seeds, C)`` cumulative regret against B per seed and cycle.
        per_seed_delta: ``(n_seeds,)`` ``Delta_switch`` per seed (e.g. ``paired_delta_switch``).
        M: Number of tasks.
        lam: Switching cost.
        policy_class: ``"M1"`` (bound slope ``(M - 1)(Delta - lam)``) or ``"M0"``
            (``M (Delta - lam)``).
        n_resamples: Bootstrap resamples (theory/THEORY.md asks for at least 2000).
        rng: Generator or seed.
        level: Two-sided confidence level of the percentile interval.
        factor: The bound's factor in place of the class's ``M - 1`` / ``M`` (Theorem 3:
            ``M - K``, misses per revisit cycle with ``K < M`` slots); must be ``> 0``.

    Returns:
        ``SlopeRatio``. If more than ``1 - level`` of the resamples have a bound slope ``<= 0``,
        the interval is NaN (and the verdict inconclusive): the ratio is not defined there.
    """
    Y = np.asarray(per_seed_cum_regret, dtype=np.float64)
    d = np.asarray(per_seed_delta, dtype=np.float64).ravel()
    if Y.ndim != 2 or Y.shape[0] != d.size:
        raise ValueError(
            f"need (n_seeds, C) regrets and (n_seeds,) deltas, got {Y.shape} and {d.shape}"
        )
    if policy_class not in ("M0", "M1"):
        raise ValueError(f"policy_class must be 'M0' or 'M1', got {policy_class!r}")
    if factor is None:
        factor = float(M - 1 if policy_class == "M1" else M)
    elif not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    factor = float(factor)
    n = d.size
    slopes = np.asarray(regret_slope(Y), dtype=np.float64).reshape(n)
    gen = np.random.default_rng(rng)
    idx = gen.integers(0, n, size=(n_resamples, n))
    slope_b = slopes[idx].mean(axis=1)
    den_b = factor * (d[idx].mean(axis=1) - lam)
    valid = den_b > 0
    ratio_b = np.where(valid, slope_b / np.where(valid, den_b, 1.0), np.nan)
    slope, delta = float(slopes.mean()), float(d.mean())
    den = factor * (delta - lam)
    ratio = slope / den if den > 0 else math.nan
    alpha = 1.0 - level
    n_invalid = int(np.sum(~valid))
    if n_invalid > alpha * n_resamples:
        lo = hi = math.nan
    else:
        # Invalid resamples have den <= 0: the ratio there is "unbounded", so count them on the
        # high side rather than dropping them, which keeps the upper limit honest.
        ratio_b = np.where(valid, ratio_b, np.inf)
        lo, hi = (float(v) for v in np.quantile(ratio_b, [alpha / 2, 1 - alpha / 2]))
    return SlopeRatio(
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        ci_width=hi - lo,
        slope=slope,
        delta=delta,
        bound_slope=den,
        n_seeds=n,
        n_resamples=n_resamples,
        n_invalid=n_invalid,
    )


def one_sided_verdict(
    ci_upper: float,
    tol: float = 0.05,
    ci_width: float | None = None,
    max_width: float | None = None,
) -> Verdict:
    """One-sided test of a lower bound from the ratio's CI.

    * ``"violated"`` when ``ci_upper < 1 - tol``: the whole interval lies below the bound. This is
      decided first, so a wide interval that still lies entirely below is a violation (width
      limits what we can confirm, not what we can refute).
    * ``"inconclusive"`` when the interval is undefined (NaN) or wider than ``max_width``.
    * ``"holds"`` otherwise. The lower limit is never required to be ``>= 1``: tight policies sit
      exactly at ratio 1.

    Args:
        ci_upper: Upper limit of the ratio's CI.
        tol: Tolerance below 1 still read as consistent with the bound.
        ci_width: CI width; only needed with ``max_width``.
        max_width: Widest interval that may confirm the bound (None: no limit).
    """
    if math.isnan(ci_upper):
        return "inconclusive"
    if ci_upper < 1.0 - tol:
        return "violated"
    if max_width is not None:
        if ci_width is None or math.isnan(ci_width) or ci_width > max_width:
            return "inconclusive"
    return "holds"


def attainment_verdict(
    ci_low: float,
    ci_high: float,
    tol: float = 0.05,
    max_width: float | None = None,
) -> Attainment:
    """Two-sided check that a policy *attains* its bound (ratio 1) from the ratio's CI.

    * ``"not tight"`` when the whole interval lies outside ``[1 - tol, 1 + tol]`` (decided first,
      as in :func:`one_sided_verdict`: width limits what we can confirm, not what we refute);
    * ``"inconclusive"`` when the interval is undefined (NaN) or wider than ``max_width``;
    * ``"tight"`` otherwise: the interval reaches into ``[1 - tol, 1 + tol]``.

    Args:
        ci_low, ci_high: The ratio's CI.
        tol: Half-width of the band around 1 still read as equality.
        max_width: Widest interval that may confirm it (None: no limit).
    """
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    if ci_high < 1.0 - tol or ci_low > 1.0 + tol:
        return "not tight"
    if max_width is not None and ci_high - ci_low > max_width:
        return "inconclusive"
    return "tight"
