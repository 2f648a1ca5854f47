"""``nsr-gym leaderboard``'s two tracks, their normalization anchors and sources, on small fake
result folders (the files ``nsr-gym run`` and ``nsr-gym study hard-track`` write)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nsr_gym.agents import STEP_COLUMNS
from nsr_gym.executors import FrameStore, Unit
from nsr_gym.studies import leaderboard as lb
from nsr_gym.studies.benchmark import units_dir

SEEDS = (100, 101, 102)
#: Per agent: class and return on each seed (returns differ by seed, so anchors are per seed).
HARD = {"clairvoyant": ("clairvoyant", [540.0, 542.0, 541.0]),
        "belady-retain": ("clairvoyant", [539.0, 541.5, 540.0]),
        "pin": ("history", [538.0, 541.0, 539.0]),
        "similarity": ("history", [515.0, 516.0, 513.0]),
        "keep-current": ("M0", [512.0, 514.0, 512.5]),
        "always-fresh": ("M0", [511.0, 512.0, 511.5]),
        "random-slot": ("M1", [513.0, 513.0, 511.5])}  # best memoryless by mean: keep-current
STANDARD = {"oracle": ("oracle", [570.0, 572.0, 571.0]),
            "similarity": ("history", [570.0, 571.0, 571.0]),
            "keep-current": ("M0", [530.0, 533.0, 531.0]),
            "always-fresh": ("M0", [515.0, 516.0, 514.0])}


def write_run(folder: Path, benchmark: str, env_kwargs: dict, agents: dict) -> pd.DataFrame:
    """The files of one ``nsr-gym run`` result the leaderboard reads; returns its runs."""
    folder.mkdir(parents=True)
    runs = pd.DataFrame([{"agent": a, "seed": s, "episode_return": r, "acc_online": 0.9,
                          "acc_final": 0.95, "bwt": -0.1, "forgetting": 0.1, "recovery": 2.0,
                          "mb_per_task": 0.002}
                         for a, (_, rets) in agents.items()
                         for s, r in zip(SEEDS, rets, strict=True)])
    runs.to_csv(folder / "runs.csv", index=False)
    pd.DataFrame({"agent": list(agents), "class": [c for c, _ in agents.values()]}).to_csv(
        folder / "leaderboard.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({
        "command": f"nsr-gym run --benchmark {benchmark}", "seeds": list(SEEDS),
        "git_revision": "0" * 40, "created_utc": "2026-01-01T00:00:00+00:00",
        "benchmark": benchmark, "env_id": f"nsr_gym/{benchmark}-v0", "env_kwargs": env_kwargs}))
    return runs


def write_study(folder: Path) -> None:
    """``nsr-gym study hard-track``'s files: its rules on the LRU trap (the run's seeds) and on
    SkewedRecurrence (no run), and a controller on both, one of its seeds not the run's."""
    folder.mkdir()
    lru, skewed = "nsr_gym/LRUTrapSplitDigits-v0", "nsr_gym/SkewedRecurrencePermutedDigits-v0"
    rules = [{"env_id": eid, "backend": "analytic", "agent": a, "seed": s,
              "episode_return": r + shift, "acc_mean": 0.9}
             for eid, shift in ((lru, 0.0), (skewed, 10.0))
             for a in ("clairvoyant", "keep-current", "always-fresh", "similarity")
             for s, r in zip(SEEDS, HARD[a][1], strict=True)]
    pd.DataFrame(rules).to_csv(folder / "runs.csv", index=False)
    learned = [{"env_id": eid, "backend": "analytic", "train_seed": 0, "agent": "maskable-ppo[0]",
                "seed": s, "episode_return": r + shift, "acc_mean": 0.88}
               for eid, shift in ((lru, 0.0), (skewed, 10.0))
               for s, r in zip((*SEEDS, 109), (530.0, 535.0, 520.0, 525.0), strict=True)]
    pd.DataFrame(learned).to_csv(folder / "learned.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({
        "command": "nsr-gym study hard-track", "seeds": list(SEEDS), "quick": False,
        "git_revision": "1" * 40, "created_utc": "2026-01-02T00:00:00+00:00"}))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_run(tmp_path / "CyclicSplitDigits", "CyclicSplitDigits", {"backend": "torch"},
              STANDARD)
    write_run(tmp_path / "LRUTrapSplitDigits" / "analytic", "LRUTrapSplitDigits",
              {"backend": "analytic"}, HARD)
    # a standard benchmark whose bank binds (capacity < n_tasks): the clairvoyant is the 1
    write_run(tmp_path / "CyclicSplitDigits" / "analytic" / "K3-retention-agent",
              "CyclicSplitDigits", {"backend": "analytic", "capacity": 3, "retention": "agent"},
              {**STANDARD, "clairvoyant": ("clairvoyant", [575.0, 576.0, 574.0])})
    write_study(tmp_path / "hard_track")
    bad = tmp_path / "Broken"  # a manifest that is not JSON: skipped, not a crash
    bad.mkdir()
    (bad / "runs.csv").write_text("agent,seed,episode_return\nx,0,1\n")
    (bad / "manifest.json").write_text('{"benchmark": "CyclicSplitDigits",')
    return tmp_path


def anchored(scores: pd.DataFrame, benchmark: str, setting: str = "") -> pd.DataFrame:
    return scores[(scores["benchmark"] == benchmark) & (scores["setting"] == setting)]


def test_two_tracks_and_their_anchors(root):
    md, _ = lb.write_leaderboard(root, plots=False, command="nsr-gym leaderboard", n_boot=100)
    assert md.index("## Standard track") < md.index("### CyclicSplitDigits") \
        < md.index("## Hard track") < md.index("### LRUTrapSplitDigits (analytic backend)")
    assert "### Standard track: normalized score" in md and "### Hard track: normalized" in md
    scores = pd.read_csv(root / "leaderboard_scores.csv", keep_default_na=False,
                         na_values=[""]).fillna({"setting": ""})
    assert set(scores["track"]) == {"standard", "hard"}
    assert set(scores.loc[scores["benchmark"] == "LRUTrapSplitDigits", "track"]) == {"hard"}
    # hard track: the clairvoyant is 1 and the best memoryless agent 0, on every seed
    hard = anchored(scores, "LRUTrapSplitDigits")
    by = hard[hard["source"] == "run"].pivot_table(index="seed", columns="agent",
                                                   values="normalized")
    np.testing.assert_allclose(by["clairvoyant"], 1.0)
    np.testing.assert_allclose(by["keep-current"], 0.0)
    ret = {a: np.array(r) for a, (_, r) in HARD.items()}
    np.testing.assert_allclose(by["pin"], (ret["pin"] - ret["keep-current"])  # CSV: 6 digits
                               / (ret["clairvoyant"] - ret["keep-current"]), rtol=1e-5)
    # a privileged reference of another class is scored, not an anchor; the 0 is the best
    # memoryless agent by mean return (keep-current), so an M1 agent may pass it on one seed
    assert (by["belady-retain"] < 1).all() and by["random-slot"].mean() < 0
    # standard track: the oracle is 1 ...
    std = anchored(scores, "CyclicSplitDigits").pivot_table(index="seed", columns="agent",
                                                            values="normalized")
    np.testing.assert_allclose(std["oracle"], 1.0)
    np.testing.assert_allclose(std["keep-current"], 0.0)
    # ... except where capacity binds and a clairvoyant ran: then it is the 1
    bound = anchored(scores, "CyclicSplitDigits", "capacity=3, retention=agent").pivot_table(
        index="seed", columns="agent", values="normalized")
    np.testing.assert_allclose(bound["clairvoyant"], 1.0)
    assert (bound["oracle"] < 1).all()
    board = pd.read_csv(root / "leaderboard.csv")
    refs = board.groupby(["benchmark", "backend"])["reference"].first().to_dict()
    assert refs == {("CyclicSplitDigits", "torch"): "oracle",
                    ("CyclicSplitDigits", "analytic"): "clairvoyant",
                    ("LRUTrapSplitDigits", "analytic"): "clairvoyant",
                    ("SkewedRecurrencePermutedDigits", "analytic"): "clairvoyant"}
    agg = pd.read_csv(root / "leaderboard_aggregate.csv")
    cv = agg[(agg["track"] == "hard") & (agg["agent"] == "clairvoyant")]
    assert cv["normalized_iqm"].tolist() == [1.0] and cv["benchmarks"].tolist() == [2]
    assert set(agg["track"]) == {"standard", "hard"}
    assert json.loads((root / "leaderboard_manifest.json").read_text())["sources"]


def test_learned_controllers_of_the_study_are_rows(root):
    md, _ = lb.write_leaderboard(root, plots=False, command="nsr-gym leaderboard", n_boot=100)
    scores = pd.read_csv(root / "leaderboard_scores.csv")
    mine = scores[(scores["agent"] == "maskable-ppo")
                  & (scores["benchmark"] == "LRUTrapSplitDigits")].sort_values("seed")
    # paired with the run on the seeds both have (seed 109 left out), against the run's anchors
    assert mine["seed"].tolist() == list(SEEDS) and set(mine["source"]) == {lb.STUDY_SOURCE}
    low, high = np.array(HARD["keep-current"][1]), np.array(HARD["clairvoyant"][1])
    np.testing.assert_allclose(mine["normalized"], (np.array([530.0, 535.0, 520.0]) - low)
                               / (high - low), rtol=1e-5)
    assert "seeds 100,101,102,109, this run on 100..102" in md
    assert "1 of 4 of their episodes are left out" in md
    # an id the study covers and no run does: the study's rows on their own, its own anchors
    skewed = scores[scores["benchmark"] == "SkewedRecurrencePermutedDigits"]
    assert set(skewed["source"]) == {lb.STUDY_SOURCE} and len(skewed) == 4 * 3 + 4
    by = skewed.pivot_table(index="seed", columns="agent", values="normalized")
    np.testing.assert_allclose(by.loc[list(SEEDS), "clairvoyant"], 1.0)
    np.testing.assert_allclose(by.loc[list(SEEDS), "keep-current"], 0.0)
    assert "Every row from the hard-track study" in md
    board = pd.read_csv(root / "leaderboard.csv")
    row = board[(board["agent"] == "maskable-ppo")
                & (board["benchmark"] == "LRUTrapSplitDigits")]
    assert row["class"].tolist() == ["learned"] and row["acc"].isna().all()


def test_step_logs_are_read_through_the_frame_store(root):
    folder = root / "LRUTrapSplitDigits" / "analytic"
    meta = json.loads((folder / "manifest.json").read_text())
    units = units_dir(folder, meta["env_id"], meta["env_kwargs"])

    def log(agent: str, seed: int, total: float) -> pd.DataFrame:
        frame = pd.DataFrame({c: 0 for c in STEP_COLUMNS}, index=range(4))
        return frame.assign(agent=agent, seed=seed, t=range(4), reward=total / 4)

    store = FrameStore(units, name=lambda u: f"{u.agent}__seed{u.seed}")
    store.save(Unit("pin", 100), log("pin", 100, HARD["pin"][1][0]))  # this run's
    store.save(Unit("pin", 101), log("pin", 101, 1.0))  # another run's: other return
    units.joinpath("similarity__seed100.csv").write_text(  # no checksum file: not read
        log("similarity", 100, HARD["similarity"][1][0]).to_csv(index=False))
    res = lb.load_result(folder)
    steps = res["steps"]
    assert steps is not None
    assert set(zip(steps["agent"], steps["seed"], strict=True)) == {("pin", 100)}
    assert list(steps.columns) == STEP_COLUMNS
    assert res["track"] == "hard" and res["capacity_binds"] and res["reference"] == "clairvoyant"
    assert root / "Broken" not in lb.find_runs(root)
