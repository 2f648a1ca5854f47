"""The sharded batched env equals the batched env: the same envs, stepped in several processes.

Env ``i`` of :class:`~nsr_gym.envs.sharded.ShardedBatchedEnv` is env ``i`` of one
:class:`~nsr_gym.envs.batched.BatchedAllocationEnv` (its seed, its actions), so every output
must be equal, bit for bit, through episode ends, every autoreset mode, partial resets and
uneven shards; its errors are the batched env's, and a failed worker closes it cleanly.
"""

from __future__ import annotations

import os
import signal

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from nsr_gym.envs import env_id
from nsr_gym.envs.sharded import ShardedBatchedEnv, ShardWorkerError, _merge_info, shard_sizes

#: 5 tasks x 3 steps: an episode ends every 15 steps.
SHORT = dict(phase_length=3, n_cycles=1)
ID = env_id("CyclicSplitDigits")


def _same(a, b, where: str = "") -> None:
    """Equal outputs: the same keys, dtypes and values (NaN equal to NaN)."""
    if isinstance(b, (tuple, list)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{k}]")
    elif isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in b:
            _same(a[k], b[k], f"{where}/{k}")
    else:
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape, (where, x.dtype, y.dtype)
        if y.dtype == object:
            assert repr(x.tolist()) == repr(y.tolist()), where
        else:
            assert np.array_equal(x, y, equal_nan=y.dtype.kind in "fc"), where


def _sample(masks: np.ndarray, space: gym.Space, rng: np.random.Generator) -> np.ndarray:
    """A random valid action per env (its mask; both parts of a ``MultiDiscrete`` one)."""
    if isinstance(space, gym.spaces.MultiDiscrete):
        n = int(space.nvec[0])
        return np.array([[rng.choice(np.flatnonzero(m[:n])), rng.choice(np.flatnonzero(m[n:]))]
                         for m in masks])
    return np.array([rng.choice(np.flatnonzero(m)) for m in masks])


def _run_both(n: int, shards: int, steps: int, context: str | None = None,
              autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP, **kwargs) -> None:
    """Step a sharded and an unsharded batch with the same random valid actions."""
    kw = {**SHORT, **kwargs}
    sharded = gym.make_vec(ID, num_envs=n, shards=shards, context=context,
                           autoreset_mode=autoreset_mode, **kw)
    plain = gym.make_vec(ID, num_envs=n, autoreset_mode=autoreset_mode, **kw)
    try:
        assert isinstance(sharded, ShardedBatchedEnv)
        assert sharded.sizes == shard_sizes(n, shards)
        assert sharded.observation_space == plain.observation_space
        assert sharded.action_space == plain.action_space
        _same(sharded.reset(seed=11), plain.reset(seed=11), "reset")
        rng = np.random.default_rng(0)
        for t in range(steps):
            masks = plain.action_masks()
            _same(sharded.action_masks(), masks, f"masks {t}")
            actions = _sample(masks, plain.single_action_space, rng)
            if autoreset_mode == AutoresetMode.DISABLED and t and t % 15 == 0:
                _same(sharded.reset(seed=t), plain.reset(seed=t), f"reset {t}")
            _same(sharded.step(actions), plain.step(actions), f"step {t}")
    finally:
        sharded.close()
        plain.close()


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_sharded_equals_batched_through_episode_ends(mode: AutoresetMode) -> None:
    _run_both(5, 2, 32, autoreset_mode=mode)  # uneven shards (3 + 2), two episode ends


def test_sharded_equals_batched_in_spawned_workers_and_three_shards() -> None:
    _run_both(4, 3, 16, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP)


def test_sharded_equals_batched_analytic_and_agent_retention() -> None:
    _run_both(4, 2, 20, backend="analytic")
    _run_both(3, 2, 20, retention="agent", reserve="owner", capacity=3)


def test_partial_reset_attributes_and_calls() -> None:
    sharded = gym.make_vec(ID, num_envs=4, shards=2, **SHORT)
    plain = gym.make_vec(ID, num_envs=4, **SHORT)
    try:
        _same(sharded.reset(seed=3), plain.reset(seed=3))
        for _ in range(2):
            _same(sharded.step(np.ones(4, int)), plain.step(np.ones(4, int)))
        mask = np.array([False, False, True, False])  # shard 0 resets nothing, shard 1 one env
        _same(sharded.reset(seed=[1, 2, 3, 4], options={"reset_mask": mask}),
              plain.reset(seed=[1, 2, 3, 4], options={"reset_mask": mask}), "partial reset")
        _same(sharded.step(np.zeros(4, int)), plain.step(np.zeros(4, int)), "after partial")
        assert sharded.get_attr("_t") == plain.get_attr("_t")
        assert sharded.call("oracle_info") == plain.call("oracle_info")
        sharded.set_attr("lambda_switch", [0.0, 0.1, 0.2, 0.3])
        plain.set_attr("lambda_switch", [0.0, 0.1, 0.2, 0.3])
        assert sharded.get_attr("lambda_switch") == (0.0, 0.1, 0.2, 0.3)
        _same(sharded.step(np.ones(4, int)), plain.step(np.ones(4, int)), "after set_attr")
        cpu = sharded.worker_cpu_seconds()
        assert len(cpu) == 1 and cpu[0] > 0.0
    finally:
        sharded.close()
        plain.close()


def test_bad_input_raises_before_any_shard_steps() -> None:
    with pytest.raises(ValueError, match="shards must be an int >= 1"):
        shard_sizes(4, 0)
    with pytest.raises(ValueError, match="more than num_envs"):
        gym.make_vec(ID, num_envs=2, shards=3, backend="analytic")
    with pytest.raises(ValueError, match="autoreset_mode must be one of"):
        ShardedBatchedEnv(2, shards=2, autoreset_mode="sometimes", backend="analytic")
    assert shard_sizes(7, 3) == [3, 2, 2]
    env = gym.make_vec(ID, num_envs=3, shards=2, backend="analytic", **SHORT)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="env 2: action 99 is out of range"):
            env.step(np.array([0, 0, 99]))
        assert env.get_attr("_t") == (0, 0, 0)  # no shard moved
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            env.step(np.zeros(2, int))
        # an error raised by a method in a worker comes back as itself, and the env goes on
        with pytest.raises(AttributeError, match="no_such_method"):
            env.call("no_such_method")
        env.step(np.zeros(3, int))
        assert env.get_attr("_t") == (1, 1, 1)
    finally:
        env.close()


def test_a_worker_that_dies_closes_the_env() -> None:
    env = gym.make_vec(ID, num_envs=2, shards=2, backend="analytic", **SHORT)
    env.reset(seed=0)
    os.kill(env._procs[0].pid, signal.SIGKILL)
    env._procs[0].join(10)
    with pytest.raises(ShardWorkerError, match="exited"):
        env.step(np.zeros(2, int))
    with pytest.raises(gym.error.ClosedEnvironmentError, match="a worker failed"):
        env.step(np.zeros(2, int))
    env.close()
    assert env.closed


def test_merge_info_fills_what_a_shard_lacks() -> None:
    parts = [{"a": np.array([1, 2]), "_a": np.array([True, True])},
             {"a": np.array([3]), "_a": np.array([True]),
              "final_obs": {"x": np.array([[0.5]])}, "_final_obs": np.array([True]),
              "final_info": np.array([{"k": 1}], dtype=object),
              "_final_info": np.array([True])}]
    out = _merge_info(parts, [2, 1])
    assert out["a"].tolist() == [1, 2, 3] and out["_a"].all()
    assert out["final_obs"]["x"].tolist() == [[0.0], [0.0], [0.5]]
    assert out["_final_obs"].tolist() == [False, False, True]
    assert out["final_info"].tolist() == [None, None, {"k": 1}]
    assert out["_final_info"].tolist() == [False, False, True]
