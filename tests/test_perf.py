"""The speed work changes no result: cached env views, fast recall, bulk inserts; and the
``nsr-gym perf`` smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym
from nsr_gym.bank import BankEntry, TaskKnowledgeBank


def _reference_obs(env) -> dict[str, np.ndarray]:
    """The observation computed from scratch, as the env did before it cached its bank view."""
    u = env.unwrapped
    active = np.zeros(u.capacity + 1, dtype=np.float32)
    active[0 if u._active_slot is None else 1 + u._active_slot] = 1.0
    return {
        "similarity": np.clip(u.bank.similarities(u._embedding), -1.0, 1.0).astype(np.float32),
        "occupied": u.bank.occupied().astype(np.float32),
        "age": np.minimum(u.bank.ages(u._t) / u.n_steps, 1.0).astype(np.float32),
        "usage": np.minimum(u.bank.usages() / u.n_phases, 1.0).astype(np.float32),
        "active": active,
        "last_accuracy": np.array([u._last_acc], dtype=np.float32),
        "task_shift": np.array([u._task_shift], dtype=np.float32),
    }


@pytest.mark.parametrize("kwargs", [dict(), dict(capacity=2, eviction="lfu")])
def test_cached_obs_and_info_equal_fresh_computation(kwargs):
    env = gym.make("nsr_gym/RecurringSplitDigits-v0", backend="analytic", phase_length=4,
                   n_cycles=3, privileged_info=True, **kwargs)
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    done, kept = False, []
    while not done:
        for key, ref in _reference_obs(env).items():
            assert obs[key].dtype == np.float32 and np.array_equal(obs[key], ref), key
        u = env.unwrapped
        slot = u.bank.slot_of_owner(info["next_task_id"])
        assert info["next_task_slot"] == (-1 if slot is None else slot)
        assert info["bank_bytes"] == u.bank.total_bytes and info["bank_entries"] == len(u.bank)
        assert info["action_mask"].tolist() == [True, True] + u.bank.occupied().tolist()
        kept.append(obs)
        a = int(rng.integers(env.action_space.n))
        obs, _, done, _, info = env.step(a if info["action_mask"][a] else 0)
    # every step's arrays are the caller's own: later steps never change earlier observations
    assert not any(np.shares_memory(kept[0][k], kept[1][k]) for k in kept[0])


def test_numpy_integer_and_float_actions_still_parse():
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic")
    env.reset(seed=0)
    for a in (0, np.int64(1), np.int32(0), 1.0, np.array(0)):
        env.step(a)
    with pytest.raises(ValueError, match="out of range"):
        env.unwrapped.step(np.int64(99))


def _keys(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_insert_many_equals_inserts_one_by_one():
    keys = _keys(40, 6)
    keys[5] = 0.0
    one = TaskKnowledgeBank(50, 6)
    for i, k in enumerate(keys):
        one.insert(BankEntry(k.copy(), {}, owner=i, tasks_served=[i, i]), step=3)
    many = TaskKnowledgeBank(50, 6)
    assert many.insert_many([BankEntry(k.copy(), {}, owner=i, tasks_served=[i, i])
                             for i, k in enumerate(keys)], step=3) == list(range(40))
    assert np.array_equal(one._keys, many._keys)
    for a, b in zip(one.slots, many.slots, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.owner, a.tasks_served, a.created_step, a.inserted_order) == \
                   (b.owner, b.tasks_served, b.created_step, b.inserted_order)
    with pytest.raises(ValueError, match="empty slots"):
        many.insert_many([BankEntry(k.copy(), {}, 0, [0]) for k in _keys(11, 6)], 0)
    with pytest.raises(ValueError, match="already stored"):
        many.insert_many([many.get(0)], 0)


def test_top1_recall_equals_the_sorted_recall():
    bank = TaskKnowledgeBank(30, 4)
    bank.insert_many([BankEntry(k, {}, i, [i]) for i, k in enumerate(_keys(20, 4))], 0)
    bank.insert(BankEntry(bank.get(3).key.copy(), {}, 99, [99]), 0)  # a tie: lower slot wins
    bank.slots[7], bank._keys[7] = None, 0.0  # a hole
    for q in list(_keys(50, 4, seed=1)) + [bank.get(3).key, -np.ones(4, np.float32)]:
        sims = bank.similarities(q)
        occ = np.flatnonzero(bank.occupied())
        best = occ[np.argsort(-sims[occ], kind="stable")][0]
        assert bank.recall(q, top_k=1) == [(int(best), float(sims[best]))]


def test_bank_version_counts_changes():
    bank = TaskKnowledgeBank(3, 2)
    v0 = bank.version
    slot, _ = bank.insert(BankEntry(np.ones(2, np.float32), {}, 0, [0]), 0)
    bank.touch(slot, 1)
    bank.pin(slot)
    bank.update(slot, BankEntry(np.ones(2, np.float32), {}, 0, [0]), 2)
    assert bank.version == v0 + 4
    bank.similarities(np.ones(2))
    bank.recall(np.ones(2))
    assert bank.version == v0 + 4  # reads change nothing


def test_vector_env_step_kinds_cover_the_episode():
    from nsr_gym.studies.perf import vector_env_step_kinds

    kinds = vector_env_step_kinds(num_envs=2, n_steps=60, repeats=1)  # two 30-step phases
    assert list(kinds.kind) == ["phase start", "inside", "phase end"]
    assert list(kinds.steps) == [2, 56, 2]
    assert (kinds.ms_per_step_cpu > 0).all() and abs(kinds.share_cpu.sum() - 1.0) < 1e-9


@pytest.mark.slow
def test_perf_quick_writes_results(tmp_path):
    out = tmp_path / "perf"
    proc = subprocess.run([sys.executable, "-m", "nsr_gym.cli", "perf", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("throughput", "ratios", "batched", "compression", "recall", "bytes_per_task",
                 "rank_scaling", "task_scaling", "targets", "vector_env", "vector_env_steps",
                 "batched_learner"):
        assert len(pd.read_csv(out / f"{name}.csv")) > 0, name
    md = (out / "perf.md").read_text()
    assert "## Targets" in md and "torch" in md and "Load average" in md
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["command"].startswith("nsr-gym perf") and meta["versions"]["torch"]
    # the machine's speed, by a workload that never changes, before and after
    assert 0 < meta["reference_us_before"] < 1e6 and 0 < meta["reference_us_after"] < 1e6
    assert "reference workload" in md
    for name in ("vector_env", "batched_learner"):  # and beside every batched row
        assert (pd.read_csv(out / f"{name}.csv").reference_us_cpu > 0).all(), name
    throughput = pd.read_csv(out / "throughput.csv")
    assert set(throughput.path) == {"torch fast", "torch peft (reference)", "analytic",
                                    "torch fast + distillation"}
    assert (throughput.steps_per_s_cpu > 0).all()
    comp = pd.read_csv(out / "compression.csv")
    assert (comp.max_rel_diff < 1e-4).all()  # the fast compression gives the dense answer
    assert set(pd.read_csv(out / "targets.csv").met) <= {"yes", "no"}
    assert nsr_gym.env_id("CyclicSplitDigitsViT") in gym.registry
