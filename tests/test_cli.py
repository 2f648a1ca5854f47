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


# ---------------------------------------------------------------- bank options of `nsr-gym run`
def test_run_with_a_capped_bank_and_agent_retention(tmp_path, monkeypatch, capsys):
    """--capacity / --retention agent: the retention rules and the clairvoyant decide what the
    bank keeps; the similarity rule (an allocation only) keeps the env's eviction, which the
    table says, and regret is measured against the clairvoyant."""
    out = tmp_path / "k3"
    args = ["run", "--backend", "analytic", "--quick", "--seeds", "1", "--capacity", "3",
            "--retention", "agent", "--agents", "pin,lru-retain,clairvoyant,similarity",
            "--no-progress", "--out", str(out)]
    assert nsr_gym(monkeypatch, *args) == 0
    md = capsys.readouterr().out
    assert "Regret: clairvoyant return minus" in md and "except for similarity" in md
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["env_kwargs"] == {"backend": "analytic", "capacity": 3, "retention": "agent",
                                  "n_cycles": 2}
    assert meta["agent_env_kwargs"]["similarity"]["retention"] == "env"
    runs = pd.read_csv(out / "runs.csv").set_index("agent")
    assert runs.loc["clairvoyant", "regret"] == 0
    assert (runs["regret"] >= -1e-9).all()  # analytic: nothing beats the exact clairvoyant
    # the similarity rule under the env's LRU eviction is lru-retain's twin on this backend
    assert runs.loc["similarity", "episode_return"] == pytest.approx(
        runs.loc["lru-retain", "episode_return"], abs=1e-9)


def test_run_env_kwargs_and_the_default_folder_of_a_capped_bank(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--backend", "analytic", "--quick", "--seeds", "1", "--agents",
            "similarity", "--capacity", "2", "--eviction", "reject", "--env-kwargs",
            '{"lambda_switch": 0.1, "learner": {"tau": 4.0}}', "--no-progress"]
    assert nsr_gym(monkeypatch, *args) == 0
    out = tmp_path / "results" / "quick" / "CyclicSplitDigits" / "analytic"
    (variant,) = [p for p in out.iterdir() if p.is_dir()]  # never the benchmark's own tables
    assert variant.name.startswith("K2-eviction-reject-env-")
    assert not (out / "runs.csv").exists()
    meta = json.loads((variant / "manifest.json").read_text())
    assert meta["env_kwargs"]["lambda_switch"] == 0.1 and meta["env_kwargs"]["learner"] == {
        "tau": 4.0}
    assert meta["env_kwargs"]["eviction"] == "reject" and "agent_env_kwargs" not in meta


@pytest.mark.parametrize(("args", "message"), [
    (["--capacity", "3", "--agents", "pin"], "pin decides what the bank keeps: pass --retention "
                                             "agent"),
    (["--capacity", "3", "--agents", "clairvoyant"], "than tasks (5): pass --retention agent"),
    (["--env-kwargs", '{"bogus": 1}'], "unknown keyword(s) 'bogus'"),
    (["--capacity", "3", "--env-kwargs", '{"capacity": 2}'], "and so does --capacity"),
    (["--cycles", "3", "--env-kwargs", '{"n_cycles": 2}'], "and so does --cycles"),
    (["--env-kwargs", '{"capacity": 0}'], "capacity must be an integer >= 1"),
    (["--retention", "agent", "--reserve", "active"], "needs reserve='owner'"),
])
def test_run_bank_options_name_what_to_pass(tmp_path, monkeypatch, capsys, args, message):
    base = ["run", "--backend", "analytic", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert nsr_gym(monkeypatch, *base, *args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{bad", "[1, 2]"])
def test_run_env_kwargs_must_be_a_json_object(monkeypatch, capsys, text):
    with pytest.raises(SystemExit) as exit_:
        nsr_gym(monkeypatch, "run", "--env-kwargs", text)
    assert exit_.value.code == 2 and "--env-kwargs takes a JSON object" in capsys.readouterr().err
