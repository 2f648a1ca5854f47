"""Training controllers (agents/train.py) and loading them back as policies (agents/sb3_policy.py).

Tiny budgets on short streams (5 tasks x 2 cycles x 4 steps = 40 steps per episode).
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.agents import make_agent, rollout
from nsr_gym.agents.sb3_policy import flatten_obs, load_sb3_policy, masks_from_obs
from nsr_gym.agents.train import TrainConfig, load_hyperparams, make_env, obs_layout, train

SHORT = dict(phase_length=4, n_cycles=2)
#: A few hundred steps, small rollouts, few epochs: a smoke run, not a learning run.
TINY = dict(n_steps=40, batch_size=40, n_epochs=2)


def _tiny(tmp_path, algo: str, backend: str, **kw) -> TrainConfig:
    return TrainConfig(
        algo=algo,
        backend=backend,
        total_timesteps=160,
        seed=3,
        n_envs=2,
        out=str(tmp_path / f"{algo}-{backend}"),
        env_kwargs=dict(SHORT),
        hyperparams=dict(TINY),
        n_evals=1,
        **kw,
    )


@pytest.mark.parametrize("backend", ["analytic", "torch"])
@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo"])
def test_tiny_training_saves_and_round_trips(tmp_path, algo, backend):
    result = train(_tiny(tmp_path, algo, backend))
    out = result.model_path.parent
    files = ("model.zip", "policy.safetensors", "best_model.zip", "best_policy.safetensors")
    for name in (*files, "config.json"):
        assert (out / name).exists(), name
    # the default training envs are the batched env's, logged per env as Monitor would
    assert sorted(p.name for p in (out / "monitor").glob("*.csv")) == \
        ["rank0.monitor.csv", "rank1.monitor.csv"]
    assert (out / "eval" / "evaluations.npz").exists()
    config = json.loads(result.config_path.read_text())
    assert config["settings"]["algo"] == algo and config["env_kwargs"]["backend"] == backend
    assert config["settings"]["vec_env"] == "batched"
    assert config["num_timesteps"] >= 160 and config["hyperparams"]["n_steps"] == 40
    assert config["env_id"] == "nsr_gym:nsr_gym/CyclicSplitDigits-v0"

    # load back (no pickle) and run through the one evaluation loop like any rule
    assert set(config["files"]) == set(files)
    best = load_sb3_policy(out / "best_model.zip")  # its pickle-free weights, checksum-checked
    assert best.weights_sha256 == config["files"]["best_policy.safetensors"]
    assert best.name == f"{algo}:{out.name}-best_model"
    policy = make_agent(f"{algo}:{out}")
    assert policy.name == f"{algo}:{out.name}" and policy.memory_class == "learned"
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend=backend, **SHORT)
    log = rollout(env, policy, seed=11)
    assert len(log) == 40 and (log["agent"] == policy.name).all()
    if algo == "maskable-ppo":  # masks derived from the observation: never an empty slot
        assert log["invalid_load"].sum() == 0


@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo"])
def test_loaded_policy_acts_like_the_sb3_model(tmp_path, algo):
    """The pickle-free loader and SB3's own ``load`` give the same deterministic actions."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    result = train(
        _tiny(
            tmp_path,
            algo,
            "analytic",
        )
    )
    ours = load_sb3_policy(result.model_path)
    theirs = (MaskablePPO if algo == "maskable-ppo" else PPO).load(result.model_path, device="cpu")
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", **SHORT)
    flat = gym.wrappers.FlattenObservation(env)
    obs, _ = env.reset(seed=5)
    for _ in range(40):
        kw = {"action_masks": env.unwrapped.action_masks()} if algo == "maskable-ppo" else {}
        expected, _ = theirs.predict(flat.observation(obs), deterministic=True, **kw)
        action, _ = ours.predict(obs)
        assert int(action) == int(expected)
        obs, *_ = env.step(int(action))


def test_flatten_and_masks_match_the_wrappers():
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", **SHORT)
    flat = gym.wrappers.FlattenObservation(env)
    layout = obs_layout(env.observation_space)
    obs, _ = env.reset(seed=0)
    for action in [0, 1, 0, 0, 2, 0, 3, 0]:
        np.testing.assert_array_equal(flatten_obs(obs, layout), flat.observation(obs))
        np.testing.assert_array_equal(masks_from_obs(obs), env.unwrapped.action_masks())
        obs, *_ = env.step(action)
    batched = {k: np.stack([v, v]) for k, v in obs.items()}
    assert flatten_obs(batched, layout).shape == (2, flat.observation_space.shape[0])


def test_action_masks_reach_through_the_wrappers():
    from sb3_contrib.common.maskable.utils import get_action_masks
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv(
        [make_env("nsr_gym/CyclicSplitDigits-v0", r, "analytic", SHORT) for r in range(2)]
    )
    venv.reset()
    masks = get_action_masks(venv)
    assert masks.shape == (2, 7) and masks[:, :2].all() and not masks[:, 2:].any()
    venv.close()


@pytest.mark.slow
def test_subproc_vec_env_with_spawned_workers(tmp_path):
    """Two ``spawn`` workers import nsr_gym from the env id and answer ``action_masks``."""
    result = train(
        _tiny(tmp_path, "maskable-ppo", "analytic", vec_env="subproc", start_method="spawn")
    )
    config = json.loads(result.config_path.read_text())
    assert config["settings"]["vec_env"] == "subproc" and config["num_timesteps"] >= 160
    assert len(list((result.model_path.parent / "monitor").glob("rank*.monitor.csv"))) == 2


@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo"])
def test_batched_and_dummy_envs_train_the_same_model(tmp_path, algo):
    """The batched env in SB3VecEnv gives SB3 what a DummyVecEnv of single envs gives it, so
    the same seed trains the same weights (analytic backend: exactly)."""
    import torch
    from safetensors.torch import load_file

    weights = {}
    for vec_env in ("batched", "dummy"):
        cfg = _tiny(tmp_path / vec_env, algo, "analytic", vec_env=vec_env)
        weights[vec_env] = load_file(train(cfg).model_path.parent / "policy.safetensors")
    assert weights["batched"].keys() == weights["dummy"].keys()
    for name, value in weights["batched"].items():
        assert torch.equal(value, weights["dummy"][name]), name


def test_hyperparams_default_then_env_id_then_overrides():
    hp = load_hyperparams(
        "maskable-ppo",
        "nsr_gym:nsr_gym/CyclicSplitDigits-v0",
        {"n_epochs": 3, "policy_kwargs": {"net_arch": [8]}},
    )
    assert hp["n_epochs"] == 3 and hp["policy_kwargs"]["net_arch"] == [8]
    assert hp["policy_kwargs"]["activation_fn"] == "tanh"  # merged, not replaced
    assert "learning_rate" in hp and "gamma" in hp
    with pytest.raises(ValueError, match="unknown algo"):
        load_hyperparams("dqn", "x")
    with pytest.raises(ValueError, match="run settings"):
        load_hyperparams("ppo", "nsr_gym/CyclicSplitDigits-v0", {"n_envs": 8})


def test_hyperparams_are_in_rl_zoo3_format():
    """Every entry has rl-zoo3's required keys; an id without one falls back to ``default``."""
    from importlib import resources

    import yaml

    from nsr_gym.agents.train import ZOO_KEYS, parse_policy_kwargs

    for algo in ("ppo", "maskable_ppo"):
        text = resources.files("nsr_gym.agents").joinpath("hyperparams", f"{algo}.yml")
        table = yaml.safe_load(text.read_text())
        for env, entry in table.items():
            assert {"n_timesteps", "policy", "env_wrapper"} <= set(entry), (algo, env)
            assert entry["policy"] == ZOO_KEYS["policy"]
            assert entry["policy_kwargs"] == "dict(net_arch=[64, 64], activation_fn=nn.Tanh)"
    # an id without an entry gets `default`, as rl-zoo3 gives it
    assert load_hyperparams("ppo", "nsr_gym/FiveDomains-v0") == \
        load_hyperparams("ppo", "nsr_gym/CyclicSplitDigits-v0")
    nested = parse_policy_kwargs("dict(net_arch=dict(pi=[8], vf=[4]), activation_fn=nn.ReLU, "
                                 "ortho_init=False)")
    assert nested == {"net_arch": {"pi": [8], "vf": [4]}, "activation_fn": "relu",
                      "ortho_init": False}
    assert parse_policy_kwargs({"activation_fn": "nn.ELU"}) == {"activation_fn": "elu"}
    for bad in ("__import__('os').system('true')", "dict(activation_fn=nn.Softmax)", "[1]"):
        with pytest.raises(ValueError, match="policy_kwargs|activation_fn"):
            parse_policy_kwargs(bad)


def test_make_agent_rejects_what_it_cannot_build(tmp_path):
    assert make_agent("similarity").name == "similarity"
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("nope")
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("dqn:somewhere")
    with pytest.raises(ValueError, match="not found"):
        make_agent(f"ppo:{tmp_path / 'missing'}")


def test_make_agent_passes_settings_to_rule_agents(tmp_path):
    assert make_agent("oracle", first_visit="keep").first_visit == "keep"
    assert make_agent("similarity", threshold=0.7).threshold == 0.7
    assert make_agent("fixed-slot", slot=2).name == "fixed-slot-2"
    with pytest.raises(ValueError, match="takes no settings"):
        make_agent(f"ppo:{tmp_path / 'missing'}", threshold=0.7)


def test_settings_train_cannot_run_are_refused_before_anything_is_built():
    from nsr_gym.agents.train import check_settings
    from nsr_gym.studies.train import check_train_config

    check_settings(TrainConfig(n_envs=4, shards=2))
    for bad in (TrainConfig(n_envs=2, shards=3), TrainConfig(n_envs=2, shards=0),
                TrainConfig(n_envs=2, shards=2, vec_env="dummy")):
        with pytest.raises(ValueError, match="shards must be in"):
            check_train_config(bad)  # what the CLI calls before training
    with pytest.raises(ValueError, match="unknown vec_env"):
        check_settings(TrainConfig(vec_env="ray"))
