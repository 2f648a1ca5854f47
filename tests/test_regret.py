"""``nsr-gym regret`` and ``nsr-gym fit``: smoke runs with tiny budgets, in process
(``nsr_gym.cli.main``; ``tests/test_cli.py`` runs the console script itself)."""

from __future__ import annotations

import json

import gymnasium as gym
import pandas as pd
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.cli import main


@pytest.mark.slow
def test_regret_quick_writes_verdicts_resumes_and_fits(tmp_path, monkeypatch, capsys):
    out = tmp_path / "regret"
    args = ["regret", "--quick", "--seeds", "4", "--resamples", "200", "--steps-log",
            "--no-progress", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["nsr-gym", *args])  # the command the manifest records
    assert main(args) == 0
    assert "Theorem 1 on the analytic backend" in capsys.readouterr().out
    for name in ("verdicts.json", "summary.md", "regret.png", "manifest.json", "seeds.csv",
                 "phases.csv.gz", "steps.csv.gz", "policy_bank.csv", "policy_always-fresh.csv"):
        assert (out / name).exists(), name
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["overall"] == "holds" and verdicts["violations"] == []
    fixed = verdicts["policies"]["fixed-slot"]["bounds"]["M1"]
    assert fixed["verdict"] == "holds" and fixed["ci_low"] <= fixed["ratio"] <= fixed["ci_high"]
    assert set(verdicts["policies"]["keep-current"]["bounds"]) == {"M1", "M0"}
    assert verdicts["delta_switch"]["paired"]["mean"] > 0 and "convention" in verdicts["recovery"]
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [0, 1, 2, 3] and meta["command"].startswith("nsr-gym regret")
    per_policy = pd.read_csv(out / "policy_fixed-slot.csv")
    assert len(per_policy) == 4 * 3 and {"cum_regret_vs_bank", "seed", "cycle"} <= set(per_policy)
    # resume: every unit is reused, and the verdicts come out the same
    assert main(args) == 0
    again = json.loads((out / "verdicts.json").read_text())
    assert again["policies"] == verdicts["policies"]
    units = json.loads((out / "manifest.json").read_text())["units"]
    assert units["resumed"] == 6 * 4 and units["computed"] == 0

    fit_out = tmp_path / "fit"
    assert main(["fit", "--from", str(out), "--out", str(fit_out), "--seeds", "3",
                 "--resamples", "200", "--no-progress"]) == 0
    config = json.loads((fit_out / "analytic_config.json").read_text())["config"]
    prediction = json.loads((fit_out / "prediction.json").read_text())
    assert "always-fresh" in prediction["comparison"]["policies"]
    transfer = prediction["negative_transfer"]  # the wrong-load slow-down, fitted and predicted
    assert {"fixed-slot", "random-slot"} <= set(transfer["logged_setting"]["policies"])
    assert transfer["model"]["beta"] >= 0 and "With negative transfer" in \
        (fit_out / "prediction.md").read_text()
    assert (fit_out / "analytic" / "verdicts.json").exists()
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", learner=config)
    env.reset(seed=0)
    env.close()


def test_regret_rejects_bad_input(tmp_path, capsys):
    assert main(["regret", "--agents", "always-fresh", "--out", str(tmp_path)]) == 2
    assert "bank" in capsys.readouterr().err
    assert main(["regret", "--cycles", "2", "--out", str(tmp_path)]) == 2
    assert "cycles" in capsys.readouterr().err
    assert main(["fit", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_phase_record_matches_metrics_phase_table():
    import numpy as np

    from nsr_gym import metrics
    from nsr_gym.agents import RandomSlot, rollout
    from nsr_gym.studies.regret import phase_record

    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", phase_length=7, n_cycles=3,
                   learner={"eval_samples": 50})
    log = rollout(env, RandomSlot(), seed=4)
    rec = phase_record(log, "random-slot", 4, 5, 7)
    ref = metrics.phase_table(log)
    for col in ref.columns:
        np.testing.assert_allclose(rec[col].to_numpy(dtype=float), ref[col].to_numpy(dtype=float),
                                   rtol=0, atol=1e-12, err_msg=col)
    assert rec["cycle"].tolist() == [1] * 5 + [2] * 5 + [3] * 5
    np.testing.assert_array_equal(rec[[f"acc_{s}" for s in range(1, 8)]].to_numpy().ravel(),
                                  log["accuracy"].to_numpy())
    env.close()


def test_regret_recomputes_units_kept_without_the_curves_it_needs(tmp_path, capsys):
    out = tmp_path / "regret"
    args = ["regret", "--quick", "--seeds", "2", "--resamples", "50", "--no-progress",
            "--out", str(out)]
    assert main(args) == 0
    assert main([*args, "--steps-log"]) == 0  # every agent's curves now: narrow units rerun
    units = json.loads((out / "manifest.json").read_text())["units"]
    assert units["resumed"] == 2 and units["computed"] == 5 * 2  # always-fresh kept its curves
    assert capsys.readouterr().err.count("is not a complete unit log (other columns)") == 10
    steps = pd.read_csv(out / "steps.csv.gz")
    assert steps["accuracy"].notna().all() and steps["agent"].nunique() == 6
