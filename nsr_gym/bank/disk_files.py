"""The DiskBank's files, read with the bank's standard: bounded JSON, limits, then allocation.

:func:`read_manifest` reads ``manifest.json`` through the bounded JSON reader and checks every
field against :mod:`nsr_gym.bank.checks`' limits and against the other fields (the shard count
and sizes add up to ``n_entries``, file names stay inside the bank directory, the manifest's own
``manifest_sha256``); :func:`read_index` checks the index file's sha256, names, shapes, dtypes
and values (finite keys, usage >= 0, owners >= -1, task ids >= 0, offsets monotone, each entry's
group and row inside its shard) before :class:`~nsr_gym.bank.disk.DiskBank` allocates anything
from them; :func:`check_shard` checks an opened shard's header against its manifest record.
Format 2 added ``manifest_sha256``; format 1 (no self-checksum) is still read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file as np_load_file

from nsr_gym.atomic import atomic_write_text, sha256_file, sha256_json
from nsr_gym.bank.checks import (
    MAX_KEY_DIM,
    BankFormatError,
    Fields,
    check_key_matrix,
    read_json,
)

__all__ = ["DISKBANK_FORMAT_VERSION", "INT_FIELDS", "MAX_ENTRIES", "MAX_SHARD_SIZE",
           "READABLE_DISKBANK_VERSIONS", "check_shard", "fail", "read_index", "read_manifest",
           "write_manifest"]

DISKBANK_FORMAT_VERSION: int = 2
READABLE_DISKBANK_VERSIONS: tuple[int, ...] = (1, 2)
KIND = "nsr_gym.DiskBank"
MANIFEST = "manifest.json"
INT_FIELDS = ("owner", "usage", "created_step", "last_used_step", "group", "row")
#: Most entries a DiskBank manifest may declare, and most entries per shard.
MAX_ENTRIES: int = 10**9
MAX_SHARD_SIZE: int = 10**6
_SHA = "manifest_sha256"
#: safetensors dtype codes of the payload dtypes (float16, float32, float64).
_SHARD_DTYPES = ("F16", "F32", "F64")


def fail(file: Path, problem: str) -> BankFormatError:
    """The DiskBank's error: the file, what is wrong, what to do."""
    return BankFormatError(f"{file}: {problem}. Restore the DiskBank directory from a backup or "
                           "rebuild it")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` (format 2, with its own checksum) atomically: the commit point."""
    manifest = {**manifest, "kind": KIND, "format_version": DISKBANK_FORMAT_VERSION}
    manifest[_SHA] = sha256_json(manifest, exclude=_SHA)
    atomic_write_text(root / MANIFEST, json.dumps(manifest, separators=(",", ":")))


def _file_name(v: Any, file: Path, what: str) -> str:
    if not isinstance(v, str) or not v.endswith(".safetensors") or "/" in v or "\\" in v \
            or v.startswith(".") or len(v) > 255:
        raise fail(file, f"{what} file name {v!r} is not a plain *.safetensors name in the bank")
    return v


def _shard_record(raw: Any, file: Path, shard_size: int) -> dict[str, Any]:
    f = Fields(raw, file, fail)
    groups = f.get("groups", list)
    if not groups or not all(isinstance(g, list) and g and all(
            isinstance(n, str) and n and "/" not in n for n in g) for g in groups):
        raise fail(file, "a shard's groups must be non-empty lists of tensor names")
    return {"file": _file_name(f.get("file", str), file, "shard"),
            "n_entries": f.integer("n_entries", 1, shard_size), "bytes": f.integer("bytes", 0),
            "sha256": f.get("sha256", str), "groups": groups}


def read_manifest(root: Path) -> dict[str, Any]:
    """The checked manifest of the DiskBank at ``root`` (see the module docstring).

    Raises:
        BankFormatError: naming the manifest and the field that is wrong.
    """
    mpath = root / MANIFEST
    m = read_json(mpath, fail, "manifest file is missing (create a bank with DiskBank.create)",
                  what="DiskBank manifest")
    if not isinstance(m, dict) or m.get("kind") != KIND:
        raise fail(mpath, "not a DiskBank manifest")
    version = m.get("format_version")
    if type(version) is not int or version not in READABLE_DISKBANK_VERSIONS:
        raise BankFormatError(f"{mpath}: unknown format_version {version!r:.80} (this nsr_gym "
                              f"reads {READABLE_DISKBANK_VERSIONS}). Open it with the nsr_gym "
                              "version that wrote it, or rebuild the DiskBank")
    f = Fields(m, mpath, fail)
    out = {"key_dim": f.integer("key_dim", 1, MAX_KEY_DIM),
           "shard_size": f.integer("shard_size", 1, MAX_SHARD_SIZE),
           "generation": f.integer("generation", 0), "n_entries": f.integer("n_entries", 0,
                                                                            MAX_ENTRIES)}
    n, size = out["n_entries"], out["shard_size"]
    check_key_matrix(max(n, 16), out["key_dim"], mpath, fail)
    shards = [_shard_record(s, mpath, size) for s in f.get("shards", list)]
    counts = [s["n_entries"] for s in shards]
    if len(shards) != math.ceil(n / size) or sum(counts) != n or \
            any(c != size for c in counts[:-1]):
        raise fail(mpath, f"shards hold {counts} entries; n_entries={n} with shard_size={size} "
                   "needs full shards and one partial last one")
    index = m.get("index")
    if index is not None:
        fi = Fields(index, mpath, fail)
        index = {"file": _file_name(fi.get("file", str), mpath, "index"),
                 "sha256": fi.get("sha256", str)}
    elif n:
        raise fail(mpath, f"n_entries={n} but no index file")
    if (version >= 2 or _SHA in m) and m.get(_SHA) != sha256_json(m, exclude=_SHA):
        raise fail(mpath, "the manifest's contents do not match its manifest_sha256: modified "
                   "or corrupted")
    return {**out, "shards": shards, "index": index}


def read_index(root: Path, m: dict[str, Any]) -> dict[str, np.ndarray]:
    """The index arrays the manifest ``m`` names, checked (see the module docstring)."""
    ipath = root / m["index"]["file"]
    if not ipath.is_file() or sha256_file(ipath) != m["index"]["sha256"]:
        raise fail(ipath, "index file is missing or its sha256 differs from the manifest's")
    try:
        idx = np_load_file(str(ipath))
    except Exception as exc:  # safetensors' own error types
        raise fail(ipath, f"index could not be parsed ({exc})") from exc
    n, d = m["n_entries"], m["key_dim"]
    want = {"keys": ((n, d), np.float32), "served_offsets": ((n + 1,), np.int64),
            **{name: ((n,), np.int64) for name in INT_FIELDS}}
    if set(idx) != {*want, "served"}:
        raise fail(ipath, f"index holds {sorted(idx)}, expected {sorted({*want, 'served'})}")
    for name, (shape, dtype) in want.items():
        if idx[name].shape != shape or idx[name].dtype != dtype:
            raise fail(ipath, f"index {name} is {idx[name].dtype} {idx[name].shape}, the "
                       f"manifest says {np.dtype(dtype)} {shape}")
    served, off = idx["served"], idx["served_offsets"]
    if served.ndim != 1 or served.dtype != np.int64:
        raise fail(ipath, "index served must be a flat int64 array")
    problems = _index_value_problems(idx, m)
    if off[0] != 0 or off[-1] != len(served) or np.any(np.diff(off) < 0):
        problems.append("served_offsets are not monotone from 0 to len(served)")
    if problems:
        raise fail(ipath, "; ".join(problems))
    return idx


def _index_value_problems(idx: dict[str, np.ndarray], m: dict[str, Any]) -> list[str]:
    problems = []
    if not np.isfinite(idx["keys"]).all():
        problems.append("keys hold NaN or inf")
    for name, lo in (("owner", -1), ("usage", 0), ("group", 0), ("row", 0)):
        if idx[name].size and idx[name].min() < lo:
            problems.append(f"{name} holds values below {lo}")
    if idx["served"].size and idx["served"].min() < 0:
        problems.append("served holds task ids below 0")
    shard = np.arange(m["n_entries"]) // m["shard_size"]
    n_groups = np.array([len(s["groups"]) for s in m["shards"]], dtype=np.int64)
    n_rows = np.array([s["n_entries"] for s in m["shards"]], dtype=np.int64)
    if len(shard) and (np.any(idx["group"] >= n_groups[shard]) or
                       np.any(idx["row"] >= n_rows[shard])):
        problems.append("an entry's group or row lies outside its shard")
    elif len(shard):
        cell = (shard * (m["shard_size"] + 1) + idx["group"]) * (m["shard_size"] + 1) + idx["row"]
        if len(np.unique(cell)) != len(cell):
            problems.append("two entries share a shard row")
    return problems


def check_shard(handle: Any, record: dict[str, Any], path: Path) -> None:
    """An opened shard's header agrees with its manifest record: the tensors of every group, no
    others, payload dtypes only, and at least one row per entry of the shard."""
    names = {f"g{g}/{name}" for g, group in enumerate(record["groups"]) for name in group}
    if set(handle.keys()) != names:
        raise fail(path, "shard tensors differ from the manifest's groups")
    for name in sorted(names):
        sl = handle.get_slice(name)
        shape = sl.get_shape()
        if sl.get_dtype() not in _SHARD_DTYPES or not shape or shape[0] > record["n_entries"]:
            raise fail(path, f"shard tensor {name} is {sl.get_dtype()} {shape}; payloads are "
                       f"float16/32/64 with at most {record['n_entries']} rows")
