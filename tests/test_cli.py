"""CLI smoke tests with tiny budgets: in process through ``nsr_gym.cli.main``, and one subprocess
test of the console script itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from nsr_gym.cli import main


def nsr_gym(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``nsr-gym ARGS`` in this process; ``sys.argv`` is set so the manifest records it."""
    monkeypatch.setattr(sys, "argv", ["nsr-gym", *args])
    return main(list(args))


def test_console_script_runs_and_reports_usage_errors():
    script = shutil.which("nsr-gym")
    cmd = [script] if script else [sys.executable, "-m", "nsr_gym.cli"]
    done = subprocess.run([*cmd, "envs"], capture_output=True, text=True, timeout=300,
                          check=True)
    assert "nsr_gym/CyclicSplitDigits-v0" in done.stdout
    bad = subprocess.run([*cmd, "run", "--seeds", "x"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def test_envs_lists_registered_ids(monkeypatch, capsys):
    assert nsr_gym(monkeypatch, "envs") == 0
    out = capsys.readouterr().out
    assert "nsr_gym/CyclicSplitDigits-v0" in out and "nsr_gym/RecurringSplitDigits-v0" in out


@pytest.mark.slow
def test_run_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "res"
    args = ["run", "--quick", "--seeds", "1", "--agents", "similarity,oracle,keep-current",
            "--no-progress", "--out", str(out)]
    assert nsr_gym(monkeypatch, *args) == 0
    assert "| similarity |" in capsys.readouterr().out
    for name in ("leaderboard.csv", "leaderboard.md", "phases.csv", "runs.csv", "manifest.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [0] and "git_revision" in meta
    assert meta["command"].startswith("nsr-gym run")
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["agent"]) == {"similarity", "oracle", "keep-current"}
    # resuming reuses the finished units and gives the same table
    before = (out / "leaderboard.csv").read_text()
    assert nsr_gym(monkeypatch, *args) == 0
    assert (out / "leaderboard.csv").read_text() == before


def test_run_rejects_bad_input(tmp_path, monkeypatch, capsys):
    assert nsr_gym(monkeypatch, "run", "--agents", "nope", "--out", str(tmp_path)) == 2
    assert "unknown agent" in capsys.readouterr().err
    assert nsr_gym(monkeypatch, "run", "--benchmark", "Nope", "--out", str(tmp_path)) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        nsr_gym(monkeypatch, "run", "--seeds", "x")
    assert exit_.value.code == 2 and "--seeds" in capsys.readouterr().err
