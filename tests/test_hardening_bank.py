"""Every manifest field of a bank replaced by a value of every JSON type (issue 15, the fuzz
campaign's last bank failures): the load either gives a bank that passes its checks or the
bank's own :class:`BankFormatError`, naming the file and saying what to do; never a raw
``TypeError``/``KeyError``/``AttributeError``. Each edit is resealed (the manifest's own sha256
recomputed, as anyone can), so only the field checks can object.

The field lists below are the formats' fields, written out so each gets its own test id;
``test_the_field_lists_cover_every_field`` fails when a format gains a field they miss.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nsr_gym.atomic import sha256_file, sha256_json
from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank
from nsr_gym.bank.checks import MAX_CAPACITY
from nsr_gym.bank.disk import DiskBank
from nsr_gym.bank.manifest import MANIFEST_SHA, manifest_sha256

#: One value of each JSON type, and the lies of the fuzz campaign (huge, negative, deep, NaN).
JSON_VALUES: dict[str, Any] = {
    "null": None, "true": True, "false": False, "0": 0, "-1": -1, "10**12": 10**12,
    "2**63": 2**63, "0.5": 0.5, "2.0": 2.0, "1e308": 1e308, "nan": float("nan"), "str": "x",
    "float32": "float32", "[]": [], "[[[[[0]]]]]": [[[[[0]]]]], "[2.0]": [2.0], "[true]": [True],
    '["x"]': ["x"], "{}": {}, '{"a": 1}': {"a": 1},
}

#: Every field of a TaskKnowledgeBank manifest (two entries, payloads layer0.A and layer0.B).
_ENTRY = ["slot", "owner", "usage", "created_step", "last_used_step", "inserted_order", "pinned",
          "tasks_served", "tasks_served/0", "sha256", "tensors", *(
              f"tensors/{t}{part}" for t, dims in (("__key__", 1), ("layer0.A", 2),
                                                  ("layer0.B", 2))
              for part in ("", "/shape", *(f"/shape/{d}" for d in range(dims)), "/dtype"))]
BANK_FIELDS = ["format_version", "capacity", "key_dim", "eviction", "capacity_bytes",
               "next_inserted_order", "safetensors_sha256", "geometry_sha256", "entries",
               *(f"entries/{i}{'/' + f if f else ''}" for i in (0, 1) for f in ["", *_ENTRY]),
               MANIFEST_SHA]

#: Every field of a DiskBank manifest (two shards of one group, an index).
_SHARD = ["", "/file", "/n_entries", "/bytes", "/sha256", "/groups", "/groups/0", "/groups/0/0"]
DISK_FIELDS = ["kind", "format_version", "key_dim", "shard_size", "generation", "n_entries",
               "index", "index/file", "index/sha256", "shards",
               *(f"shards/{i}{p}" for i in (0, 1) for p in _SHARD), "manifest_sha256"]

#: What a bank error's message tells the user to do (each error type ends with one of these).
_ADVICE = ("Restore", "re-save", "rebuild", "Save the bank again", "Delete it", "move them")


def _paths(obj: Any, prefix: str = "") -> set[str]:
    """Every field path of a JSON document, ``a/0/b`` style."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    out: set[str] = set()
    for k, v in items:
        path = f"{prefix}/{k}" if prefix else str(k)
        out |= {path, *_paths(v, path)}
    return out


def _set(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    doc[int(last) if isinstance(doc, list) else last] = value


def _lie(root: Path, path: str, value: Any, reseal) -> None:
    """Put ``value`` at ``path`` in ``root/manifest.json``, then recompute its own checksum
    (except when the checksum itself is the field lied about)."""
    doc = json.loads((root / "manifest.json").read_text())
    _set(doc, path, value)
    if path not in (MANIFEST_SHA, "manifest_sha256"):
        reseal(doc)
    (root / "manifest.json").write_text(json.dumps(doc))


def _refused_clearly(exc: BankFormatError, root: Path) -> None:
    msg = str(exc)
    assert str(root) in msg, f"the error does not name the bank: {msg}"
    assert any(a in msg for a in _ADVICE), f"the error does not say what to do: {msg}"


def _reseal_bank(doc: dict) -> None:
    doc[MANIFEST_SHA] = manifest_sha256(doc)


def _reseal_disk(doc: dict) -> None:
    doc["manifest_sha256"] = sha256_json(doc, exclude="manifest_sha256")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory) -> Path:
    """The fuzz campaign's bank: 3 slots, 4-dim keys, two entries with a LoRA pair each."""
    bank = TaskKnowledgeBank(3, 4)
    for t in range(2):
        key = np.random.default_rng(t).normal(size=4).astype(np.float32)
        bank.insert(BankEntry(key, {"layer0.A": torch.ones(2, 4), "layer0.B": torch.ones(4, 2)},
                              owner=t, tasks_served=[t]), step=t)
    root = tmp_path_factory.mktemp("bank") / "bank"
    bank.save(root)
    return root


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory) -> Path:
    """A DiskBank of 3 entries in shards of 2 (two shards, one group each)."""
    root = tmp_path_factory.mktemp("disk") / "disk"
    disk = DiskBank.create(root, key_dim=3, shard_size=2)
    for i in range(3):
        disk.append(BankEntry(np.array([1.0, i, 0], np.float32), {"w": torch.full((2,), 1.0 * i)},
                              i, [i]))
    disk.commit()
    return root


def _bank_ok(bank: TaskKnowledgeBank) -> None:
    """What a loaded bank must satisfy: sane sizes, both entries, counts and ids in range."""
    assert 1 <= bank.capacity <= MAX_CAPACITY and len(bank) == 2
    for e in bank.slots:
        if e is not None:
            assert np.isfinite(e.key).all() and e.key.dtype == np.float32
            assert e.usage >= 0 and e.owner >= -1 and all(t >= 0 for t in e.tasks_served)
            assert all(t.dtype in (torch.float16, torch.float32, torch.float64)
                       for t in e.tensors.values())


# ----------------------------------------------------------------------------- the tests


def test_the_field_lists_cover_every_field(bank_dir, disk_dir):
    bank_doc = json.loads((bank_dir / "manifest.json").read_text())
    disk_doc = json.loads((disk_dir / "manifest.json").read_text())
    assert _paths(bank_doc) == set(BANK_FIELDS)
    assert _paths(disk_doc) == set(DISK_FIELDS)


@pytest.mark.parametrize("field", BANK_FIELDS)
def test_bank_manifest_field_of_any_json_type(bank_dir, tmp_path, field):
    problems = []
    for label, value in JSON_VALUES.items():
        root = shutil.copytree(bank_dir, tmp_path / label.replace("/", "_"))
        _lie(root, field, value, _reseal_bank)
        try:
            bank = TaskKnowledgeBank.load(root)
        except BankFormatError as exc:
            _refused_clearly(exc, root)
        except Exception as exc:  # noqa: BLE001 - any other error type is the finding
            problems.append(f"{field} = {label}: raw {type(exc).__name__}: {exc}")
        else:
            _bank_ok(bank)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("field", DISK_FIELDS)
def test_diskbank_manifest_field_of_any_json_type(disk_dir, tmp_path, field):
    problems = []
    for label, value in JSON_VALUES.items():
        root = shutil.copytree(disk_dir, tmp_path / label.replace("/", "_"))
        _lie(root, field, value, _reseal_disk)
        try:
            with DiskBank(root) as disk:
                entries = [disk.get(i) for i in range(len(disk))]  # the shards are read too
        except BankFormatError as exc:
            _refused_clearly(exc, root)
        except Exception as exc:  # noqa: BLE001 - any other error type is the finding
            problems.append(f"{field} = {label}: raw {type(exc).__name__}: {exc}")
        else:
            assert len(entries) == 3 and all(np.isfinite(e.key).all() for e in entries)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("label", list(JSON_VALUES))
def test_geometry_file_of_any_json_type(bank_dir, tmp_path, label):
    """A ``geometry.json`` holding any JSON value, covered by a resealed manifest."""
    root = shutil.copytree(bank_dir, tmp_path / "bank")
    (root / "geometry.json").write_text(json.dumps(JSON_VALUES[label]))
    _lie(root, "geometry_sha256", sha256_file(root / "geometry.json"), _reseal_bank)
    try:
        _bank_ok(TaskKnowledgeBank.load(root))
    except BankFormatError as exc:
        _refused_clearly(exc, root)


# The four cases the fuzz campaign at bc674a7 still failed (results/fuzz/failures.csv), and the
# dtype and shape lies next to them.
@pytest.mark.parametrize("field,value", [
    ("entries/0/tensors/layer0.B/dtype", {}), ("entries/1/tensors/layer0.A/dtype", [[[[[0]]]]]),
    ("entries/1/tensors/layer0.B/dtype", {}), ("entries/1/tensors/layer0.B/dtype", []),
    ("entries/0/tensors/layer0.A/dtype", "int32"), ("entries/0/tensors/layer0.A/dtype", None),
])
def test_payload_dtype_that_is_not_a_name_is_a_bank_format_error(bank_dir, tmp_path, field,
                                                                  value):
    root = shutil.copytree(bank_dir, tmp_path / "bank")
    _lie(root, field, value, _reseal_bank)
    with pytest.raises(BankFormatError, match=r"dtype .*; a dtype is one of the names "
                                              r"'float16', 'float32', 'float64'.*Restore"):
        TaskKnowledgeBank.load(root)


@pytest.mark.parametrize("shape", [[4.0], [4, 1], [2**62]], ids=["float", "2-d", "huge"])
def test_key_shape_must_be_the_exact_int_key_dim(bank_dir, tmp_path, shape):
    """JSON ``4.0`` (and ``true``) compare equal to ``4`` (and ``1``): the key check does not
    let them stand for the int key_dim."""
    root = shutil.copytree(bank_dir, tmp_path / "bank")
    _lie(root, "entries/0/tensors/__key__/shape", shape, _reseal_bank)
    with pytest.raises(BankFormatError, match=r"needs its key declared as '__key__'"):
        TaskKnowledgeBank.load(root)


def test_unknown_diskbank_version_says_what_to_do(disk_dir, tmp_path):
    root = shutil.copytree(disk_dir, tmp_path / "disk")
    _lie(root, "format_version", 99, _reseal_disk)
    with pytest.raises(BankFormatError, match="unknown format_version 99.*rebuild the DiskBank"):
        DiskBank(root)
