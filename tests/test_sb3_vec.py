"""SB3's VecEnv over Gymnasium vector envs (agents/sb3_vec.py): the same obs, rewards, dones and
infos as a ``DummyVecEnv`` of ``Monitor(FlattenObservation(gym.make(id)))`` under the same
actions and seeds; masks; PPO and MaskablePPO train on it.

Short streams (5 tasks x 2 cycles x 4 steps = 40 steps per episode), analytic backend unless a
test says otherwise.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.agents.sb3_vec import SB3VecEnv
from nsr_gym.agents.train import make_env

ENV_ID = "nsr_gym/CyclicSplitDigits-v0"
SHORT = dict(phase_length=4, n_cycles=2)
SAME_STEP = AutoresetMode.SAME_STEP


def _sync(n: int, backend: str = "analytic", **kw) -> gym.vector.SyncVectorEnv:
    return gym.make_vec(ENV_ID, n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": SAME_STEP}, backend=backend,
                        **{**SHORT, **kw})


def _dummy(n: int, backend: str = "analytic", **kw) -> DummyVecEnv:
    return DummyVecEnv([make_env(ENV_ID, r, backend, {**SHORT, **kw}) for r in range(n)])


def _same_info(ours: dict, theirs: dict) -> None:
    """Equal keys and values; Monitor's ``episode`` is compared through VecMonitor's."""
    theirs = {k: v for k, v in theirs.items() if k != "episode"}
    ours = {k: v for k, v in ours.items() if k != "episode"}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


@pytest.mark.parametrize("retention", ["env", "agent"])
def test_equals_a_dummy_vec_env_under_the_same_actions_and_seeds(retention):
    kw = {} if retention == "env" else dict(capacity=3, retention="agent")
    n, seed = 3, 7
    ours = VecCheckNan(VecMonitor(SB3VecEnv(_sync(n, **kw))), raise_exception=True)
    theirs = _dummy(n, **kw)
    assert ours.observation_space == theirs.observation_space
    assert ours.action_space == theirs.action_space
    ours.seed(seed)
    theirs.seed(seed)
    np.testing.assert_array_equal(ours.reset(), theirs.reset())
    for i in range(n):
        _same_info(ours.unwrapped.reset_infos[i], theirs.reset_infos[i])
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(90):  # two episodes and then some, with envs ending in the same step
        actions = np.stack([theirs.action_space.sample() for _ in range(n)]) \
            if retention == "agent" else rng.integers(0, theirs.action_space.n, size=n)
        masks = np.stack(theirs.env_method("action_masks"))
        np.testing.assert_array_equal(np.stack(ours.env_method("action_masks")), masks)
        obs, rewards, dones, infos = ours.step(actions)
        t_obs, t_rewards, t_dones, t_infos = theirs.step(actions)
        np.testing.assert_array_equal(obs, t_obs)
        assert obs.dtype == t_obs.dtype == np.float32
        np.testing.assert_array_equal(rewards, t_rewards)
        assert rewards.dtype == t_rewards.dtype
        np.testing.assert_array_equal(dones, t_dones)
        for i in range(n):
            _same_info(infos[i], t_infos[i])
        for i in np.flatnonzero(dones):
            episodes += 1
            assert infos[i]["episode"]["r"] == pytest.approx(t_infos[i]["episode"]["r"], 1e-5)
            assert infos[i]["episode"]["l"] == t_infos[i]["episode"]["l"] == 40
            assert infos[i]["TimeLimit.truncated"] is False
            _same_info(ours.unwrapped.reset_infos[i], theirs.reset_infos[i])
    assert episodes == 2 * n
    ours.close()
    theirs.close()


def test_masks_reach_sb3_contrib_and_attributes_go_through():
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    venv = SB3VecEnv(_sync(2))
    venv.reset()
    assert is_masking_supported(venv)
    masks = get_action_masks(venv)
    assert masks.shape == (2, 7) and masks[:, :2].all() and not masks[:, 2:].any()
    assert venv.env_method("action_masks", indices=1)[0].shape == (7,)
    assert venv.get_attr("phase_length") == [4, 4]
    venv.set_attr("lambda_switch", 0.5, indices=[1])
    assert venv.get_attr("lambda_switch") == [0.05, 0.5]
    assert venv.env_is_wrapped(Monitor) == [False, False]
    venv.close()


def test_flatten_false_keeps_the_dict_observation():
    venv = SB3VecEnv(_sync(2), flatten=False)
    obs = venv.reset()
    assert isinstance(venv.observation_space, gym.spaces.Dict)
    assert obs["similarity"].shape == (2, 5) and obs["active"].shape == (2, 6)
    venv.close()


def test_refuses_a_vector_env_that_resets_on_the_next_step():
    venv = gym.make_vec(ENV_ID, 2, vectorization_mode="sync", backend="analytic", **SHORT)
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv(venv)
    venv.close()


@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo"])
def test_ppo_and_maskable_ppo_train_on_it(algo):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    venv = VecMonitor(SB3VecEnv(_sync(2)))
    cls = MaskablePPO if algo == "maskable-ppo" else PPO
    model = cls("MlpPolicy", venv, n_steps=40, batch_size=40, n_epochs=1, seed=0, device="cpu")
    model.learn(240)
    assert model.num_timesteps >= 240
    assert len(model.ep_info_buffer) >= 4  # episodes of 40 steps finished and were logged
    venv.close()


def test_the_batched_vector_entry_point_trains_with_maskable_ppo():
    """``gym.make_vec(id, N)``'s registered batched env on the torch backend, through SB3."""
    from sb3_contrib import MaskablePPO

    venv = gym.make_vec(ENV_ID, 2, vectorization_mode="vector_entry_point",
                        autoreset_mode=SAME_STEP, **SHORT)
    sb3 = VecMonitor(SB3VecEnv(venv))
    model = MaskablePPO("MlpPolicy", sb3, n_steps=40, batch_size=40, n_epochs=1, seed=0,
                        device="cpu")
    model.learn(80)
    assert model.num_timesteps >= 80 and len(model.ep_info_buffer) >= 2
    sb3.close()


def test_the_sharded_batched_env_trains_with_maskable_ppo_through_train():
    """``nsr-gym train``'s path with ``shards=2``: the batched env over two processes, masks
    through ``env_method("action_masks")``, SB3's MaskablePPO on top."""
    from nsr_gym.agents.train import TrainConfig, make_vec_env

    cfg = TrainConfig(env_id=ENV_ID, backend="torch", n_envs=2, shards=2, env_kwargs=SHORT)
    sb3 = make_vec_env(cfg, cfg.n_envs)
    try:
        from sb3_contrib import MaskablePPO

        masks = sb3.env_method("action_masks")
        assert len(masks) == 2 and all(m[0] and m[1] for m in masks)  # keep, fresh always valid
        model = MaskablePPO("MlpPolicy", sb3, n_steps=40, batch_size=40, n_epochs=1, seed=0,
                            device="cpu")
        model.learn(80)
        assert model.num_timesteps >= 80 and len(model.ep_info_buffer) >= 2
    finally:
        sb3.close()
