"""The hard track: its registered ids (what tests/test_envs.py does not already cover for them),
a tiny MaskablePPO run on each, and the quick study.

tests/test_envs.py parametrizes its checkers (Gymnasium's and SB3's) and its same-seed
trajectory test over every registered id, the hard ids included (``MultiDiscrete`` actions
drawn from the masks); it pickles and vectorizes only the first id, so those checks of the hard
ids live here.
"""

from __future__ import annotations

import json
import pickle

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym
from nsr_gym.envs import BENCHMARKS, HARD_TRACK, env_id

IDS = [env_id(name) for name in HARD_TRACK]
BACKENDS = ["analytic", "torch"]
SMALL = dict(phase_length=3, n_cycles=2)
#: Per-id overrides that keep the smoke tests small.
SMOKE = {env_id("SkewedRecurrencePermutedDigits"): dict(n_tasks=6)}


def make(eid: str, backend: str, **kw) -> gym.Env:
    return gym.make(eid, backend=backend, **{**SMALL, **SMOKE.get(eid, {}), **kw})


def _random_action(env: gym.Env, rng: np.random.Generator):
    """A valid action drawn from the env's mask (``MultiDiscrete``: both parts)."""
    mask = env.unwrapped.action_masks()
    if isinstance(env.action_space, gym.spaces.MultiDiscrete):
        n_alloc = int(env.action_space.nvec[0])
        return np.array([rng.choice(np.flatnonzero(mask[:n_alloc])),
                         rng.choice(np.flatnonzero(mask[n_alloc:]))], dtype=np.int64)
    return int(rng.choice(np.flatnonzero(mask)))


def test_the_hard_track_is_registered_and_differs_by_kwargs_only():
    assert len(HARD_TRACK) == len(set(HARD_TRACK)) == 4
    for name in HARD_TRACK:
        assert name in BENCHMARKS and env_id(name) in gym.registry
        assert gym.spec(env_id(name)).entry_point.startswith("nsr_gym.envs")
    trap = gym.make(env_id("LRUTrapSplitDigits"), backend="analytic").unwrapped
    assert (trap.capacity, trap.n_tasks, trap.schedule_kind, trap.retention) == (
        3, 5, "cyclic", "agent")
    skew = gym.make(env_id("SkewedRecurrencePermutedDigits"), backend="analytic").unwrapped
    assert skew.capacity < skew.n_tasks and skew.schedule_kind.startswith("zipf")
    free = gym.make(env_id("TaskFreePermutedDigits"), backend="analytic").unwrapped
    assert free.task_free and free.retention == "agent"
    assert free.learner.config.probe_noise == 0.2
    assert gym.make(env_id("TaskFreePermutedDigits")).unwrapped.learner.config.probe_size == 6


def test_ambiguous_recall_takes_each_backends_learner_options():
    eid = env_id("AmbiguousRecallFiveDomains")
    torch_cfg = gym.make(eid).unwrapped.learner.config
    assert torch_cfg.probe_size == 4
    cfg = gym.make(eid, backend="analytic").unwrapped.learner.config
    assert (cfg.task_similarity, cfg.probe_noise) == (0.9, 0.15)
    cfg = gym.make(eid, backend="analytic", learner={"probe_noise": 0.0}).unwrapped.learner.config
    assert (cfg.task_similarity, cfg.probe_noise) == (0.9, 0.0)  # the user's word wins
    spec = gym.spec(eid)
    assert json.loads(spec.to_json())["kwargs"]["backend_learner_defaults"]["torch"] == {
        "probe_size": 4}


@pytest.mark.parametrize("eid", IDS)
def test_pickle_and_sync_vector_env(eid):
    env = make(eid, "torch")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    action = _random_action(env, rng)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert env.unwrapped.step(action)[1] == clone.step(action)[1]
    env.close()
    envs = gym.make_vec(eid, num_envs=2, vectorization_mode="sync", backend="analytic",
                        **{**SMALL, **SMOKE.get(eid, {})})
    envs.reset(seed=[0, 1])
    single = make(eid, "analytic")
    actions = np.stack([np.asarray(_random_action(single, rng))] * 2)
    _, rewards, *_ = envs.step(actions)
    assert rewards.shape == (2,)
    envs.close()


def _tiny_training(eid: str, backend: str, out) -> None:
    from nsr_gym.agents import make_agent, rollout
    from nsr_gym.agents.train import TrainConfig, train

    kw = {**SMALL, **SMOKE.get(eid, {})}
    train(TrainConfig(algo="maskable-ppo", env_id=eid, backend=backend, total_timesteps=48,
                      n_envs=1, n_evals=0, out=str(out), env_kwargs=kw,
                      hyperparams={"n_steps": 24, "batch_size": 24, "n_epochs": 1}))
    env = make(eid, backend)
    log = rollout(env, make_agent(f"maskable-ppo:{out}"), seed=100)
    assert len(log) == env.unwrapped.n_steps and np.isfinite(log["reward"]).all()


@pytest.mark.parametrize("eid", IDS)
def test_tiny_maskable_ppo_run_on_the_analytic_backend(eid, tmp_path):
    _tiny_training(eid, "analytic", tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("eid", IDS)
def test_tiny_maskable_ppo_run_on_the_torch_backend(eid, tmp_path):
    _tiny_training(eid, "torch", tmp_path / "run")


#: The verdict table's columns (``learned_summary.csv``), in order.
VERDICT_COLUMNS = ["benchmark", "algo", "trained_on", "evaluated_on", "train_seeds", "eval_seeds",
                   "pairs", "return", "normalized", "ci_low", "ci_high", "best_retention_rule",
                   "vs_similarity", "vs_similarity_low", "vs_similarity_high",
                   "vs_best_retention", "vs_best_retention_low", "vs_best_retention_high",
                   "verdict"]


def _synthetic(train_seeds=(0, 1), seeds=(100, 101, 102)):
    """A rules frame and a learned frame for one id: every rule's return is a known function of
    the seed, every controller's of (train backend, train seed, eval backend, seed)."""
    from nsr_gym.studies.hard_track import RULES

    eid = IDS[0]
    base = {"keep-current": 10.0, "always-fresh": 9.0, "similarity": 12.0, "pin": 14.0,
            "lfu-retain": 13.0, "lru-retain": 11.0, "clairvoyant": 20.0}
    runs = [{"env_id": eid, "backend": b, "agent": a, "seed": s, "plan_exact": None,
             "episode_return": base[a] + s - 100 + (b == "torch")}
            for b in BACKENDS for a in RULES for s in seeds]
    learned = [{"env_id": eid, "backend": b, "train_backend": t, "train_seed": k,
                "agent": f"maskable-ppo@{t}[{k}]", "seed": s,
                "episode_return": base["similarity"] + s - 100 + (b == "torch")
                + (3.0 if t == b else -1.0) + 0.1 * k}
               for t in BACKENDS for k in train_seeds for b in BACKENDS for s in seeds]
    return pd.DataFrame(runs), pd.DataFrame(learned)


def test_verdict_table_pairs_train_seeds_with_eval_seeds():
    from nsr_gym.studies import hard_track_report as report

    runs, learned = _synthetic()
    table = report.learned_table(report.add_normalized(runs), learned)
    assert list(table.columns) == VERDICT_COLUMNS
    assert list(zip(table["trained_on"], table["evaluated_on"], strict=True)) == [
        ("analytic", "analytic"), ("analytic", "torch"), ("torch", "torch"),
        ("torch", "analytic")]
    assert (table["pairs"] == 2 * 3).all() and (table["train_seeds"] == 2).all()
    # the seed term cancels in the pairing: exactly +3 (+0.05 mean over train seeds) on the
    # backend trained on, -1 elsewhere, with a CI that shrinks to the train-seed spread
    own = table[table["trained_on"] == table["evaluated_on"]]
    np.testing.assert_allclose(own["vs_similarity"], 3.05)
    np.testing.assert_allclose(own["vs_best_retention"], 3.05 - 2.0)
    assert (own["best_retention_rule"] == "pin").all()
    assert (own["verdict"] == report.BEATS).all()
    assert (own["vs_similarity_high"] - own["vs_similarity_low"] <= 0.1 + 1e-9).all()
    other = table[table["trained_on"] != table["evaluated_on"]]
    np.testing.assert_allclose(other["vs_similarity"], -0.95)
    assert (other["verdict"] == report.LOSES).all()
    transfer = report.transfer_table(learned)
    assert list(transfer["evaluated_on"]) == ["analytic", "torch"]
    np.testing.assert_allclose(transfer["gap"], [-4.0, 4.0])
    assert (transfer["pairs"] == 6).all()
    assert "is NOT met" in report.overall_verdict(table)  # one id: never two wins


def test_a_seed_missing_from_the_rules_is_left_out_of_the_pairs():
    from nsr_gym.studies import hard_track_report as report

    runs, learned = _synthetic()
    runs = runs[runs["seed"] != 102]
    table = report.learned_table(report.add_normalized(runs), learned)
    assert (table["pairs"] == 4).all() and (table["eval_seeds"] == 2).all()


def test_train_backends_option():
    from nsr_gym.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["study", "hard-track", "--quick"])
    assert args.train_backends == ("analytic", "torch")
    args = parser.parse_args(["study", "hard-track", "--train-backends", "torch"])
    assert args.train_backends == ("torch",)
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "hard-track", "--train-backends", "gpu"])


def test_quick_study_on_one_id_with_both_train_backends(tmp_path):
    from nsr_gym.studies.hard_track import run_study

    out = tmp_path / "hard"
    md = run_study([100, 101], out, quick=True, train_steps=48, progress=False, ids=IDS[:1])
    for name in ("runs.csv", "scores.csv", "learned.csv", "learned_summary.csv",
                 "transfer.csv", "training_curves.csv", "eval_curves.csv",
                 "training_curves.png", "hard_track.md", "manifest.json"):
        assert (out / name).is_file(), name
    assert "## Headroom" in md and "## Learned controllers" in md and "**Verdict:" in md
    table = pd.read_csv(out / "learned_summary.csv")
    assert list(table.columns) == VERDICT_COLUMNS and len(table) == 2 * 4  # algos x pairs
    assert set(table["algo"]) == {"maskable-ppo", "ppo"}
    assert (table["pairs"] == 2 * 2).all()
    learned = pd.read_csv(out / "learned.csv")
    assert set(learned["seed"]) == {100, 101} and set(learned["train_seed"]) == {0, 1}
    assert len(learned) == 2 * 2 * 2 * 2 * 2  # algos x train backends x train seeds x ...
    evals = pd.read_csv(out / "eval_curves.csv")
    assert set(evals["train_backend"]) == {"analytic", "torch"} and len(evals) > 0
    assert set(evals["algo"]) == {"maskable-ppo", "ppo"}
    assert (out / "train" / IDS[0].split("/")[-1][:-3] / "torch" / "ppo" / "seed0").is_dir()
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [100, 101] and meta["units"]["train"]["steps"] == 48
    assert meta["units"]["train"]["backends"] == ["analytic", "torch"]
    # resumable: a second run computes nothing
    run_study([100, 101], out, quick=True, train_steps=48, progress=False, ids=IDS[:1])
    meta = json.loads((out / "manifest.json").read_text())
    assert all(meta["units"][part]["computed"] == 0 for part in ("rules", "train", "learned"))


@pytest.mark.slow
def test_quick_study_writes_its_files(tmp_path):
    from nsr_gym.cli import main

    out = tmp_path / "hard"
    assert main(["study", "hard-track", "--quick", "--seeds", "100,101", "--train-steps", "48",
                 "--no-progress", "--out", str(out)]) == 0
    md = (out / "hard_track.md").read_text()
    assert "### Transfer gap" in md and "**Verdict:" in md
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [100, 101] and meta["units"]["train"]["steps"] == 48
    assert nsr_gym.env_id(HARD_TRACK[0]) in meta["env_ids"]
