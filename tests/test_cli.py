"""Subprocess smoke tests of the CLI with tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd


def nsr_gym(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsr_gym.cli", *args], capture_output=True,
                          text=True, check=check, timeout=300)


def test_envs_lists_registered_ids():
    out = nsr_gym("envs").stdout
    assert "nsr_gym/CyclicSplitDigits-v0" in out and "nsr_gym/RecurringSplitDigits-v0" in out


def test_run_writes_results_and_resumes(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--quick", "--seeds", "1", "--agents", "similarity,oracle,keep-current",
            "--no-progress", "--out", str(out)]
    first = nsr_gym(*args)
    assert "| similarity |" in first.stdout
    for name in ("leaderboard.csv", "leaderboard.md", "phases.csv", "runs.csv", "manifest.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [0] and "git_revision" in meta and meta["command"].startswith("nsr-gym run")
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["agent"]) == {"similarity", "oracle", "keep-current"}
    # resuming reuses the finished units and gives the same table
    before = (out / "leaderboard.csv").read_text()
    nsr_gym(*args)
    assert (out / "leaderboard.csv").read_text() == before


def test_run_rejects_bad_input(tmp_path):
    bad = nsr_gym("run", "--agents", "nope", "--out", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown agent" in bad.stderr
    bad = nsr_gym("run", "--benchmark", "Nope", "--out", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr
    bad = nsr_gym("run", "--seeds", "x", check=False)
    assert bad.returncode == 2 and "--seeds" in bad.stderr
