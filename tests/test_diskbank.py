"""DiskBank: entries on disk in safetensors shards, keys in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank
from nsr_gym.bank.disk import DiskBank


def _entry(i: int, rng: np.random.Generator, rank: int | None = None) -> BankEntry:
    k = rank if rank is not None else 1 + i % 3  # mixed shapes, as SVD ranks vary
    tensors = {"B": torch.full((5, k), float(i)), "A": torch.arange(k * 4.0).reshape(k, 4) + i,
               "bias": torch.tensor([float(i)])}
    return BankEntry(key=rng.standard_normal(6).astype(np.float32), tensors=tensors, owner=100 + i,
                     tasks_served=[100 + i, 7], created_step=i)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_across_shards_and_commits(tmp_path):
    rng = np.random.default_rng(0)
    entries = [_entry(i, rng) for i in range(11)]
    bank = DiskBank.create(tmp_path / "b", key_dim=6, shard_size=4)
    for e in entries[:6]:
        bank.append(e)
    assert _same(bank.get(5).tensors, entries[5].tensors)  # uncommitted, in the open shard
    bank.commit()
    for e in entries[6:]:  # refills the partial shard 1, then starts shard 2
        bank.append(e)
    bank.commit()
    again = DiskBank(tmp_path / "b")
    assert len(again) == 11
    for i, e in enumerate(entries):
        got = again.get(i)
        assert _same(got.tensors, e.tensors)
        assert got.owner == 100 + i and got.tasks_served == [100 + i, 7] and got.created_step == i
        np.testing.assert_allclose(got.key, e.key / np.linalg.norm(e.key), rtol=1e-6)
    again.verify()
    # only the files the manifest names are left: 3 shards and one index
    assert len(list((tmp_path / "b" / "shards").iterdir())) == 3
    assert len(list((tmp_path / "b").glob("index-*.safetensors"))) == 1


def test_recall_matches_the_in_memory_bank(tmp_path):
    rng = np.random.default_rng(1)
    entries = [_entry(i, rng, rank=2) for i in range(30)]
    mem = TaskKnowledgeBank(30, 6)
    for e in entries:
        mem.insert(BankEntry(e.key.copy(), dict(e.tensors), e.owner, list(e.tasks_served)), 0)
    disk = DiskBank.from_bank(mem, tmp_path / "b", shard_size=8)
    for q in rng.standard_normal((20, 6)):
        assert [i for i, _ in disk.recall(q, 3)] == [i for i, _ in mem.recall(q, 3)]
        np.testing.assert_allclose(disk.similarities(q), mem.similarities(q), atol=1e-6)
    queries = rng.standard_normal((50, 6))
    assert disk.recall_many(queries).tolist() == [disk.recall(q, 1)[0][0] for q in queries]
    assert disk.keys.dtype == np.float32 and disk.keys.flags.c_contiguous
    assert disk.memory_bytes < disk.disk_bytes


def test_uncommitted_appends_are_invisible_and_usage_persists(tmp_path):
    rng = np.random.default_rng(2)
    bank = DiskBank.create(tmp_path / "b", key_dim=6, shard_size=4)
    for i in range(3):
        bank.append(_entry(i, rng))
    bank.commit()
    bank.touch(1, step=42)
    bank.append(_entry(3, rng))  # never committed: a crash here loses only this entry
    assert len(DiskBank(tmp_path / "b")) == 3
    bank.commit()
    again = DiskBank(tmp_path / "b")
    assert len(again) == 4 and again.get(1).usage == 1 and again.get(1).last_used_step == 42


def test_corruption_is_detected(tmp_path):
    rng = np.random.default_rng(3)
    bank = DiskBank.create(tmp_path / "b", key_dim=6, shard_size=4)
    for i in range(5):
        bank.append(_entry(i, rng))
    bank.commit()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    shard = tmp_path / "b" / "shards" / manifest["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BankFormatError, match="sha256"):
        DiskBank(tmp_path / "b").verify()
    index = tmp_path / "b" / manifest["index"]["file"]
    index.write_bytes(index.read_bytes()[:-3])
    with pytest.raises(BankFormatError, match="index"):
        DiskBank(tmp_path / "b")
    with pytest.raises(BankFormatError, match="manifest"):
        DiskBank(tmp_path / "nothing")


def test_errors_are_clear(tmp_path):
    bank = DiskBank.create(tmp_path / "b", key_dim=6)
    with pytest.raises(FileExistsError):
        DiskBank.create(tmp_path / "b", key_dim=6)
    assert len(DiskBank.create(tmp_path / "b", key_dim=6, exist_ok=True)) == 0
    assert bank.recall(np.ones(6), 3) == []
    assert bank.recall_many(np.ones((2, 6))).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="keys"):
        bank.append_many(np.ones((1, 5)), [{}], owners=[0])
    with pytest.raises(ValueError, match="tensor name"):
        bank.append_many(np.ones((1, 6)), [{"a/b": np.zeros(2)}], owners=[0])
    bank.append_many(np.ones((1, 6)), [{"w": np.zeros(2, np.float32)}], owners=[0])
    with pytest.raises(IndexError, match="out of range"):
        bank.get(1)
    with pytest.raises(ValueError, match="query"):
        bank.similarities(np.ones(5))
