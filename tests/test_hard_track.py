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
    assert len(HARD_TRACK) == len(set(HARD_TRACK)) == 3
    for name in HARD_TRACK:
        assert name in BENCHMARKS and env_id(name) in gym.registry
        assert gym.spec(env_id(name)).entry_point.startswith("nsr_gym.envs")
    trap = gym.make(env_id("LRUTrapSplitDigits"), backend="analytic").unwrapped
    assert (trap.capacity, trap.n_tasks, trap.schedule_kind, trap.retention) == (
        3, 5, "cyclic", "agent")
    skew = gym.make(env_id("SkewedRecurrencePermutedDigits"), backend="analytic").unwrapped
    assert skew.capacity < skew.n_tasks and skew.schedule_kind.startswith("zipf")


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


@pytest.mark.slow
def test_quick_study_writes_its_files(tmp_path):
    from nsr_gym.cli import main

    out = tmp_path / "hard"
    assert main(["study", "hard-track", "--quick", "--seeds", "100,101", "--train-steps", "48",
                 "--no-progress", "--out", str(out)]) == 0
    for name in ("runs.csv", "scores.csv", "learned.csv", "learned_summary.csv",
                 "training_curves.csv", "training_curves.png", "hard_track.md",
                 "manifest.json"):
        assert (out / name).is_file(), name
    md = (out / "hard_track.md").read_text()
    assert "## Headroom" in md and "## Learned controllers" in md
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["seeds"] == [100, 101] and meta["units"]["train"]["steps"] == 48
    assert nsr_gym.env_id(HARD_TRACK[0]) in meta["env_ids"]
