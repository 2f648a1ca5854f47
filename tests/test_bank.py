"""Tests for nsr_gym.bank: LoRA compression, the TaskKnowledgeBank, and its on-disk format."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from nsr_gym.bank import (
    BANK_FORMAT_VERSION,
    EVICTION_POLICIES,
    BankEntry,
    BankFormatError,
    TaskKnowledgeBank,
    compress_lora,
    dense_truncated_svd,
)

# ----------------------------------------------------------------------------- helpers


def _factors(m: int, n: int, r: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=dtype), torch.randn(r, n, generator=g, dtype=dtype)


def _spectrum_factors(s: list[float], m: int = 12, n: int = 9, seed: int = 0):
    """B, A with B @ A = U diag(s) V^T for random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    root = torch.tensor(s, dtype=torch.float64).sqrt()
    return u * root, root[:, None] * v.T


def _entry(key, owner: int, nbytes_tensor: int = 3) -> BankEntry:
    return BankEntry(
        key=np.asarray(key, dtype=np.float32),
        tensors={"w": torch.full((nbytes_tensor,), float(owner))},
        owner=owner,
        tasks_served=[owner],
    )


def _basis(i: int, d: int = 4) -> np.ndarray:
    e = np.zeros(d, dtype=np.float32)
    e[i % d] = 1.0
    return e


def _full_bank(policy: str, k: int = 3) -> TaskKnowledgeBank:
    bank = TaskKnowledgeBank(k, 4, policy)
    for i in range(k):
        assert bank.insert(_entry(_basis(i), owner=i), step=i) == (i, None)
    return bank


def _rewrite_tensors(root: Path, mutate) -> None:
    """Apply ``mutate`` to the stored tensors and fix the file checksum, so the loader reaches
    the per-tensor checks instead of stopping at the file checksum."""
    tensors = load_file(str(root / "bank.safetensors"))
    mutate(tensors)
    save_file(tensors, str(root / "bank.safetensors"))
    _fix_file_sha(root)


def _fix_file_sha(root: Path) -> None:
    import hashlib

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["safetensors_sha256"] = hashlib.sha256(
        (root / "bank.safetensors").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    bank = TaskKnowledgeBank(4, 3, "lfu")
    b, a = compress_lora(*_factors(16, 10, 4, seed=1), rank=3)
    bank.insert(BankEntry(np.array([1, 2, 3], np.float32), {"B": b, "A": a}, 7, [7]), step=2)
    bank.insert(BankEntry(np.array([0, 1, 0], np.float32), {"head": torch.ones(2, 3)}, 8, [8]), 5)
    root = tmp_path / "bank"
    bank.save(root)
    return root


# ----------------------------------------------------------------------------- compression


@pytest.mark.parametrize("m,n,r,k", [(12, 9, 4, 2), (30, 20, 8, 5), (5, 40, 6, 6), (3, 7, 5, 2),
                                     (25, 4, 6, 3), (10, 10, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compress_matches_dense_truncation(m, n, r, k, dtype):
    b, a = _factors(m, n, r, seed=m * n + r, dtype=dtype)
    b_k, a_k = compress_lora(b, a, rank=k)
    kk = min(k, m, n, r)
    assert b_k.shape == (m, kk) and a_k.shape == (kk, n)
    assert b_k.dtype == a_k.dtype == torch.float32
    assert b_k.is_contiguous() and a_k.is_contiguous()
    ref = dense_truncated_svd((b @ a).double(), kk)
    tol = 1e-4 if dtype == torch.float32 else 1e-5
    assert torch.allclose((b_k @ a_k).double(), ref, atol=tol * ref.abs().max().item(), rtol=0)


def test_compress_error_is_discarded_energy():
    b, a = _factors(20, 15, 6, seed=3)
    s = torch.linalg.svdvals(b @ a)
    for k in range(1, 7):
        b_k, a_k = compress_lora(b, a, rank=k)
        err = torch.linalg.norm(b @ a - (b_k @ a_k).double())
        assert err.item() == pytest.approx(s[k:].square().sum().sqrt().item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("energy,k", [(0.5, 1), (0.8, 2), (0.9, 3), (0.97, 4), (1.0, 4)])
def test_energy_threshold_picks_k(energy, k):
    # s = [4, 3, 2, 1]: cumulative energy 16/30, 25/30, 29/30, 30/30.
    b, a = _spectrum_factors([4.0, 3.0, 2.0, 1.0])
    b_k, _ = compress_lora(b, a, energy=energy)
    assert b_k.shape[1] == k
    assert compress_lora(b, a, energy=energy, rank=2)[0].shape[1] == min(k, 2)


def test_rank_none_keeps_numerical_rank_and_zero_gives_rank_one():
    b, a = _spectrum_factors([5.0, 2.0, 0.0])  # rank 2 with r = 3
    assert compress_lora(b, a)[0].shape[1] == 2
    b_k, a_k = compress_lora(torch.zeros(6, 3), torch.randn(3, 5))
    assert b_k.shape == (6, 1) and a_k.shape == (1, 5)
    assert not b_k.any() and not a_k.any()
    assert compress_lora(torch.zeros(6, 3), torch.zeros(3, 5), energy=0.9)[0].shape == (6, 1)


def test_compress_rejects_bad_input():
    b, a = _factors(5, 4, 2, seed=0)
    with pytest.raises(ValueError, match="shape|B"):
        compress_lora(b, a.T)
    with pytest.raises(ValueError, match="rank"):
        compress_lora(b, a, rank=0)
    with pytest.raises(ValueError, match="energy"):
        compress_lora(b, a, energy=1.5)
    with pytest.raises(ValueError, match="finite"):
        compress_lora(b * float("nan"), a)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 14), n=st.integers(1, 14), r=st.integers(1, 7), k=st.integers(1, 8),
       seed=st.integers(0, 2**31 - 1))
def test_property_eckart_young_error(m, n, r, k, seed):
    b, a = _factors(m, n, r, seed)
    b_k, a_k = compress_lora(b, a, rank=k)
    s = torch.linalg.svdvals(b @ a)
    kk = b_k.shape[1]
    assert kk == min(k, m, n, r)
    err = torch.linalg.norm(b @ a - (b_k @ a_k).double()).item()
    expect = s[kk:].square().sum().sqrt().item()
    scale = s[0].item() + 1e-12
    assert abs(err - expect) <= 1e-5 * scale


@settings(max_examples=40, deadline=None)
@given(energy=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_property_energy_is_smallest_sufficient_k(energy, seed):
    b, a = _factors(10, 8, 5, seed)
    s2 = torch.linalg.svdvals(b @ a).square()
    ratio = (s2.cumsum(0) / s2.sum()).tolist()
    k = compress_lora(b, a, energy=energy)[0].shape[1]
    assert ratio[k - 1] >= energy - 1e-12
    assert k == 1 or ratio[k - 2] < energy + 1e-12


def test_compress_never_forms_dense_product():
    # dW would be 20000 x 20000 (1.6 GB in float32); the QR route needs a few MB.
    m = n = 20000
    b, a = _factors(m, n, 8, seed=5, dtype=torch.float32)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    b_k, a_k = compress_lora(b, a, rank=8)
    elapsed = time.perf_counter() - t0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert elapsed < 5.0 and grown_mib < 300
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = b.double() @ (a.double() @ x)
    approx = b_k.double() @ (a_k.double() @ x)  # rank 8 kept of rank 8: exact up to rounding
    assert torch.allclose(approx, exact, rtol=0, atol=1e-4 * exact.abs().max().item())


# ----------------------------------------------------------------------------- bank basics


def test_constructor_validation():
    with pytest.raises(ValueError, match="capacity"):
        TaskKnowledgeBank(0, 4)
    with pytest.raises(ValueError, match="key_dim"):
        TaskKnowledgeBank(2, 0)
    with pytest.raises(ValueError, match="eviction"):
        TaskKnowledgeBank(2, 4, "random")
    assert EVICTION_POLICIES == ("lru", "fifo", "lfu", "least_unique", "reject")


def test_recall_order_and_cosines():
    bank = TaskKnowledgeBank(5, 2)
    bank.insert(_entry([1.0, 0.0], 0), 0)
    bank.insert(_entry([0.0, 3.0], 1), 0)  # raw keys: the bank normalises its own copy
    bank.insert(_entry([1.0, 1.0], 2), 0)
    bank.insert(_entry([2.0, 0.0], 3), 0)  # same direction as slot 0: a tie
    q = np.array([2.0, 0.0], np.float32)
    sims = bank.similarities(q)
    assert sims.dtype == np.float32 and sims.shape == (5,)
    np.testing.assert_allclose(sims, [1.0, 0.0, np.sqrt(0.5), 1.0, 0.0], atol=1e-6)
    got = bank.recall(q, top_k=3)
    assert [s for s, _ in got] == [0, 3, 2]
    assert got[2][1] == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert [s for s, _ in bank.recall(q, top_k=10)] == [0, 3, 2, 1]
    assert bank.recall(np.array([-1.0, 0.0]), top_k=1)[0][1] == pytest.approx(0.0, abs=1e-6)
    assert not bank.similarities(np.zeros(2)).any()
    with pytest.raises(ValueError, match="shape"):
        bank.similarities(np.zeros(3))


def test_empty_slots_have_zero_similarity():
    bank = TaskKnowledgeBank(4, 3)
    np.testing.assert_array_equal(bank.similarities(np.ones(3)), np.zeros(4, np.float32))
    bank.insert(_entry([1, 1, 1], 0), 0)
    sims = bank.similarities(np.ones(3))
    assert sims[0] == pytest.approx(1.0) and not sims[1:].any()
    assert bank.recall(np.ones(3), top_k=5) == [(0, pytest.approx(1.0))]


def test_insert_fills_lowest_empty_slot_and_accessors():
    bank = _full_bank("lru", k=3)
    bank.slots[1], bank._keys[1] = None, 0.0  # a hole (the public API never removes entries)
    slot, evicted = bank.insert(_entry(_basis(3), owner=9), step=10)
    assert (slot, evicted) == (1, None)
    e = bank.get(1)
    assert (e.owner, e.created_step, e.last_used_step, e.inserted_order) == (9, 10, 10, 3)
    assert len(bank) == 3 and bank.occupied().all()
    assert bank.slot_of_owner(9) == 1 and bank.slot_of_owner(42) is None
    bank.touch(1, step=12)
    bank.touch(1, step=15)
    np.testing.assert_array_equal(bank.usages(), [0, 2, 0])
    np.testing.assert_array_equal(bank.ages(20), [20, 5, 18])
    assert bank.ages(20).dtype == bank.usages().dtype == np.float32


def test_errors_for_bad_slots():
    bank = TaskKnowledgeBank(2, 4)
    bank.insert(_entry(_basis(0), 0), 0)
    with pytest.raises(IndexError, match="out of range"):
        bank.get(2)
    with pytest.raises(IndexError, match="out of range"):
        bank.touch(-1, 0)
    with pytest.raises(ValueError, match="empty"):
        bank.touch(1, 0)
    with pytest.raises(ValueError, match="empty"):
        bank.pin(1)
    with pytest.raises(ValueError, match="shape"):
        bank.insert(_entry([1.0, 2.0], 1), 0)
    with pytest.raises(ValueError, match="already stored"):
        bank.insert(bank.get(0), 1)


def test_lru_evicts_least_recently_used():
    bank = _full_bank("lru")
    bank.touch(0, step=10)
    bank.touch(2, step=11)
    slot, evicted = bank.insert(_entry(_basis(3), owner=3), step=12)
    assert slot == 1 and evicted.owner == 1 and bank.get(1).owner == 3


def test_fifo_evicts_oldest_insert_regardless_of_use():
    bank = _full_bank("fifo")
    bank.touch(0, step=10)
    slot, evicted = bank.insert(_entry(_basis(3), owner=3), step=12)
    assert slot == 0 and evicted.owner == 0
    slot, evicted = bank.insert(_entry(_basis(0), owner=4), step=13)
    assert slot == 1 and evicted.owner == 1


def test_lfu_evicts_least_used_ties_by_recency():
    bank = _full_bank("lfu")
    for slot, step in [(0, 5), (0, 6), (1, 7), (2, 8)]:
        bank.touch(slot, step)
    # usage [2, 1, 1]: slots 1 and 2 tie on usage; slot 1 was used less recently.
    slot, evicted = bank.insert(_entry(_basis(3), owner=3), step=9)
    assert slot == 1 and evicted.owner == 1


def test_least_unique_evicts_most_redundant_key():
    bank = TaskKnowledgeBank(3, 3, "least_unique")
    bank.insert(_entry([1.0, 0.0, 0.0], 0), 0)
    bank.insert(_entry([0.0, 1.0, 0.0], 1), 1)
    bank.insert(_entry([0.1, 1.0, 0.0], 2), 2)  # nearly duplicates slot 1
    # Redundancy (max cosine to another key): slot 0 0.0995, slots 1 and 2 0.995 (a tie).
    slot, evicted = bank.insert(_entry([0.0, 0.0, 1.0], 3), 3)
    assert slot == 1 and evicted.owner == 1  # tie -> lower slot


def test_least_unique_skips_pinned_twin():
    bank = TaskKnowledgeBank(3, 3, "least_unique")
    bank.insert(_entry([0.0, 1.0, 0.0], 0), 0)
    bank.insert(_entry([0.1, 1.0, 0.0], 1), 1)
    bank.insert(_entry([0.0, 0.0, 1.0], 2), 2)
    bank.pin(0)  # unpinned, slot 0 would go (tie with slot 1, lower slot)
    slot, evicted = bank.insert(_entry([1.0, 0.0, 0.0], 3), 3)
    assert slot == 1 and evicted.owner == 1 and bank.get(0).owner == 0


def test_reject_keeps_first_k():
    bank = _full_bank("reject")
    assert bank.insert(_entry(_basis(3), owner=3), step=5) == (None, None)
    assert bank.insert(_entry(_basis(0), owner=4), step=6) == (None, None)
    assert [bank.get(k).owner for k in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("policy", [p for p in EVICTION_POLICIES if p != "reject"])
def test_pinned_entries_survive(policy):
    bank = _full_bank(policy)
    bank.pin(0)
    bank.pin(2)
    for i in range(3, 6):
        slot, evicted = bank.insert(_entry(_basis(i), owner=i), step=i)
        assert slot == 1 and evicted is not None
    assert bank.get(0).owner == 0 and bank.get(2).owner == 2
    bank.pin(1)
    assert bank.insert(_entry(_basis(0), owner=9), step=9) == (None, None)
    bank.pin(1, False)
    assert bank.insert(_entry(_basis(0), owner=9), step=9)[0] == 1


def test_update_keeps_slot_usage_and_merges_tasks():
    bank = _full_bank("lru")
    bank.touch(1, 4)
    bank.touch(1, 5)
    bank.pin(1)
    new = BankEntry(np.array([0, 0, 5, 0], np.float32), {"w": torch.zeros(7)}, 1, [3, 1, 3])
    bank.update(1, new, step=8)
    e = bank.get(1)
    assert e is new and bank.slot_of_owner(1) == 1
    assert (e.usage, e.pinned, e.inserted_order, e.created_step, e.last_used_step) == (2, True, 1,
                                                                                       1, 8)
    assert e.tasks_served == [1, 3]
    np.testing.assert_allclose(bank.similarities(_basis(2)), [0, 1, 1], atol=1e-7)  # key refreshed
    bank.update(1, e, step=9)  # updating with the stored object itself is allowed
    assert e.last_used_step == 9 and e.usage == 2


def test_byte_counts_exact():
    bank = TaskKnowledgeBank(3, 4)
    assert bank.total_bytes == 0 and bank.bytes_per_entry() == 0.0
    lora = {"B": torch.zeros(10, 2), "A": torch.zeros(2, 6)}
    e1 = BankEntry(np.ones(4, np.float32), lora, 0, [0])
    e2 = BankEntry(np.ones(4, np.float32), {"head": torch.zeros(3, dtype=torch.float64)}, 1, [1])
    assert e1.nbytes == 10 * 2 * 4 + 2 * 6 * 4 + 4 * 4 == 144
    assert e2.nbytes == 3 * 8 + 16 == 40
    bank.insert(e1, 0)
    bank.insert(e2, 0)
    assert bank.total_bytes == 184 and bank.bytes_per_entry() == 92.0


# ----------------------------------------------------------------------------- persistence


def test_round_trip_preserves_everything(tmp_path: Path):
    bank = TaskKnowledgeBank(4, 3, "fifo")
    b, a = compress_lora(*_factors(16, 10, 4, seed=2), rank=3)
    bank.insert(BankEntry(np.array([1, 2, 3], np.float32), {"B": b, "A": a}, 7, [7]), 1)
    head = {"h": torch.arange(6.0).reshape(2, 3), "s": torch.tensor(2.5)}  # incl. a 0-d tensor
    bank.insert(BankEntry(np.array([3, 1, 0], np.float32), head, 8, [8, 2]), 2)
    bank.insert(_entry([0, 0, 1], 9), 3)
    bank.slots[0], bank._keys[0] = None, 0.0  # a hole, so slot positions must survive
    bank.touch(1, 6)
    bank.pin(2)
    bank.save(tmp_path / "b")
    bank.save(tmp_path / "b")  # overwriting an existing bank works
    back = TaskKnowledgeBank.load(tmp_path / "b")
    assert (back.capacity, back.key_dim, back.eviction) == (4, 3, "fifo")
    assert [e is None for e in back.slots] == [e is None for e in bank.slots]
    for x, y in zip(bank.slots, back.slots, strict=True):
        if x is None:
            continue
        for f in ("owner", "tasks_served", "usage", "created_step", "last_used_step",
                  "inserted_order", "pinned"):
            assert getattr(x, f) == getattr(y, f), f
        assert x.key.tobytes() == y.key.tobytes() and y.key.dtype == np.float32
        assert sorted(x.tensors) == sorted(y.tensors)
        for n, t in x.tensors.items():
            assert t.dtype == y.tensors[n].dtype and t.shape == y.tensors[n].shape
            assert torch.equal(t, y.tensors[n])
    np.testing.assert_array_equal(back._keys, bank._keys)
    q = np.array([1.0, 2.0, 2.5], np.float32)
    np.testing.assert_array_equal(back.similarities(q), bank.similarities(q))
    assert back.total_bytes == bank.total_bytes
    # Eviction behaves the same after the round trip (FIFO counter and steps persisted).
    for i, step in enumerate(range(7, 12)):
        got = [bk.insert(_entry(np.roll([1.0, 0.0, 0.5], i), 10 + i), step) for bk in (bank, back)]
        (s0, e0), (s1, e1) = got
        assert s0 == s1 and (e0 is None) == (e1 is None)
        assert e0 is None or e0.owner == e1.owner
        assert bank.get(s0).inserted_order == back.get(s1).inserted_order


def test_empty_bank_round_trip(tmp_path: Path):
    TaskKnowledgeBank(2, 5, "reject").save(tmp_path / "e")
    back = TaskKnowledgeBank.load(tmp_path / "e")
    assert len(back) == 0 and back.capacity == 2 and back.eviction == "reject"


def test_checksums_keep_their_values():
    """Banks saved by earlier versions must still verify: the digests of fixed inputs, as the
    format's version-2 writer computed them before the checksum code moved to nsr_gym.atomic."""
    from nsr_gym.bank.files import entry_sha256, manifest_sha256

    manifest = {"format_version": 2, "capacity": 3, "eviction": "lru",
                "entries": [{"slot": 0, "tasks_served": [1, 2], "pinned": False}],
                "manifest_sha256": "its own field is left out"}
    named = {"A": torch.arange(6, dtype=torch.float32).reshape(2, 3),
             "b": torch.tensor([3], dtype=torch.int64), "__key__": torch.ones(4)}
    assert manifest_sha256(manifest) == \
        "370597578b919151d119dd1dd960bb3ad0f50ce3eae1cb8cb711876f2bbcf642"
    assert entry_sha256(named) == "7ed1d307949302552ed1861b7682e06ce916b1a744a1854e8ac860e471327df2"


def test_restore_and_next_inserted_order_are_public(tmp_path: Path):
    bank = TaskKnowledgeBank(3, 3, "fifo")
    for i in range(3):
        bank.insert(_entry([1, i, 0], i), i)
    bank.save(tmp_path / "b")
    back = TaskKnowledgeBank.load(tmp_path / "b")
    assert back.next_inserted_order == bank.next_inserted_order == 3
    with pytest.raises(ValueError, match="occupied"):
        back.restore({0: _entry([1, 0, 0], 9)}, 4)
    back.insert(_entry([0, 0, 1], 5), 9)  # FIFO order survived the round trip: slot 0 goes
    assert [e.owner for e in back.slots] == [5, 1, 2]


@pytest.mark.parametrize("policy", ["lru", "lfu", "least_unique"])
def test_bank_keeps_its_view_current(policy: str):
    """Whatever the writes, ``bank.view`` equals a view built from scratch."""
    from nsr_gym.bank import BankView

    rng = np.random.default_rng(0)
    bank = TaskKnowledgeBank(4, 3, policy)
    view = bank.view

    def check() -> None:
        fresh = BankView(bank)
        for name in ("occupied", "last_used", "usage"):
            np.testing.assert_array_equal(getattr(bank.view, name), getattr(fresh, name))
        assert (bank.view.owner_slot, bank.view.entries, bank.view.nbytes) == \
            (fresh.owner_slot, fresh.entries, fresh.nbytes)
        q = rng.standard_normal(3).astype(np.float32)
        np.testing.assert_array_equal(bank.view.similarities(q), bank.similarities(q))

    for step in range(60):
        op = rng.integers(4)
        occupied = np.flatnonzero(bank.occupied())
        owner = int(rng.integers(6))
        entry = _entry(rng.standard_normal(3), owner, nbytes_tensor=int(rng.integers(1, 5)))
        if op == 0 or not len(occupied):
            bank.insert(entry, step)
        elif op == 1:
            bank.update(int(rng.choice(occupied)), entry, step)
        elif op == 2:
            bank.touch(int(rng.choice(occupied)), step)
        else:
            bank.pin(int(rng.choice(occupied)), bool(rng.integers(2)))
        check()
    assert bank.view is view  # kept current in place, never rebuilt by these writes
    bank.shift_steps(-5)
    check()
    bank.clear()
    check()
    assert bank.view.entries == 0 and bank.next_inserted_order == 0


def test_manifest_contents(saved: Path):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == BANK_FORMAT_VERSION
    e = manifest["entries"][0]
    assert e["slot"] == 0 and e["owner"] == 7 and len(e["sha256"]) == 64
    assert e["tensors"]["B"] == {"shape": [16, 3], "dtype": "float32"}
    assert e["tensors"]["__key__"] == {"shape": [3], "dtype": "float32"}
    assert sorted(load_file(str(saved / "bank.safetensors"))) == [
        "slot0/A", "slot0/B", "slot0/__key__", "slot1/__key__", "slot1/head"]


def _truncate(root: Path) -> None:
    p = root / "bank.safetensors"
    p.write_bytes(p.read_bytes()[:-10])


def _flip(root: Path) -> None:
    p = root / "bank.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))


def _bad_header(root: Path) -> None:
    p = root / "bank.safetensors"
    data = bytearray(p.read_bytes())
    data[8:12] = b"\x00\xff\x00\xff"
    p.write_bytes(bytes(data))
    _fix_file_sha(root)


def _entry_sha(root: Path) -> None:
    def mutate(t):
        t["slot1/head"] = t["slot1/head"] * 2

    _rewrite_tensors(root, mutate)


CORRUPTIONS = {
    "truncated": (_truncate, "truncated or modified"),
    "flipped_byte": (_flip, "truncated or modified"),
    "unparseable_safetensors": (_bad_header, "could not be parsed"),
    "missing_tensor": (lambda r: _rewrite_tensors(r, lambda t: t.pop("slot0/A")), "missing"),
    "extra_tensor": (lambda r: _rewrite_tensors(r, lambda t: t.update(x=torch.ones(1))),
                     "not listed"),
    "bad_json": (lambda r: (r / "manifest.json").write_text("{not json"), "not valid JSON"),
    "unknown_version": (lambda r: _edit_manifest(r, lambda m: m.update(format_version=99)),
                        "unknown format_version"),
    "missing_version": (lambda r: _edit_manifest(r, lambda m: m.pop("format_version")),
                        "format_version"),
    "missing_manifest": (lambda r: (r / "manifest.json").unlink(), "manifest file is missing"),
    "missing_tensor_file": (lambda r: (r / "bank.safetensors").unlink(), "tensor file is missing"),
    "shape_mismatch": (lambda r: _edit_manifest(
        r, lambda m: m["entries"][0]["tensors"]["B"].update(shape=[3, 16])), "manifest says"),
    "dtype_mismatch": (lambda r: _edit_manifest(
        r, lambda m: m["entries"][0]["tensors"]["B"].update(dtype="float16")), "manifest says"),
    "entry_checksum": (_entry_sha, "checksum of slot 1"),
    "bad_field": (lambda r: _edit_manifest(r, lambda m: m["entries"][0].update(usage="x")),
                  "usage"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_raises_bank_format_error(saved: Path, case: str):
    corrupt, message = CORRUPTIONS[case]
    corrupt(saved)
    with pytest.raises(BankFormatError, match=message) as info:
        TaskKnowledgeBank.load(saved)
    assert str(saved) in str(info.value)  # the message names the file
    assert isinstance(info.value, ValueError)


def test_missing_directory_raises(tmp_path: Path):
    with pytest.raises(BankFormatError, match="no bank directory"):
        TaskKnowledgeBank.load(tmp_path / "nope")


@pytest.mark.parametrize("fail_call", [0, 1])
def test_interrupted_save_leaves_previous_bank(saved: Path, monkeypatch, fail_call: int):
    before = TaskKnowledgeBank.load(saved)
    bigger = TaskKnowledgeBank(4, 3, "lru")
    bigger.insert(_entry([1, 1, 1], 99), 0)
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) - 1 == fail_call:
            raise OSError("simulated crash during rename")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        bigger.save(saved)
    monkeypatch.undo()
    after = TaskKnowledgeBank.load(saved)
    assert [e.owner for e in after.slots if e] == [e.owner for e in before.slots if e] == [7, 8]
    assert sorted(p.name for p in saved.parent.iterdir()) == ["bank"]  # no temp dirs left


def test_crash_between_renames_recovers_previous(saved: Path):
    # A process killed after moving the old bank aside but before moving the new one in.
    saved.rename(saved.parent / ".bank.old-crashed")
    with pytest.warns(UserWarning, match="interrupted save"):
        back = TaskKnowledgeBank.load(saved)
    assert [e.owner for e in back.slots if e] == [7, 8]
    back.save(saved)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["bank"]
