"""Metrics on small hand-computed logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nsr_gym import metrics


def _log(phases: list[tuple[int, list[float], float]], L: int) -> pd.DataFrame:
    """phases: (task, accuracies of the L steps, zero-shot accuracy at the first step)."""
    rows, visits = [], {}
    for p, (task, accs, zs) in enumerate(phases):
        visits[task] = visits.get(task, 0) + 1
        for s, a in enumerate(accs):
            rows.append(dict(phase=p, step_in_phase=s, task_id=task, visit=visits[task], accuracy=a,
                             zero_shot_accuracy=zs if s == 0 else accs[s - 1],
                             reward=a - 0.1 * (s == 0),
                             switched=int(s == 0), bank_bytes=1000 * (p + 1), bank_entries=p + 1))
    return pd.DataFrame(rows)


def test_recovery_time_definition():
    acc = np.array([0.5, 0.7, 0.89, 0.95])
    assert metrics.recovery_time(acc, a_pre=0.9, eps=0.02) == (2, False)  # 0.89 >= 0.88 at s=3
    assert metrics.recovery_time(acc, a_pre=0.5, eps=0.0) == (0, False)
    assert metrics.recovery_time(acc, a_pre=1.0, eps=0.01) == (4, True)  # censored at L


def test_phase_table_bwt_forgetting_recovery_by_hand():
    L = 4
    log = _log([
        (0, [0.5, 0.6, 0.8, 0.9], 0.5),
        (1, [0.5, 0.7, 0.8, 0.8], 0.5),
        (0, [0.9, 0.9, 0.9, 0.9], 0.88),  # returns recovered: R = 0
        (1, [0.5, 0.6, 0.7, 0.8], 0.4),  # forgotten: R = 3 (0.8 >= mean(last 2)=0.8 - 0.02)
    ], L)
    ph = metrics.phase_table(log, eps=0.02, window=2)
    assert ph["recovery"].tolist()[2:] == [0, 3]
    np.testing.assert_allclose(ph["bwt"].tolist()[2:], [0.88 - 0.9, 0.4 - 0.8])
    np.testing.assert_allclose(ph["forgetting"].tolist()[2:], [0.9 - 0.88, 0.8 - 0.4])
    mat = metrics.accuracy_matrix(ph)
    np.testing.assert_allclose(mat, [[0.9, 0.8], [0.9, 0.8]])
    s = metrics.summarize_run(log, eps=0.02, window=2)
    assert s.recovery == pytest.approx(1.5) and s.recovery_censored == 0.0 and s.n_revisits == 2
    assert s.bwt == pytest.approx(((0.88 - 0.9) + (0.4 - 0.8)) / 2)
    assert s.acc_final == pytest.approx((0.9 + 0.8) / 2)
    assert s.switches == 4 and s.bank_mb == pytest.approx(0.004)
    assert s.mb_per_task == pytest.approx(0.001)


def test_regret_against_reference_and_leaderboard():
    a = _log([(0, [0.5, 1.0], 0.5), (0, [1.0, 1.0], 1.0)], 2).assign(agent="oracle", seed=0)
    b = _log([(0, [0.5, 0.5], 0.5), (0, [0.5, 0.5], 0.5)], 2).assign(agent="other", seed=0)
    runs = metrics.summarize(pd.concat([a, b]))
    regret = runs.set_index("agent")["regret"]
    assert regret["oracle"] == 0 and regret["other"] == pytest.approx(0.5 + 0.5 + 0.5)
    board = metrics.leaderboard(runs)
    assert board["agent"].tolist() == ["oracle", "other"]


def test_phase_table_reads_any_row_order_and_empty_logs():
    log = _log([(0, [0.5, 0.6, 0.8], 0.5), (1, [0.4, 0.7, 0.9], 0.4), (0, [0.8, 0.9, 0.9], 0.7)], 3)
    ph = metrics.phase_table(log)
    pd.testing.assert_frame_equal(metrics.phase_table(log.sample(frac=1, random_state=0)), ph)
    assert list(ph.columns) == metrics.PHASE_COLUMNS and ph["length"].tolist() == [3, 3, 3]
    assert metrics.phase_table(log.iloc[:0]).empty


# test_mean_ci moved to tests/test_stats.py with mean_ci (nsr_gym.stats).
