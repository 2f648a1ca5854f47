"""The batched vector env equals N single envs, on every registered offline id and both backends.

Env ``i`` of :class:`~nsr_gym.envs.batched.BatchedAllocationEnv` reset with seed ``s_i`` must
produce the observations, rewards, terminations and infos of ``gym.make(id)`` reset with ``s_i``
under the same actions. On CPU the batched torch path performs the single path's operations in
its order, so the comparison is exact here (``RTOL`` states the float32-rounding allowance that
other hardware may need).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import nsr_gym
from nsr_gym.bank import truncate_lora, truncate_lora_batch
from nsr_gym.envs import BENCHMARKS, env_id
from nsr_gym.envs.batched import BatchedAllocationEnv, make_batched_env

#: Relative allowance for float32 rounding between batched and single arithmetic.
RTOL = 1e-5
#: Shorter episodes of every benchmark (the dynamics are the same per step), so that every id
#: runs both ways within seconds; LongHorizon keeps 20 of its 1000 tasks.
SHORT = dict(phase_length=4, n_cycles=2)
OFFLINE = sorted(BENCHMARKS)


def _short(name: str) -> dict:
    kw = dict(SHORT)
    if BENCHMARKS[name].get("n_tasks", 5) > 20:
        kw["n_tasks"] = 20
    return kw


def _assert_same(single: list, batched: tuple, i: int, where: str) -> None:
    """Env ``i``'s part of a batched step (or reset) equals a single env's."""
    s_obs, *s_rest = single
    b_obs, *b_rest = batched
    for k, v in s_obs.items():
        np.testing.assert_allclose(b_obs[k][i], v, rtol=RTOL, atol=1e-7, err_msg=f"{where} {k}")
    s_info, b_info = s_rest[-1], b_rest[-1]
    assert set(b_info) == set(s_info) | {f"_{k}" for k in s_info}, where
    for k, v in s_info.items():
        np.testing.assert_allclose(np.asarray(b_info[k][i], float), np.asarray(v, float),
                                   rtol=RTOL, atol=1e-7, err_msg=f"{where} info {k}")
        assert b_info[k].dtype == np.asarray(v).dtype, (where, k)
        assert b_info[f"_{k}"][i]
    for s_val, b_val in zip(s_rest[:-1], b_rest[:-1], strict=True):
        np.testing.assert_allclose(b_val[i], s_val, rtol=RTOL, atol=1e-7, err_msg=where)


def _run_pair(name: str, n: int, backend: str, seed: int = 0, **kwargs) -> int:
    """Step a batch of ``n`` and ``n`` single envs with the same random actions to the end of
    an episode; return the steps compared."""
    kw = {"backend": backend, **kwargs}
    batch = gym.make_vec(env_id(name), num_envs=n, vectorization_mode="vector_entry_point", **kw)
    singles = [gym.make(env_id(name), **kw) for _ in range(n)]
    try:
        seeds = [seed + 7 * i for i in range(n)]
        out = batch.reset(seed=seeds)
        for i, env in enumerate(singles):
            _assert_same(list(env.reset(seed=seeds[i])), out, i, f"{name} reset")
        rng = np.random.default_rng(seed)
        steps, done = 0, False
        while not done:
            space = singles[0].action_space
            actions = np.stack([space.sample() for _ in range(n)]) if rng.random() < 0.5 else \
                np.stack([np.asarray(space.sample(mask=None)) * 0 for _ in range(n)])
            out = batch.step(actions)
            for i, env in enumerate(singles):
                single = list(env.step(actions[i]))
                _assert_same(single, out, i, f"{name} step {steps}")
                done = bool(single[2])
            steps += 1
        return steps
    finally:
        batch.close()
        for env in singles:
            env.close()


@pytest.mark.parametrize("name", OFFLINE)
def test_every_offline_id_batched_equals_single_torch(name: str) -> None:
    assert _run_pair(name, 2, "torch", **_short(name)) > 0


@pytest.mark.parametrize("name", OFFLINE)
def test_every_offline_id_batched_equals_single_analytic(name: str) -> None:
    assert _run_pair(name, 2, "analytic", **_short(name)) > 0


@pytest.mark.parametrize("n", [1, 3, pytest.param(5, marks=pytest.mark.slow)])
def test_full_episode_equal_for_several_n(n: int) -> None:
    """The registered episode (600 steps, 20 phase ends) of the default benchmark."""
    assert _run_pair("CyclicSplitDigits", n, "torch", seed=3) == 600


@pytest.mark.parametrize("learner", [
    {"distill_weight": 1.0},  # members distilling train alone, the rest batched
    {"payload_dtype": "auto"},  # per-entry float16: snapshots member by member
    {"train_adapters": False},  # only the heads train
    {"fast": False},  # the peft reference path: member by member
])
def test_batched_equals_single_for_learner_options(learner: dict) -> None:
    assert _run_pair("FiveDomains", 3, "torch", seed=1, learner=learner, **SHORT) > 0


def test_retention_by_agent_and_capacity_bytes_equal_single() -> None:
    _run_pair("CyclicSplitDigits", 2, "torch", capacity=2, retention="agent", **SHORT)
    _run_pair("CyclicSplitDigits", 2, "torch", capacity_bytes=40_000, **SHORT)


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_autoreset_modes_match_sync_vector_env(mode: AutoresetMode) -> None:
    """Two episodes through the end of the first: the batch equals Gymnasium's SyncVectorEnv
    of single envs in the same autoreset mode (rewards, flags, observations, final infos)."""
    kw = dict(backend="torch", phase_length=2, n_cycles=1)
    n = 2
    batch = gym.make_vec(env_id("CyclicSplitDigits"), num_envs=n,
                         vectorization_mode="vector_entry_point", autoreset_mode=mode, **kw)
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id("CyclicSplitDigits"), **kw) for _ in range(n)],
        autoreset_mode=mode)
    b_obs, _ = batch.reset(seed=5)
    s_obs, _ = sync.reset(seed=5)
    n_steps = batch.unwrapped.envs[0].n_steps
    for t in range(2 * n_steps):
        if mode == AutoresetMode.DISABLED and t == n_steps:
            b_obs, _ = batch.reset(options={"reset_mask": np.ones(n, bool)})
            s_obs, _ = sync.reset(options={"reset_mask": np.ones(n, bool)})
        actions = np.array([1, 0]) if t % 2 else np.array([0, 1])
        b = batch.step(actions)
        s = sync.step(actions)
        for k in s[0]:
            np.testing.assert_array_equal(b[0][k], s[0][k])
        for j in (1, 2, 3):
            np.testing.assert_array_equal(b[j], s[j])
        assert set(b[4]) == set(s[4])
        if "final_obs" in s[4]:
            assert mode == AutoresetMode.SAME_STEP
            for i in np.flatnonzero(s[4]["_final_obs"]):
                for k, v in s[4]["final_obs"][i].items():
                    np.testing.assert_array_equal(b[4]["final_obs"][i][k], v)
            np.testing.assert_array_equal(b[4]["final_info"]["accuracy"],
                                          s[4]["final_info"]["accuracy"])
    batch.close()
    sync.close()


def test_disabled_autoreset_refuses_a_step_after_the_end() -> None:
    env = make_batched_env(2, autoreset_mode=AutoresetMode.DISABLED, phase_length=1,
                           n_cycles=1, backend="analytic")
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(gym.error.ResetNeeded, match="reset_mask"):
        env.step(np.zeros(2, dtype=np.int64))


def test_masks_are_the_single_envs_masks() -> None:
    env = make_batched_env(3, backend="analytic", capacity=2, retention="agent", **SHORT)
    _, info = env.reset(seed=1)
    for _ in range(6):
        masks = env.action_masks()
        assert masks.shape == (3, (2 + 2) + (2 + 1)) and masks.dtype == bool
        np.testing.assert_array_equal(masks, np.stack([e.action_masks() for e in env.envs]))
        np.testing.assert_array_equal(info["action_mask"], masks)
        assert env.call("action_masks")[0].shape == masks[0].shape
        _, _, _, _, info = env.step(np.stack([env.single_action_space.sample(
            mask=(m[:4].astype(np.int8), m[4:].astype(np.int8))) for m in masks]))


def test_same_seed_same_trajectory() -> None:
    def run() -> list[np.ndarray]:
        env = make_batched_env(4, **SHORT)
        obs, _ = env.reset(seed=11)
        out = [obs["similarity"]]
        rng = np.random.default_rng(0)
        for _ in range(env.envs[0].n_steps):
            obs, reward, _, _, info = env.step(rng.integers(0, 7, size=4))
            out += [reward, info["accuracy"], obs["similarity"]]
        env.close()
        return out

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_env_changed_through_call_is_seen_at_the_next_step(tmp_path) -> None:
    """Quiet steps carry the returned rows forward; a bank loaded through ``call`` mid-phase
    must reach the next observation (occupied slots, similarities, ages), as in single envs."""
    name, kw = "CyclicSplitDigits", {"backend": "torch", **SHORT}
    donor = gym.make(env_id(name), **kw)
    donor.reset(seed=99)
    for _ in range(8):  # two phases: two entries
        donor.step(0)
    donor.unwrapped.save_bank(tmp_path / "bank")
    batch = gym.make_vec(env_id(name), num_envs=2, vectorization_mode="vector_entry_point", **kw)
    singles = [gym.make(env_id(name), **kw) for _ in range(2)]
    batch.reset(seed=[0, 7])
    for env, seed in zip(singles, [0, 7], strict=True):
        env.reset(seed=seed)
    keep = np.zeros(2, dtype=np.int64)
    for step in range(3):  # inside the first phase (4 steps): steps 1 and 2 are quiet
        if step == 2:
            batch.call("load_bank", tmp_path / "bank")
            for env in singles:
                env.unwrapped.load_bank(tmp_path / "bank")
        out = batch.step(keep)
        for i, env in enumerate(singles):
            _assert_same(list(env.step(0)), out, i, f"step {step}")
    assert out[0]["occupied"].sum() == 4  # both envs see the loaded bank's two entries
    batch.close()


def test_bad_input_gets_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        BatchedAllocationEnv(0)
    with pytest.raises(ValueError, match="autoreset_mode"):
        BatchedAllocationEnv(2, autoreset_mode="sometimes", backend="analytic")
    with pytest.raises(ValueError, match="learner options"):
        BatchedAllocationEnv(2, learner=nsr_gym.learners.make_learner("analytic", None,
                                                                     "split_digits", 5))
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_batched_env(2, max_episode_steps=10, backend="analytic")
    env = make_batched_env(2, backend="analytic", **SHORT)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.zeros(3, dtype=np.int64))
    clock = env.get_attr("_t")
    with pytest.raises(ValueError, match="env 1: action 99 is out of range"):
        env.step(np.array([1, 99]))  # every action checked before any env moves
    with pytest.raises(ValueError, match=r"env 0: action must be an integer in \[0, 7\)"):
        env.step(np.array([0.5, 0.0]))
    assert env.get_attr("_t") == clock
    env.step(np.array([1.0, 0.0]))  # floats with integer values count, as for a single env
    assert env.get_attr("_t") == tuple(t + 1 for t in clock)
    with pytest.raises(ValueError, match="seeds"):
        env.reset(seed=[1, 2, 3])


def test_truncate_lora_batch_equals_truncate_lora() -> None:
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(6, 64, 4, generator=gen)
    A = torch.randn(6, 4, 32, generator=gen)
    B[2] = 0.0  # a zero adapter: the zeros result, as alone
    A[3, 3] = A[3, 2]  # rank-deficient
    for rank, energy in [(None, None), (2, None), (None, 0.9), (3, 0.99)]:
        for i, cut in enumerate(truncate_lora_batch(B, A, rank, energy)):
            ref = truncate_lora(B[i], A[i], rank, energy)
            assert cut.rank == ref.rank and cut.energy == ref.energy
            assert torch.equal(cut.B, ref.B) and torch.equal(cut.A, ref.A)
            # its own storage: a stored payload keeps no other adapter's factors alive
            assert cut.B.untyped_storage().nbytes() == cut.B.numel() * cut.B.element_size()
    assert len({cut.rank for cut in truncate_lora_batch(B, A, None, 0.9)}) > 1  # rank groups
    with pytest.raises(ValueError, match="finite"):
        truncate_lora_batch(B * float("nan"), A)
    with pytest.raises(ValueError, match=r"\(N, m, r\)"):
        truncate_lora_batch(B[0], A[0])
