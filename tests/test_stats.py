"""nsr_gym.stats: the bootstrap, IQM and normalized scores, by hand and against rliable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nsr_gym.stats import iqm, mean_ci, normalized_scores, stratified_bootstrap_ci


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.array([0.0, 1.0, 2.0, 3.0, 100.0])) == pytest.approx(2.0)  # trims 1 per end
    assert iqm(np.arange(8.0)) == pytest.approx(3.5)
    assert np.isnan(iqm(np.array([np.nan])))


def test_stratified_bootstrap_resamples_within_strata():
    # two strata with constant values: every resample keeps 3 zeros and 5 ones, so the CI is a point
    point, lo, hi = stratified_bootstrap_ci([np.zeros(3), np.ones(5)], stat=np.mean)
    assert point == lo == hi == pytest.approx(5 / 8)
    point, lo, hi = stratified_bootstrap_ci([np.array([0.0, 1.0, 2.0, 3.0, 4.0])], stat=np.mean)
    assert point == 2.0 and lo < 2.0 < hi


def test_mean_ci():
    m, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and lo < m < hi
    assert mean_ci(np.array([5.0]))[1] == 5.0


def test_metrics_reexports_the_one_mean_ci():
    from nsr_gym import metrics

    assert metrics.mean_ci is mean_ci


def test_normalized_score_is_zero_for_best_memoryless_and_one_for_oracle():
    runs = pd.DataFrame(
        {
            "agent": ["oracle", "keep-current", "always-fresh", "similarity"] * 2,
            "seed": [0] * 4 + [1] * 4,
            "episode_return": [10, 4, 2, 7, 12, 6, 1, 12],
        }
    )
    classes = {
        "oracle": "oracle",
        "keep-current": "M0",
        "always-fresh": "M0",
        "similarity": "history",
    }
    score = normalized_scores(runs, classes)
    np.testing.assert_allclose(score, [1, 0, -1 / 3, 0.5, 1, 0, -5 / 6, 1])


# ----------------------------------------------------------------------------- against rliable

rliable = pytest.importorskip("rliable", reason="rliable is a test extra (pip install "
                                                "'nsr-gym[test]')")

#: Resamples of both bootstraps in the comparison.
REPS = 5000
#: Largest allowed gap between our CI limits and rliable's, as a fraction of the CI's width.
#: Both are Monte-Carlo percentiles of the same bootstrap distribution from independent draws:
#: a 2.5% quantile from R resamples has a standard error of about 0.007 * width * sqrt(1e4 / R)
#: for a near-normal distribution, so the gap of two has about 0.014 * width at R = 5000; 0.06
#: is above 4 standard errors.
CI_TOL = 0.06


def _scores(seed: int, runs: int = 10, tasks: int = 3) -> np.ndarray:
    """``(runs, tasks)`` scores with a different location and spread per task."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(runs, tasks)) * rng.uniform(0.5, 2, tasks) + rng.uniform(0, 2, tasks)


@pytest.mark.parametrize("shape", [(5, 1), (7, 3), (10, 4), (13, 2)])
def test_iqm_equals_rliable_aggregate_iqm(shape):
    from rliable import metrics as rly_metrics

    x = _scores(sum(shape), *shape)
    assert iqm(x) == pytest.approx(float(rly_metrics.aggregate_iqm(x)), rel=0, abs=1e-12)
    # per task and pooled, the matrix and its columns as strata give the same point
    assert stratified_bootstrap_ci([x[:, j] for j in range(shape[1])], n_boot=1)[0] == \
        pytest.approx(float(rly_metrics.aggregate_iqm(x)), rel=0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_bootstrap_ci_agrees_with_rliable(seed):
    from rliable import metrics as rly_metrics

    from nsr_gym.studies.leaderboard_plots import rliable_bootstrap

    x = _scores(seed)
    with rliable_bootstrap(seed) as library:
        point, cis = library.get_interval_estimates(
            {"x": x}, lambda s: np.array([rly_metrics.aggregate_iqm(s)]), reps=REPS)
    ours, lo, hi = stratified_bootstrap_ci([x[:, j] for j in range(x.shape[1])], n_boot=REPS,
                                           seed=seed)
    assert ours == pytest.approx(float(point["x"][0]), rel=0, abs=1e-12)
    width = hi - lo
    assert width > 0
    theirs_lo, theirs_hi = cis["x"].ravel()
    assert abs(lo - theirs_lo) <= CI_TOL * width, (lo, theirs_lo, width)
    assert abs(hi - theirs_hi) <= CI_TOL * width, (hi, theirs_hi, width)


def test_mean_ci_agrees_with_rliable_on_one_task():
    from nsr_gym.studies.leaderboard_plots import rliable_bootstrap

    x = _scores(7, runs=12, tasks=1)
    with rliable_bootstrap(7) as library:
        point, cis = library.get_interval_estimates({"x": x}, lambda s: np.array([s.mean()]),
                                                    reps=REPS)
    m, lo, hi = mean_ci(x[:, 0], n_boot=REPS, seed=7)
    assert m == pytest.approx(float(point["x"][0]), rel=0, abs=1e-12)
    theirs_lo, theirs_hi = cis["x"].ravel()
    assert abs(lo - theirs_lo) <= CI_TOL * (hi - lo) and abs(hi - theirs_hi) <= CI_TOL * (hi - lo)


def test_rliable_bootstrap_restores_numpy_state():
    before = np.random.get_state()[1].copy()
    from nsr_gym.studies.leaderboard_plots import rliable_bootstrap

    with rliable_bootstrap(3) as library:
        patched = library.StratifiedBootstrap
        np.random.random()  # draws inside the block do not leak out of it
    from rliable import library as lib

    assert lib.StratifiedBootstrap is not patched
    np.testing.assert_array_equal(np.random.get_state()[1], before)
