"""Every registered id: both checkers, determinism, errors, masks, vectorisation, pickling."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import nsr_gym
from nsr_gym import FRESH, KEEP, LOAD_OFFSET

IDS = [nsr_gym.env_id(name) for name in nsr_gym.BENCHMARKS]
BACKENDS = ["torch", "analytic"]
SMALL = dict(phase_length=4, n_cycles=2)
#: Per-id overrides that keep the smoke tests small (the long-horizon id has 1000 tasks).
SMOKE = {nsr_gym.env_id("LongHorizonPermutedDigits"): dict(n_tasks=12)}


def make(env_id: str, backend: str, **kw) -> gym.Env:
    return gym.make(env_id, backend=backend, **{**SMALL, **SMOKE.get(env_id, {}), **kw})


def test_registration_is_idempotent_and_module_qualified_ids_work():
    nsr_gym.register_envs()
    nsr_gym.register_envs()
    for env_id in IDS:
        assert env_id in gym.registry
    env = gym.make("nsr_gym:nsr_gym/CyclicSplitDigits-v0", backend="analytic")
    assert isinstance(env.unwrapped, nsr_gym.AllocationEnv)
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_checker(env_id, backend):
    env = make(env_id, backend)
    gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", IDS)
def test_sb3_checker(env_id, backend):
    env = make(env_id, backend)
    sb3_check_env(env.unwrapped, warn=True)
    env.close()


def _random_valid_action(env, rng: np.random.Generator) -> int | np.ndarray:
    """A uniformly drawn unmasked action: an int for ``Discrete``, one draw per part (the
    sb3-contrib flat-mask convention) for the ``MultiDiscrete`` of ``retention="agent"``."""
    mask = env.unwrapped.action_masks()
    space = env.unwrapped.action_space
    if not isinstance(space, gym.spaces.MultiDiscrete):
        return int(rng.choice(np.flatnonzero(mask)))
    parts = np.split(mask, np.cumsum(space.nvec)[:-1])
    return np.array([rng.choice(np.flatnonzero(part)) for part in parts], dtype=np.int64)


def _trajectory(env_id: str, backend: str, seed: int) -> list:
    env = make(env_id, backend)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    out = []
    done = False
    while not done:
        action = _random_valid_action(env, rng)
        obs, reward, term, trunc, info = env.step(action)
        out.append((np.asarray(action).tolist(), reward, info["accuracy"], info.get("task_id"),
                    obs["similarity"].tolist()))
        done = term or trunc
    env.close()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id, backend):
    assert _trajectory(env_id, backend, 7) == _trajectory(env_id, backend, 7)


def test_different_seeds_differ():
    assert _trajectory(IDS[1], "torch", 1) != _trajectory(IDS[1], "torch", 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_episode_structure_and_info(backend):
    env = make(IDS[0], backend, privileged_info=True)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"similarity", "occupied", "age", "usage", "active", "last_accuracy",
                        "task_shift"}
    assert all(v.dtype == np.float32 for v in obs.values())
    assert "task_id" not in obs and info["next_task_id"] == 0
    n = 0
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(KEEP)
        assert isinstance(reward, float) and isinstance(terminated, bool) and truncated is False
        # every value a number with a dtype (TorchRL batches infos by dtype)
        assert all(isinstance(v, (np.integer, np.floating, np.ndarray)) for v in info.values())
        n += 1
    u = env.unwrapped
    assert n == u.n_tasks * u.n_cycles * u.phase_length
    assert info["bank_entries"] == u.n_tasks and info["bank_bytes"] > 0
    with pytest.raises(gym.error.ResetNeeded):
        u.step(KEEP)
    env.close()


def test_step_before_reset_raises():
    env = make(IDS[0], "analytic").unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step(KEEP)


@pytest.mark.parametrize("bad", [-1, 7, 100, 1.5, float("nan"), "1", [1, 2], None, True])
def test_invalid_actions_get_clear_errors(bad):
    env = make(IDS[0], "analytic")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.unwrapped.step(bad)


def test_loading_an_empty_slot_is_a_flagged_noop():
    env = make(IDS[0], "torch")
    env.reset(seed=0)
    assert env.unwrapped.action_masks().tolist() == [True, True] + [False] * 5
    _, reward, _, _, info = env.step(LOAD_OFFSET + 3)
    assert info["invalid_load"] == 1 and info["switched"] == 0
    _, _, _, _, info = env.step(np.int64(FRESH))
    assert info["invalid_load"] == 0 and info["switched"] == 1
    env.close()


def test_phase_end_reserves_in_place_for_returning_task_and_copies_warm_starts():
    env = make(IDS[0], "torch", phase_length=3, n_cycles=2)
    u = env.unwrapped
    env.reset(seed=0)
    for _ in range(3):  # task 0
        env.step(KEEP)
    assert u.bank.slot_of_owner(0) == 0 and u.action_masks()[LOAD_OFFSET]
    # task 1 warm-starts from task 0's entry: task 0's entry must not be overwritten
    before = {k: v.clone() for k, v in u.bank.get(0).tensors.items()}
    env.step(LOAD_OFFSET + 0)
    env.step(KEEP)
    env.step(KEEP)
    assert u.bank.slot_of_owner(1) == 1
    for k, v in u.bank.get(0).tensors.items():
        assert (v == before[k]).all()
    for _ in range(9):  # tasks 2, 3, 4
        env.step(KEEP)
    assert len(u.bank) == 5
    # revisit task 0 loading its entry: stored back in place, no new entry
    _, _, _, _, info = env.step(LOAD_OFFSET + 0)
    assert info["is_revisit"] == 1
    env.step(KEEP)
    _, _, _, _, info = env.step(KEEP)
    assert info["phase_end"] == 1 and len(u.bank) == 5 and u.bank.slot_of_owner(0) == 0
    env.close()


def test_capacity_below_tasks_evicts():
    env = make(IDS[0], "analytic", capacity=2, eviction="lru")
    env.reset(seed=0)
    evicted = []
    done = False
    while not done:
        _, _, done, _, info = env.step(KEEP)
        if info["evicted_task"] >= 0:
            evicted.append(info["evicted_task"])
    assert evicted[:3] == [0, 1, 2] and len(env.unwrapped.bank) == 2


def test_invalid_configs_fail_before_work():
    for kwargs, match in [
        (dict(capacity=0), "capacity"),
        (dict(phase_length=0), "phase_length"),
        (dict(lambda_switch=-1.0), "lambda_switch"),
        (dict(backend="jax"), "backend"),
        (dict(eviction="random"), "eviction"),
        (dict(schedule="zigzag"), "schedule"),
        (dict(learner={"no_such_option": 1}), "no_such_option"),
    ]:
        with pytest.raises(ValueError, match=match):
            gym.make(IDS[0], **kwargs)


def test_sync_vector_env_and_pickle():
    envs = gym.make_vec(IDS[0], num_envs=2, vectorization_mode="sync", backend="analytic", **SMALL)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs["similarity"].shape == (2, 5)
    obs, rew, term, trunc, _ = envs.step(np.array([KEEP, FRESH]))
    assert rew.shape == (2,)
    envs.close()
    env = make(IDS[0], "torch")
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    a = env.unwrapped.step(KEEP)
    b = clone.step(KEEP)
    assert a[1] == b[1]


def test_render_ansi():
    env = make(IDS[0], "analytic", render_mode="ansi")
    env.reset(seed=0)
    env.step(KEEP)
    assert "task=0" in env.render()


def test_variant_keeps_its_learner_options_when_the_user_adds_some():
    env = gym.make("nsr_gym/CyclicSplitDigitsViT-v0", learner={"lr": 1e-2, "vit_depth": 2})
    cfg = env.unwrapped.learner.config
    assert (cfg.backbone, cfg.lr, cfg.vit_depth) == ("vit", 1e-2, 2)
    env = gym.make("nsr_gym:nsr_gym/CyclicSplitDigitsViT-v0", learner={"backbone": "mlp"})
    assert env.unwrapped.learner.config.backbone == "mlp"  # the user's word wins


def test_reset_empties_the_env_bank_and_a_loaded_bank_keeps_its_policy_one_episode(tmp_path):
    env = make(IDS[0], "analytic", eviction="fifo").unwrapped
    bank = env.bank
    env.reset(seed=0)
    assert env.bank is bank and len(bank) == 0  # reset empties the bank __init__ built
    for _ in range(env.phase_length):
        env.step(KEEP)
    assert len(bank) == 1
    env.reset(seed=1)
    assert env.bank is bank and len(bank) == 0 and bank.view.entries == 0
    saver = make(IDS[0], "analytic", eviction="lru").unwrapped
    saver.reset(seed=0)
    for _ in range(saver.phase_length):
        saver.step(KEEP)
    saver.save_bank(tmp_path / "b")
    env.reset(seed=2, options={"bank": tmp_path / "b"})
    assert env.bank.eviction == "lru" and len(env.bank) == 1  # as saved, for this episode
    env.reset(seed=3)
    assert env.bank.eviction == "fifo" and len(env.bank) == 0  # the env's own again


def test_info_keys_and_their_order():
    from nsr_gym.envs.allocation import StepInfo

    base = ["next_is_phase_start", "bank_entries", "bank_bytes", "action_mask"]
    for privileged, oracle in ((False, []), (True, ["next_task_id", "next_task_slot"])):
        env = make(IDS[0], "analytic", privileged_info=privileged)
        _, info = env.reset(seed=0)  # reset's info has step's keys (clients read a fixed set)
        assert list(info) == base + oracle + list(StepInfo._fields)
        assert info["task_id"] == -1 and np.isnan(info["loss"])
        _, _, _, _, info = env.step(KEEP)
        assert list(info) == base + oracle + list(StepInfo._fields)
    assert StepInfo._fields == (
        "task_id", "phase", "step_in_phase", "visit", "is_revisit", "switched", "invalid_load",
        "accuracy", "zero_shot_accuracy", "loss", "skipped_updates", "phase_end",
        "evicted_task", "truncation_gap", "reserve_skipped", "protected_tasks")


def test_privileged_info_is_opt_in_and_oracle_info_is_its_channel():
    """The oracle's answer (the coming step's task and its slot) is not in the default info, so a
    client that feeds info to its agent leaks nothing; ``privileged_info=True`` and
    ``oracle_info()`` give the same values."""
    from gymnasium.error import ResetNeeded

    from nsr_gym.agents import Oracle, rollout

    plain = make(IDS[0], "analytic")
    with pytest.raises(ResetNeeded, match="reset"):
        plain.unwrapped.oracle_info()
    told = make(IDS[0], "analytic", privileged_info=True)
    _, info = plain.reset(seed=4)
    _, told_info = told.reset(seed=4)
    assert "next_task_id" not in info and "next_task_slot" not in info
    for _ in range(40):
        truth = plain.unwrapped.oracle_info()
        assert truth == {k: told_info[k] for k in truth}
        action = 2 + truth["next_task_slot"] if truth["next_task_slot"] >= 0 else 0
        _, _, _, _, info = plain.step(action)
        _, _, _, _, told_info = told.step(action)
        assert "next_task_id" not in info
    # the oracle reads the channel when bound (rollout binds it), and refuses to guess otherwise
    bound = rollout(plain, Oracle(), seed=2)
    informed = rollout(told, Oracle(), seed=2)
    assert bound["reward"].tolist() == informed["reward"].tolist()
    oracle = Oracle()
    _, info = plain.reset(seed=0)
    oracle.observe(info)
    with pytest.raises(ValueError, match="privileged_info=True"):
        oracle.predict(plain.observation_space.sample())
    with pytest.raises(ValueError, match="privileged_info"):
        make(IDS[0], "analytic", privileged_info="yes")
