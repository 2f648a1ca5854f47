"""A bank bounded in bytes (issue 13, "a byte budget"): capacity_bytes in the bank and the env,
float16 payloads chosen per entry by the torch learner, per-entry ranks by energy, and the budget
study's float16 rows at ViT-B/16's shape. Defaults stay exactly as they were."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nsr_gym
from nsr_gym.bank import (
    EVICTION_POLICIES,
    BankEntry,
    BankView,
    TaskKnowledgeBank,
    compress_lora,
    payload_ranks,
    truncate_lora,
)
from nsr_gym.studies import budget

ENV = "nsr_gym/CyclicSplitDigits-v0"


def _entry(owner: int, n: int = 4, dtype: torch.dtype = torch.float32) -> BankEntry:
    """An entry of ``n * itemsize + 12`` bytes (a 3-d float32 key)."""
    key = np.array([1.0, owner, 0.5 * owner], np.float32)
    return BankEntry(key, {"w": torch.full((n,), float(owner), dtype=dtype)}, owner, [owner])


# ----------------------------------------------------------------------------- the bank


def test_constructor_checks_capacity_bytes():
    for bad in (0, -5, True, 1.5, "10"):
        with pytest.raises(ValueError, match="capacity_bytes"):
            TaskKnowledgeBank(3, 3, capacity_bytes=bad)
    assert TaskKnowledgeBank(3, 3).capacity_bytes is None


def test_insert_evicts_by_policy_until_the_bytes_fit():
    bank = TaskKnowledgeBank(5, 3, "lru", capacity_bytes=100)  # 28-byte entries: 3 fit
    for i in range(3):
        assert bank.insert(_entry(i), step=i)[1] is None
    slot, evicted = bank.insert(_entry(3), step=3)
    assert slot == 3 and evicted.owner == 0 and [e.owner for e in bank.last_evicted] == [0]
    big = _entry(9, n=18)  # 84 bytes: three more have to go
    slot, evicted = bank.insert(big, step=4)
    assert evicted.owner == 1 and [e.owner for e in bank.last_evicted] == [1, 2, 3]
    assert [e.owner for e in bank.slots if e] == [9] and bank.total_bytes == 84 <= 100
    assert bank.insert(_entry(7, n=30), step=5) == (None, None)  # larger than the whole budget
    assert [e.owner for e in bank.slots if e] == [9]


def test_float16_entries_hold_twice_as_many_tasks():
    held = {}
    for dtype in (torch.float32, torch.float16):
        bank = TaskKnowledgeBank(10, 3, "lru", capacity_bytes=400)
        for i in range(10):
            bank.insert(_entry(i, n=40, dtype=dtype), step=i)
        held[dtype] = len(bank)
    assert held[torch.float32] == 2 and held[torch.float16] == 4  # 172 vs 92 bytes


def test_reject_and_pins_are_respected_under_a_byte_budget():
    bank = TaskKnowledgeBank(5, 3, "reject", capacity_bytes=60)
    assert bank.insert(_entry(0), 0)[0] == 0 and bank.insert(_entry(1), 1)[0] == 1
    assert bank.insert(_entry(2), 2) == (None, None)  # admission control: nothing evicted
    lru = TaskKnowledgeBank(5, 3, "lru", capacity_bytes=60)
    lru.insert(_entry(0), 0)
    lru.insert(_entry(1), 1)
    lru.pin(0)
    lru.pin(1)
    assert lru.insert(_entry(2), 2) == (None, None) and len(lru) == 2


def test_update_that_grows_evicts_others_or_is_refused():
    bank = TaskKnowledgeBank(4, 3, "lru", capacity_bytes=100)
    for i in range(3):
        bank.insert(_entry(i), i)
    assert bank.update(2, _entry(2, n=12), step=5)  # 60 bytes: the LRU entry (owner 0) goes
    assert [e.owner for e in bank.last_evicted] == [0] and bank.total_bytes <= 100
    assert bank.get(2).nbytes == 60 and bank.slot_of_owner(1) == 1
    assert not bank.update(2, _entry(2, n=40), step=6)  # larger than the budget: kept as it was
    assert bank.get(2).nbytes == 60
    strict = TaskKnowledgeBank(4, 3, "reject", capacity_bytes=60)
    strict.insert(_entry(0), 0)
    strict.insert(_entry(1), 1)
    assert not strict.update(0, _entry(0, n=6), 2) and strict.get(0).nbytes == 28


def test_write_and_insert_many_never_exceed_the_budget():
    bank = TaskKnowledgeBank(4, 3, capacity_bytes=60)
    bank.insert(_entry(0), 0)
    bank.insert(_entry(1), 1)
    assert bank.fits(_entry(5), slot=0) and not bank.fits(_entry(5))
    assert bank.write(0, _entry(5), 2).owner == 0
    with pytest.raises(ValueError, match="does not fit"):
        bank.write(2, _entry(6), 3)
    with pytest.raises(ValueError, match="capacity_bytes"):
        TaskKnowledgeBank(4, 3, capacity_bytes=60).insert_many([_entry(i) for i in range(3)], 0)


def test_round_trip_keeps_the_budget(tmp_path: Path):
    bank = TaskKnowledgeBank(4, 3, "fifo", capacity_bytes=80)
    bank.insert(_entry(0, dtype=torch.float16), 0)
    bank.insert(_entry(1), 1)
    bank.save(tmp_path / "b")
    back = TaskKnowledgeBank.load(tmp_path / "b")
    assert back.capacity_bytes == 80 and back.total_bytes == bank.total_bytes == 20 + 28
    assert back.get(0).tensors["w"].dtype == torch.float16


def test_default_bank_file_names_no_budget(tmp_path: Path):
    import json

    TaskKnowledgeBank(2, 3).save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["capacity_bytes"] is None and manifest["geometry_sha256"] is None
    assert TaskKnowledgeBank.load(tmp_path / "b").capacity_bytes is None


_OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 6)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(policy=st.sampled_from(EVICTION_POLICIES), ops=_OPS)
def test_an_unbinding_budget_changes_nothing(policy, ops):
    """A budget no write reaches behaves exactly as no budget; a binding one is never exceeded
    and keeps the bank's view current."""
    free, loose = TaskKnowledgeBank(3, 3, policy), TaskKnowledgeBank(3, 3, policy, 10**9)
    tight = TaskKnowledgeBank(3, 3, policy, capacity_bytes=64)
    for step, (op, owner, n) in enumerate(ops):
        for bank in (free, loose, tight):
            occupied = np.flatnonzero(bank.occupied())
            if op == 0 or not len(occupied):
                bank.insert(_entry(owner, n), step)
            elif op == 1:
                bank.update(int(occupied[owner % len(occupied)]), _entry(owner, n), step)
            elif op == 2:
                bank.touch(int(occupied[owner % len(occupied)]), step)
            else:
                bank.pin(int(occupied[owner % len(occupied)]), bool(n % 2))
        assert [None if e is None else (e.owner, e.nbytes, e.usage) for e in free.slots] == \
            [None if e is None else (e.owner, e.nbytes, e.usage) for e in loose.slots]
        assert tight.total_bytes <= 64
        fresh = BankView(tight)
        assert (tight.view.entries, tight.view.nbytes, tight.view.owner_slot) == \
            (fresh.entries, fresh.nbytes, fresh.owner_slot)


# ----------------------------------------------------------------------------- ranks by energy


def test_truncate_lora_is_compress_lora_with_rank_and_energy():
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([4.0, 2.0, 1.0, 0.1])
    u, _ = torch.linalg.qr(torch.randn(12, 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(9, 4, generator=g))
    b, a = u * s.sqrt(), s.sqrt()[:, None] * v.T
    for energy in (None, 0.5, 0.9, 0.99, 1.0):
        cut = truncate_lora(b, a, energy=energy)
        ref = compress_lora(b, a, energy=energy)
        assert torch.equal(cut.B, ref[0]) and torch.equal(cut.A, ref[1])
        kept = float((s[:cut.rank] ** 2).sum() / (s**2).sum())
        assert cut.rank == ref[1].shape[0] and cut.energy == pytest.approx(kept, rel=1e-5)
        assert energy is None or cut.energy >= energy - 1e-9
    assert truncate_lora(b, a, energy=0.9).rank == 2  # 16 + 4 of 21.01: the smallest k >= 0.9
    assert payload_ranks({"layer0.A": torch.zeros(2, 9), "layer1.A": torch.zeros(3, 9),
                          "head.weight": torch.zeros(2, 5)}) == {"layer0": 2, "layer1": 3}


# ----------------------------------------------------------------------------- learner and env


@pytest.fixture(scope="module")
def learner():
    from nsr_gym.data import make_tasks
    from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig

    model = TorchLearner(make_tasks("split_digits", 5), TorchLearnerConfig())
    model.reset(np.random.default_rng(0))
    model.train(0, 30)
    yield model
    model.close()


def _with(model, **fields):
    import dataclasses

    old = model.config
    model.config = dataclasses.replace(old, **fields)
    return old


def test_float32_default_snapshot_is_unchanged(learner):
    payload, gap = learner.snapshot(0)
    assert all(t.dtype == torch.float32 for t in payload.values())
    info = learner.last_snapshot
    assert info.dtype == "float32" and len(info.ranks) == len(learner._lora)
    assert list(info.ranks) == [payload[f"layer{i}.A"].shape[0] for i in range(len(info.ranks))]
    assert all(e >= 0.99 - 1e-9 for e in info.energy)  # compression_energy=0.99, per layer


@pytest.mark.parametrize("mode", ["float16", "auto"])
def test_float16_payloads_round_trip_through_the_learner(learner, mode):
    old = _with(learner, payload_dtype=mode)
    try:
        payload, gap = learner.snapshot(0)
        info = learner.last_snapshot
    finally:
        learner.config = old
    assert info.dtype == "float16" and all(t.dtype == torch.float16 for t in payload.values())
    assert abs(info.accuracy_float32 - info.accuracy_float16) <= 0.01
    acc = learner.evaluate(0)
    learner.load(payload)
    assert learner.evaluate(0) == pytest.approx(acc - gap, abs=1e-6)


def test_auto_keeps_float32_where_float16_costs_too_much(learner, monkeypatch):
    old = _with(learner, payload_dtype="auto", payload_dtype_tolerance=0.01)
    try:
        for accs, want, gap in (([0.9, 0.88, 0.86], "float32", 0.02),
                                ([0.9, 0.88, 0.875], "float16", 0.025)):
            it = iter(accs)
            monkeypatch.setattr(learner, "evaluate", lambda task, it=it: next(it))
            payload, got_gap = learner.snapshot(0)
            assert learner.last_snapshot.dtype == want == str(payload["head.weight"].dtype)[6:]
            assert got_gap == pytest.approx(gap)
        payload, _ = learner.snapshot(None)  # nothing to check on: float32
        assert learner.last_snapshot.dtype == "float32"
    finally:
        monkeypatch.undo()
        learner.config = old


def test_half_payload_refuses_values_beyond_float16():
    from nsr_gym.learners.torch_learner import half_payload

    assert half_payload({"w": torch.tensor([7e4])}) is None
    assert half_payload({"w": torch.tensor([1.5])})["w"].dtype == torch.float16


def test_env_capacity_bytes_bounds_the_bank():
    env = gym.make(ENV, backend="analytic", phase_length=2, n_cycles=2, capacity_bytes=250)
    u = env.unwrapped
    obs, info = env.reset(seed=0)
    entry_bytes = 8 * u.n_tasks + 4 * u.learner.key_dim
    done = False
    while not done:
        obs, _, done, _, info = env.step(0)
        assert env.observation_space.contains(obs)
        assert info["bank_bytes"] == u.bank.total_bytes <= 250
    assert len(u.bank) == 250 // entry_bytes < u.n_tasks
    env.close()


def test_env_options_are_checked_and_defaults_unchanged():
    with pytest.raises(ValueError, match="retention='env'"):
        gym.make(ENV, backend="analytic", capacity_bytes=1000, retention="agent")
    with pytest.raises(ValueError, match="capacity_bytes"):
        gym.make(ENV, backend="analytic", capacity_bytes=-1)
    for env_id in ("CyclicSplitDigits", "FiveDomains"):
        env = gym.make(nsr_gym.env_id(env_id), backend="analytic")
        assert env.unwrapped.bank.capacity_bytes is None
        env.close()


def test_torch_env_stores_float16_entries_with_auto():
    env = gym.make(ENV, phase_length=2, n_cycles=1, learner={"payload_dtype": "auto"})
    env.reset(seed=0)
    done = False
    while not done:
        obs, _, done, _, _ = env.step(0)
        assert env.observation_space.contains(obs)
    dtypes = {t.dtype for e in env.unwrapped.bank.slots if e for t in e.tensors.values()}
    assert dtypes == {torch.float16}
    env.close()


# ----------------------------------------------------------------------------- the budget study


def test_vit_bytes_match_real_float16_entries():
    table = budget.vit_entry_bytes(ranks=(2,), dtype=torch.float16).set_index("rank")
    entry, adapter = budget.vit_bytes(2, 2)
    assert table.at[2, "entry_bytes"] == entry == 24 * 2 * 768 * 2 * 2 + (7680 + 10) * 2 + 3072
    assert table.at[2, "adapter_bytes"] == adapter == 147_456  # 0.147 MB, half the paper's 0.29
    assert budget.vit_bytes(2, 4)[0] == budget.vit_entry_bytes(ranks=(2,)).at[0, "entry_bytes"]


def test_precision_sweep_and_summary():
    rows = budget.precision_sweep(tasks="split_digits", seeds=[0], updates=20, lora_ranks=(2,),
                                  energies=(None, 0.5))
    assert len(rows) == 5 * 2 * 3 and set(rows["dtype"]) == {"float32", "float16", "auto"}
    f32, f16 = (rows[rows["dtype"] == d].reset_index() for d in ("float32", "float16"))
    assert (f16["bytes"] < f32["bytes"]).all() and (f16["vit_bytes"] < f32["vit_bytes"]).all()
    auto = rows[rows["dtype"] == "auto"]
    rule = np.where(auto["accuracy_float32"].to_numpy() - f16["accuracy"].to_numpy() <= 0.01,
                    "float16", "float32")
    assert auto["stored_dtype"].tolist() == rule.tolist()
    summary = budget.summarize_precision(rows)
    assert {"vit_mb", "ratio_to_paper", "accuracy_loss", "worst_loss"} <= set(summary)
    assert len(summary) == 2 * 3


def test_byte_budget_study_counts_what_is_held():
    def make_env(capacity_bytes, dtype):
        return gym.make(ENV, backend="analytic", phase_length=2, n_cycles=2,
                        capacity_bytes=capacity_bytes)

    from nsr_gym.agents import SimilarityRule

    table = budget.byte_budget_study(make_env, SimilarityRule, [400, 10**6], ["float32"], [0])
    small, large = table.sort_values("capacity_bytes")["entries"].tolist()
    assert small < large and set(table) >= {"retained_share", "episode_return", "entry_bytes"}
