"""``nsr-gym leaderboard``: statistics, and a smoke run over real (analytic, tiny) results."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nsr_gym.cli import main
from nsr_gym.cli.leaderboard import iqm, normalized_scores, stratified_bootstrap_ci


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


def test_leaderboard_over_real_results(tmp_path):
    for bench in ("FiveDomains", "PermutedDigits"):
        assert (
            main(
                [
                    "run",
                    "--benchmark",
                    bench,
                    "--backend",
                    "analytic",
                    "--seeds",
                    "3",
                    "--cycles",
                    "2",
                    "--agents",
                    "similarity,oracle,keep-current,random-slot",
                    "--no-progress",
                    "--out",
                    str(tmp_path / bench),
                ]
            )
            == 0
        )
    study = tmp_path / "controllers"  # another command's output, with a runs.csv of its own
    study.mkdir()
    (study / "runs.csv").write_text("setting,agent,seed,episode_return\ncyclic,ppo,0,1.0\n")
    (study / "manifest.json").write_text(json.dumps({"command": "nsr-gym study", "benchmark": {}}))
    done = subprocess.run(
        [sys.executable, "-m", "nsr_gym.cli", "leaderboard", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "## FiveDomains" in done.stdout and "## PermutedDigits" in done.stdout
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["benchmark"]) == {"FiveDomains", "PermutedDigits"}
    assert len(board) == 8 and (board["seeds"] == 3).all()
    oracle = board[board["agent"] == "oracle"]
    assert np.allclose(oracle["normalized_iqm"], 1.0)
    for col in (
        "return_iqm",
        "return_ci_low",
        "return_ci_high",
        "acc",
        "bwt",
        "forgetting",
        "recovery",
        "mb_per_task",
    ):
        assert board[col].notna().all(), col
    assert (board["return_ci_low"] <= board["return_iqm"] + 1e-9).all()
    scores = pd.read_csv(tmp_path / "leaderboard_scores.csv")
    assert len(scores) == 2 * 4 * 3  # benchmarks x agents x seeds, the raw matrix
    md = (tmp_path / "leaderboard.md").read_text()
    assert "closer to zero" in md and "stratified bootstrap" in md
    for fig in (
        "FiveDomains-analytic_accuracy_matrix.png",
        "PermutedDigits-analytic_switches_memory.png",
        "FiveDomains-analytic_switch_curves.csv",
        "PermutedDigits-analytic_memory_curves.csv",
    ):
        assert (tmp_path / "leaderboard_plots" / fig).is_file(), fig
    meta = json.loads((tmp_path / "leaderboard_manifest.json").read_text())
    assert len(meta["sources"]) == 2 and meta["command"].startswith("nsr-gym leaderboard")


def test_leaderboard_without_results_says_what_to_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nsr_gym.cli", "leaderboard", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "nsr-gym run --benchmark" in done.stderr
