"""The capacity study (``nsr-gym study capacity``): its hit count, its quick run and files, and
the committed results: no agent beats an exact clairvoyant, Theorem 3 matches where it holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym
from nsr_gym.agents import make_agent, rollout
from nsr_gym.cli import main
from nsr_gym.executors import Unit
from nsr_gym.studies import capacity
from nsr_gym.studies.capacity_report import BEAT_TOL

RESULTS = Path(__file__).resolve().parent.parent / "results" / "capacity"
CYCLIC = nsr_gym.env_id("CyclicSplitDigits")
FILES = ("runs.csv", "summary.csv", "clairvoyant.csv", "theorem3.csv", "capacity.md",
         "manifest.json")


def _unit(agent: str, benchmark: str = "CyclicSplitDigits", K: int = 2, cycles: int = 4,
          seed: int = 0) -> Unit:
    setting = dict(benchmark=benchmark, capacity=K, n_cycles=cycles, phase_length=5)
    spec, kwargs, _ = capacity.AGENTS[agent]
    return Unit(agent, seed, {"env_id": nsr_gym.env_id(benchmark),
                              "env_kwargs": capacity.env_kwargs("analytic", setting, agent),
                              "spec": spec, "spec_kwargs": kwargs,
                              "tags": {"backend": "analytic", "setting": "test"}})


@pytest.mark.parametrize("K", [2, 3])
def test_hits_on_a_strict_cycle_are_theorem3s(K):
    """Pinning hits K tasks in every revisit cycle, LRU none, and the clairvoyant reaches
    Belady-with-bypass's bound (K per revisit cycle), under both retention modes."""
    cycles = 4
    for agent, hits in (("pin", K * (cycles - 1)), ("similarity+reject", K * (cycles - 1)),
                        ("lru-retain", 0), ("similarity+lru", 0), ("keep-current", 0),
                        ("clairvoyant", K * (cycles - 1))):
        row = capacity.capacity_unit(_unit(agent, K=K, cycles=cycles))
        assert row["hits"] == hits, agent
        assert row["revisits"] == 5 * (cycles - 1)
        assert row["belady_per_cycle"] == pytest.approx(K * (cycles - 1) / cycles)
        assert row["hits_per_cycle"] == pytest.approx(hits / cycles)
    cv = capacity.capacity_unit(_unit("clairvoyant", K=K, cycles=cycles))
    assert cv["plan_exact"] and cv["plan_value"] == pytest.approx(cv["episode_return"], abs=1e-9)


def test_hit_counter_reads_the_write_of_the_same_step():
    """A load of the slot that this step's write fills is a hit only for the pending entry's
    own task; otherwise the slot oracle_info()['next_task_slot'] names is the task's own."""

    class Truth:  # the env's privileged channel, as the counter reads it
        unwrapped = None
        truth = {"next_task_id": 3, "next_task_slot": 0}

        def oracle_info(self) -> dict:
            return dict(self.truth)

    env = Truth()
    env.unwrapped = env
    counter = capacity.HitCounter(env)
    obs = {"occupied": np.array([1.0, 0.0]), "pending": np.array([1.0])}
    info = {"next_is_phase_start": 1}
    counter(obs, info, np.array([2, 0]))  # first visit of task 3: no revisit, no hit
    env.truth = {"next_task_id": 4, "next_task_slot": -1}
    counter(obs, info, np.array([0, 0]))
    env.truth = {"next_task_id": 3, "next_task_slot": 0}
    counter(obs, info, np.array([3, 2]))  # writes task 4's pending entry into slot 1, loads it
    assert (counter.hits, counter.revisits) == (0, 1)
    counter(obs, info, np.array([2, 2]))  # loads slot 0, task 3's own, not the written one
    assert counter.hits == 1
    counter(obs, info, np.array([2, 1]))  # the write of task 3's pending entry over slot 0
    assert counter.hits == 2


def test_units_pair_every_agent_on_the_same_streams():
    units = capacity.make_units(capacity.QUICK, [0, 1], torch_seeds=1)
    per = pd.DataFrame([{**u.setting["tags"], "agent": u.agent, "seed": u.seed} for u in units])
    assert set(per["agent"]) == {*capacity.AGENTS, capacity.BANK_INF}
    counts = per.groupby(["backend", "setting", "agent"]).size()
    assert set(counts.xs("analytic")) == {2} and set(counts.xs("torch")) == {1}
    env = gym.make(CYCLIC, **capacity.env_kwargs("analytic", capacity.SETTINGS["cycle, K=3"],
                                                 "pin"))
    assert (env.unwrapped.capacity, env.unwrapped.n_cycles, env.unwrapped.retention) == (
        3, 6, "agent")
    log = rollout(env, make_agent("pin"), 0)
    assert len(log) == 5 * 30 * 6


@pytest.mark.slow
def test_quick_study_writes_its_files_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "capacity"
    args = ["study", "capacity", "--quick", "--no-progress", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["nsr-gym", *args])
    assert main(args) == 0
    assert "## Findings" in capsys.readouterr().out
    for name in FILES:
        assert (out / name).is_file(), name
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["command"].startswith("nsr-gym study capacity") and meta["seeds"] == [0, 1]
    assert meta["units"]["resumed"] == 0
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["backend"]) == {"analytic", "torch"}
    md = (out / "capacity.md").read_text()
    assert "Written by `nsr-gym study capacity" in md and "Theorem 3" in md
    before = (out / "runs.csv").read_text()
    assert main(args) == 0  # every unit is kept: nothing recomputed, the same table
    assert json.loads((out / "manifest.json").read_text())["units"]["computed"] == 0
    assert (out / "runs.csv").read_text() == before


def _committed() -> pd.DataFrame:
    if not (RESULTS / "runs.csv").exists():
        pytest.skip("results/capacity/ not written yet (nsr-gym study capacity)")
    return pd.read_csv(RESULTS / "runs.csv", float_precision="round_trip")


def test_no_agent_beats_an_exact_clairvoyant_in_the_committed_runs():
    runs = _committed()
    assert set(runs["backend"]) == {"analytic", "torch"}
    assert runs.groupby(["backend", "setting", "agent"])["seed"].nunique().min() >= 5
    analytic = runs[(runs["backend"] == "analytic") & (runs["agent"] != capacity.BANK_INF)]
    checked = 0
    for (setting, seed), g in analytic.groupby(["setting", "seed"]):
        cv = g[g["agent"] == "clairvoyant"].iloc[0]
        if not bool(cv["plan_exact"]):
            continue
        others = g[g["agent"] != "clairvoyant"]
        worst = others.loc[others["episode_return"].idxmax()]
        assert worst["episode_return"] <= cv["episode_return"] + BEAT_TOL, (
            setting, seed, worst["agent"])
        assert cv["plan_value"] == pytest.approx(cv["episode_return"], abs=1e-9)
        checked += 1
    assert checked >= 5 * len(capacity.SETTINGS)
    # hits never exceed Belady-with-bypass's bound (any backend)
    assert (runs["hits_per_cycle"] <= runs["belady_per_cycle"] + 1e-12).all()


def test_committed_theorem3_rows_match_where_the_assumptions_hold():
    _committed()
    th = pd.read_csv(RESULTS / "theorem3.csv")
    hold = th[(th["assumptions"] == "hold") & th["theory"].notna()]
    assert len(hold) and hold["max_abs_diff"].max() < 1e-9
    assert np.allclose(hold["hits_per_cycle"], hold["hits_theory"], atol=1e-12)
