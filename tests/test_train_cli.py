"""Subprocess smoke tests of ``nsr-gym train`` and of a trained controller in ``nsr-gym run``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pandas as pd
import pytest


def nsr_gym(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nsr_gym.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


def test_train_then_run_with_the_trained_controller(tmp_path):
    out = tmp_path / "mppo"
    flags = "--algo maskable-ppo --env CyclicSplitDigits --backend analytic --timesteps 120 "
    flags += "--seed 1 --n-envs 1 --n-evals 0"
    done = nsr_gym("train", *flags.split(), "--out", str(out),
                   "--env-kwargs", '{"phase_length": 4, "n_cycles": 2}',
                   "--hyperparams", '{"n_steps": 40, "batch_size": 40, "n_epochs": 1}')
    assert "wrote" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["command"].startswith("nsr-gym train") and config["settings"]["seed"] == 1
    assert config["settings"]["env_kwargs"] == {"phase_length": 4, "n_cycles": 2}

    res = tmp_path / "res"
    nsr_gym("run", *"--quick --seeds 1 --backend analytic --no-progress".split(), "--out", str(res),
            "--agents", f"similarity,oracle,maskable-ppo:{out}")
    board = pd.read_csv(res / "leaderboard.csv")
    row = board[board["agent"] == "maskable-ppo:mppo"]
    assert len(row) == 1 and row["class"].iloc[0] == "learned"


def test_train_and_run_reject_bad_input(tmp_path, capsys):
    from nsr_gym.cli import main

    assert main(["train", "--env", "Nope", "--out", str(tmp_path)]) == 2
    assert "unknown env" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--env-kwargs", "[1]"])
    assert "JSON object" in capsys.readouterr().err
    assert main(["run", "--agents", "ppo:/no/such/model", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_defaults_mirror_the_train_config():
    from agents.train import ALGOS, VEC_ENVS, TrainConfig
    from nsr_gym.cli import train as cli

    assert cli.ALGOS == ALGOS and cli.VEC_ENVS == VEC_ENVS
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key, value in vars(cli.DEFAULTS).items():
        assert defaults[key] == value, key
