"""The controlled study's pieces (nsr_gym/studies/controllers.py, controller_tables.py) on the
analytic backend."""

from __future__ import annotations

import numpy as np
import pytest

from nsr_gym.agents import make_agent
from nsr_gym.studies import controller_tables as ct
from nsr_gym.studies import controllers as cs

RULES = ("similarity", "oracle", "keep-current", "fixed-slot", "round-robin")


@pytest.fixture(scope="module")
def steps():
    rules = {n: (lambda seed, n=n: make_agent(n)) for n in RULES}
    return cs.evaluate_units("cyclic", "analytic", rules, [0, 1])


def test_tables_of_the_study(steps):
    runs = ct.summarize(steps)
    assert set(runs["agent"]) == set(RULES)
    assert ct.best_memoryless(runs) == {("cyclic", "analytic"): "fixed-slot"}
    tab = ct.table(runs, ["similarity", "oracle", "round-robin"])
    best = "fixed-slot (best memoryless)"
    assert list(tab["agent"]) == ["similarity", "oracle", "round-robin", best]
    sim = tab.iloc[0]
    assert sim["recovery"] == 0 and sim["regret"] == 0 and sim["seeds"] == 2
    # round-robin stands in for a learned controller: a strict cycle makes it exact
    vs = ct.paired_vs(runs, ["round-robin"], "similarity")
    assert vs["diff"].iloc[0] == pytest.approx(0)
    assert vs["pct_of_reference"].iloc[0] == pytest.approx(100)
    vs = ct.paired_vs(runs, ["round-robin"], None)  # against the best memoryless agent
    assert vs["reference"].iloc[0] == "fixed-slot" and (vs["ci_low"] > 0).all()


def test_switch_curves_have_a_band_per_offset(steps):
    curves = ct.switch_curves(steps, before=3, after=5)
    sim = curves[curves["agent"] == "similarity"]
    assert list(sim["offset"]) == list(range(-3, 5))
    assert (sim["ci_low"] <= sim["accuracy"] + 1e-12).all()
    assert (sim["accuracy"] <= sim["ci_high"] + 1e-12).all()
    keep = curves[curves["agent"] == "keep-current"].set_index("offset")["accuracy"]
    assert keep[0] < sim.set_index("offset")["accuracy"][0]  # memoryless: the drop at a return


def test_training_plan_and_resume(tmp_path):
    cfg = cs.StudyConfig(seeds=[0, 1], timesteps=100, torch_timesteps=50, out=str(tmp_path))
    configs = cs.train_configs(cfg)
    assert configs[0].backend == "torch"  # longest first
    assert {c.seed for c in configs} == {cs.TRAIN_SEED_OFFSET, cs.TRAIN_SEED_OFFSET + 1}
    # torch-trained MaskablePPO, MaskablePPO in every setting, PPO on cyclic only
    assert len(configs) == 2 + 2 * (len(cfg.settings) + 1)
    assert not any(cs._done(c) for c in configs)


def test_benchmark_reports_time_and_curve(tmp_path):
    bench = cs.benchmark_time_to_rule([0], max_timesteps=600, eval_every=600, out=tmp_path / "b")
    assert bench["rule_return"] > 500
    assert bench["target_return"] == pytest.approx(0.95 * bench["rule_return"])
    assert len(bench["curve"]) >= 1 and np.isfinite(bench["curve"][0]["mean_return"])
    # ``reached`` summarises the curve: some evaluation got within 5% of the rule, and training
    # stopped at the first that did
    hits = [p for p in bench["curve"] if p["mean_return"] >= bench["target_return"]]
    assert bench["reached"] is bool(hits) and bench["cpu_count"] >= 1
    if hits:
        assert hits == bench["curve"][-1:] and bench["timesteps"] == hits[0]["timesteps"]
