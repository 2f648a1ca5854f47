"""Statistics over seeds: bootstrap confidence intervals, the interquartile mean (IQM), the
stratified bootstrap and normalized scores.

The seed is the independent unit everywhere: a bootstrap resamples seeds (with replacement),
and a *stratified* bootstrap resamples seeds within each stratum (benchmark) separately, as
rliable's ``StratifiedBootstrap`` does. The statistics drop non-finite values first, and the
bootstraps draw from ``numpy.random.default_rng(seed)``, so a table regenerates identically.
``tests/test_stats.py`` checks :func:`iqm` and :func:`stratified_bootstrap_ci` against rliable
(``metrics.aggregate_iqm``, ``library.get_interval_estimates``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["MEMORYLESS", "N_BOOT", "iqm", "mean_ci", "normalized_scores",
           "stratified_bootstrap_ci"]

#: Resamples of every bootstrap unless told otherwise.
N_BOOT = 2000
#: Memory classes of the memoryless agents (Theorem 1's M0 and M1): the normalized score's 0.
MEMORYLESS = ("M0", "M1")


def _finite(values: np.ndarray | Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def mean_ci(values: np.ndarray, n_boot: int = N_BOOT, level: float = 0.95,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap CI over seeds.

    Args:
        values: ``(n,)`` one value per seed; NaN and inf are dropped.
        n_boot: Bootstrap resamples.
        level: Coverage of the interval (0.95: the 2.5% and 97.5% quantiles).
        seed: Seed of the resampling.

    Returns:
        ``(mean, ci_low, ci_high)``; all NaN without finite values, all the value for one.
    """
    values = _finite(values)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, values.size, (n_boot, values.size))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``).

    Args:
        values: Scores of any shape (flattened); NaN and inf are dropped.

    Returns:
        The IQM, or NaN without finite values.
    """
    values = _finite(np.ravel(values))
    if not values.size:
        return float("nan")
    # scipy's trim_mean(values, 0.25) step for step (partition, then the mean of the middle),
    # without its argument handling, which cost ~0.5 ms a call inside the bootstraps
    low = int(0.25 * values.size)
    high = values.size - low
    kept = np.partition(values, (low, high - 1))[low:high]
    return float(np.mean(kept))


def stratified_bootstrap_ci(
    strata: Sequence[np.ndarray], stat: Callable[[np.ndarray], float] = iqm,
    n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0,
) -> tuple[float, float, float]:
    """``stat`` of the pooled values and its percentile CI, resampling *within* each stratum.

    Args:
        strata: One ``(n_k,)`` array of per-seed values per stratum (benchmark); one stratum is
            the plain bootstrap over seeds. Non-finite values and empty strata are dropped.
        stat: Statistic of the pooled ``(sum n_k,)`` values (default :func:`iqm`).
        n_boot: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling.

    Returns:
        ``(point, ci_low, ci_high)``; all NaN without finite values.
    """
    strata = [s for s in (_finite(s) for s in strata) if s.size]
    if not strata:
        return float("nan"), float("nan"), float("nan")
    point = stat(np.concatenate(strata))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(np.concatenate([s[rng.integers(0, s.size, s.size)] for s in strata]))
                      for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def normalized_scores(runs: pd.DataFrame, classes: Mapping[str, str]) -> pd.Series:
    """Per-row normalized score of one benchmark's runs: 0 = best memoryless, 1 = oracle.

    Per seed, ``(R - R_mem) / (R_oracle - R_mem)``, where ``R_mem`` is the return of the
    memoryless agent (class in :data:`MEMORYLESS`) with the best mean return on the benchmark.

    Args:
        runs: One row per ``(agent, seed)`` with ``agent``, ``seed`` and ``episode_return``.
        classes: Agent name -> memory class (``M0``, ``M1``, ``history``, ``oracle``, ...).

    Returns:
        A series aligned with ``runs``; NaN everywhere without an oracle or a memoryless agent,
        and where the oracle ties the best memoryless agent on a seed.
    """
    mem = [a for a in runs["agent"].unique() if classes.get(a) in MEMORYLESS]
    if "oracle" not in set(runs["agent"]) or not mem:
        return pd.Series(np.nan, index=runs.index)
    by_agent = runs.groupby("agent")["episode_return"].mean()
    best_mem = by_agent[mem].idxmax()
    per_seed = runs.pivot_table(index="seed", columns="agent", values="episode_return")
    low, high = runs["seed"].map(per_seed[best_mem]), runs["seed"].map(per_seed["oracle"])
    span = (high - low).where((high - low).abs() > 1e-9)
    return (runs["episode_return"] - low) / span
