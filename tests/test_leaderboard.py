"""``nsr-gym leaderboard``: a smoke run over real (analytic, tiny) results, in process."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pandas as pd
import pytest

from nsr_gym.cli import main

# The statistics (IQM, stratified bootstrap, normalized scores) are tested in tests/test_stats.py.


@pytest.mark.slow  # two benchmark runs, the figures and rliable's bootstrap: ~20 s
def test_leaderboard_over_real_results(tmp_path, capsys, monkeypatch):
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
    capsys.readouterr()
    argv = ["leaderboard", "--results", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["nsr-gym", *argv])  # the command the manifest records
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "## FiveDomains" in stdout and "## PermutedDigits" in stdout
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
    assert set(board["track"]) == {"standard"} and set(board["setting"]) == {"n_cycles=2"}
    for fig in (  # a setting other than the registered one (--cycles 2) names its own figures
        "FiveDomains-analytic-n_cycles=2_accuracy_matrix.png",
        "PermutedDigits-analytic-n_cycles=2_switches_memory.png",
        "FiveDomains-analytic-n_cycles=2_switch_curves.csv",
        "PermutedDigits-analytic-n_cycles=2_memory_curves.csv",
    ):
        assert (tmp_path / "leaderboard_plots" / fig).is_file(), fig
    pytest.importorskip("rliable", reason="rliable is a test extra: the profile plot needs it")
    assert (tmp_path / "leaderboard_plots" / "performance_profile-analytic.png").is_file()
    assert "- `leaderboard_plots/performance_profile-analytic.png`" in md
    meta = json.loads((tmp_path / "leaderboard_manifest.json").read_text())
    assert len(meta["sources"]) == 2 and meta["command"].startswith("nsr-gym leaderboard")


def test_leaderboard_without_results_says_what_to_run(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    assert "nsr-gym run --benchmark" in capsys.readouterr().err


def test_performance_profile_is_skipped_without_rliable(tmp_path, monkeypatch, capsys):
    from nsr_gym.studies.leaderboard_plots import plot_performance_profiles

    real_import = builtins.__import__

    def no_rliable(name, *args, **kwargs):
        if name.split(".")[0] == "rliable":
            raise ImportError("No module named 'rliable'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rliable)
    scores = pd.DataFrame({"benchmark": "B", "backend": "analytic", "seed": [0, 1, 0, 1],
                           "agent": ["oracle", "oracle", "x", "x"], "return": [1.0, 1, 0, 0],
                           "normalized": [1.0, 1.0, 0.2, 0.4]})
    assert plot_performance_profiles(scores, tmp_path, "caption") == []
    assert "skipping the performance-profile plot" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_profile_scores_are_rectangular_per_agent():
    from nsr_gym.studies.leaderboard_plots import profile_scores

    scores = pd.DataFrame({
        "benchmark": ["A", "A", "B", "B", "A", "A", "B", "B"], "backend": "torch",
        "seed": [0, 1, 0, 1] * 2, "agent": ["x"] * 4 + ["y"] * 4, "return": 0.0,
        "normalized": [0.1, 0.2, 0.3, np.nan, 1.0, 1.0, 1.0, 1.0]})
    got = profile_scores(scores)
    assert list(got) == ["torch"] and set(got["torch"]) == {"x", "y"}
    np.testing.assert_array_equal(got["torch"]["x"], [[0.1, 0.3]])  # seed 1 lacks B: dropped
    assert got["torch"]["y"].shape == (2, 2)
