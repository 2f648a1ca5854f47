"""Smoke tests of ``nsr-gym train`` and of a trained controller in ``nsr-gym run``, in process
(``nsr_gym.cli.main``; ``tests/test_cli.py`` runs the console script itself)."""

from __future__ import annotations

import json
import sys
from dataclasses import fields

import pandas as pd
import pytest

from nsr_gym.cli import main


def nsr_gym(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``nsr-gym ARGS`` in this process; ``sys.argv`` is set so the outputs record it."""
    monkeypatch.setattr(sys, "argv", ["nsr-gym", *args])
    return main(list(args))


@pytest.mark.slow
def test_train_then_run_with_the_trained_controller(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mppo"
    flags = "--algo maskable-ppo --env CyclicSplitDigits --backend analytic --timesteps 120 "
    flags += "--seed 1 --n-envs 1 --n-evals 0"
    assert nsr_gym(monkeypatch, "train", *flags.split(), "--out", str(out),
                   "--env-kwargs", '{"phase_length": 4, "n_cycles": 2}',
                   "--hyperparams", '{"n_steps": 40, "batch_size": 40, "n_epochs": 1}') == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["command"].startswith("nsr-gym train") and config["settings"]["seed"] == 1
    assert config["settings"]["env_kwargs"] == {"phase_length": 4, "n_cycles": 2}

    res = tmp_path / "res"
    quick = "--quick --seeds 1 --backend analytic --no-progress".split()
    assert nsr_gym(monkeypatch, "run", *quick, "--out", str(res),
                   "--agents", f"similarity,oracle,maskable-ppo:{out}") == 0
    board = pd.read_csv(res / "leaderboard.csv")
    row = board[board["agent"] == "maskable-ppo:mppo"]
    assert len(row) == 1 and row["class"].iloc[0] == "learned"


def test_train_and_run_reject_bad_input(tmp_path, capsys):
    assert main(["train", "--env", "Nope", "--out", str(tmp_path)]) == 2
    assert "unknown env" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--env-kwargs", "[1]"])
    assert "JSON object" in capsys.readouterr().err
    assert main(["run", "--agents", "ppo:/no/such/model", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_defaults_mirror_the_train_config():
    from nsr_gym.agents.train import ALGOS, VEC_ENVS, TrainConfig
    from nsr_gym.cli import train as cli

    assert cli.ALGOS == ALGOS and cli.VEC_ENVS == VEC_ENVS
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key, value in vars(cli.DEFAULTS).items():
        assert defaults[key] == value, key
