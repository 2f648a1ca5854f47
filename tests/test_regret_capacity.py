"""``nsr-gym regret --capacity K --retention-rule RULE``: Theorem 3's verdicts on analytic
settings where the closed forms hold exactly (noise-free evaluation, ``gamma = 0``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nsr_gym.cli import main
from nsr_gym.executors import Sweep
from nsr_gym.studies import regret_capacity as rc
from nsr_gym.theory.capacity import simulate_hits

EXACT = {"eval_samples": 0}
FAST_AGENTS = ("bank-inf", "bank", "always-fresh", "keep-current", "fixed-slot")


def _study(tmp_path, rule, agents=FAST_AGENTS, K=2, seeds=(0, 1), cycles=4, L=6):
    cfg = rc.CapacityConfig(capacity=K, rule=rule, seeds=seeds, cycles=cycles, phase_length=L,
                            learner=EXACT, agents=agents, resamples=100,
                            out=str(tmp_path / rule), sweep=Sweep(progress=False))
    plan = rc.plan_capacity(cfg)
    verdicts, md = rc.run_capacity(plan, command="test")
    return plan, verdicts, md


@pytest.mark.parametrize("rule", ["pin", "lru", "fifo", "belady"])
def test_capacity_verdicts_follow_theorem3_exactly(tmp_path, rule):
    plan, v, md = _study(tmp_path, rule)
    assert v["overall"] == "holds" and v["violations"] == [] and v["not_tight"] == []
    assert v["premise_complete_forgetting"] and v["hits_exceed_K"] == []
    pol = v["policies"]
    for a, p in pol.items():
        if a == "bank-inf":
            continue
        for bound in p["bounds"].values():
            e = bound["complete_forgetting"]
            assert e["verdict"] == "holds", (a, bound)
            if e["expected_ratio"] is not None:  # noise-free: the closed form to 1e-9
                assert e["ratio"] == pytest.approx(e["expected_ratio"], abs=1e-9), a
    # (iii) pinning attains (M - K)(Delta - lam); (iv) LRU and FIFO pay the M0 rate
    claimed = {"pin": "T3", "lru": "M0", "fifo": "M0"}.get(rule)
    if claimed:
        assert pol["bank"]["claim"]["bound"] == claimed and pol["bank"]["verdict"] == "tight"
        assert pol["bank"]["bounds"][claimed]["ratio"] == pytest.approx(1.0, abs=1e-9)
    else:  # Belady with forced insertion lies between them
        assert pol["bank"]["verdict"] == "holds"
        assert 1.0 < pol["bank"]["bounds"]["T3"]["ratio"] < plan.setup.M / (plan.setup.M - 2)
    assert pol["keep-current"]["verdict"] == "tight"  # Theorem 1': keep-current meets M0
    hits = {"pin": 2.0, "lru": 0.0, "fifo": 0.0}.get(rule)
    if hits is not None:
        assert pol["bank"]["hits_per_revisit_cycle"]["mean"] == hits
    assert f"rule {rule}" in md and (tmp_path / rule / "verdicts.json").exists()
    for name in ("summary.md", "regret.png", "manifest.json", "phases.csv.gz",
                 "policy_bank.csv"):
        assert (tmp_path / rule / name).exists(), name


def test_belady_retention_hits_the_cache_pattern(tmp_path):
    plan, v, _ = _study(tmp_path, "belady", agents=("bank-inf", "bank", "always-fresh"),
                        K=3, seeds=(0,), cycles=6)
    frame = json.loads((tmp_path / "belady" / "verdicts.json").read_text())
    assert frame["policies"]["bank"]["hits_per_revisit_cycle"]["max"] <= 3
    import pandas as pd

    per_cycle = pd.read_csv(tmp_path / "belady" / "policy_bank.csv")["hits"].to_numpy()
    np.testing.assert_array_equal(per_cycle, simulate_hits("belady", 5, 3, 6))


def test_capacity_rejects_bad_input(tmp_path, capsys):
    assert main(["regret", "--capacity", "3", "--out", str(tmp_path)]) == 2
    assert "--retention-rule" in capsys.readouterr().err
    assert main(["regret", "--capacity", "5", "--retention-rule", "pin",
                 "--out", str(tmp_path)]) == 2
    assert "K < M" in capsys.readouterr().err
    assert main(["regret", "--capacity", "2", "--retention-rule", "pin", "--agents",
                 "bank,always-fresh", "--out", str(tmp_path)]) == 2
    assert "bank-inf" in capsys.readouterr().err


@pytest.mark.slow
def test_capacity_cli_with_the_clairvoyant_tight(tmp_path):
    out = tmp_path / "cap"
    assert main(["regret", "--capacity", "3", "--retention-rule", "lru", "--seeds", "2",
                 "--cycles", "3", "--phase-length", "6", "--learner", json.dumps(EXACT),
                 "--agents", "bank-inf,bank,always-fresh,keep-current,clairvoyant",
                 "--resamples", "100", "--no-progress", "--out", str(out)]) == 0
    v = json.loads((out / "verdicts.json").read_text())
    # the clairvoyant plans its own retention: it pins, and attains Theorem 3's bound
    assert v["policies"]["clairvoyant"]["verdict"] == "tight"
    assert v["policies"]["clairvoyant"]["hits_per_revisit_cycle"]["mean"] == 3
    assert v["policies"]["bank"]["claim"]["bound"] == "M0"
