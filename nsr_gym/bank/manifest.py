"""The bank manifest: its fields, their checks, and the checksums it carries.

``manifest.json`` names the format version, the bank parameters (capacity, key_dim, eviction,
byte budget, insertion counter), per entry its metadata, tensor specs and sha256, the sha256 of
the tensor file and of ``geometry.json`` (null where the bank has none), and its own checksum.
:func:`read_manifest` parses it through the bounded JSON reader; :func:`bank_parameters` and
:func:`declared_entry` check every declared size, count, shape and dtype against
:mod:`nsr_gym.bank.checks`' limits before anything is allocated; :func:`check_directory` checks
that the manifest covers everything the bank directory holds. :mod:`nsr_gym.bank.files` reads and
writes banks with these.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nsr_gym.atomic import sha256_bytes, sha256_file, sha256_json
from nsr_gym.bank.checks import (
    MAX_CAPACITY,
    MAX_KEY_DIM,
    BankFormatError,
    Fields,
    check_key_matrix,
    read_json,
    spec_nbytes,
)

__all__ = ["BANK_FORMAT_VERSION", "GEOMETRY_FILE", "GEOMETRY_SHA", "INT_FIELDS", "KEY_TENSOR",
           "MANIFEST", "MANIFEST_SHA", "READABLE_BANK_VERSIONS", "TENSORS", "bank_parameters",
           "check_directory", "declared_entry", "entry_sha256", "fail", "manifest_sha256",
           "read_manifest", "spec"]

BANK_FORMAT_VERSION: int = 2
#: Versions the loader reads. Version 2 added ``manifest_sha256`` (the checksum of the
#: manifest's own contents), so a flipped byte in the metadata is detected too. Two optional
#: version-2 fields followed: ``capacity_bytes`` (the byte budget; absent or null: none) and
#: ``geometry_sha256`` (null: the bank has no ``geometry.json``; absent: written before the
#: manifest covered it, so an uncovered ``geometry.json`` loads with a warning).
READABLE_BANK_VERSIONS: tuple[int, ...] = (1, 2)

MANIFEST = "manifest.json"
TENSORS = "bank.safetensors"
#: The env geometry a saved bank carries (``save_bank(geometry=...)`` or ``attach_geometry``).
GEOMETRY_FILE = "geometry.json"
MANIFEST_SHA = "manifest_sha256"
GEOMETRY_SHA = "geometry_sha256"
#: Name of the tensor that holds an entry's key in the file (no payload tensor may use it).
KEY_TENSOR = "__key__"
INT_FIELDS = ("owner", "usage", "created_step", "last_used_step", "inserted_order")
#: Lower bounds of the integer fields (owner -1: no task; steps may be re-based below 0).
INT_LOWER = {"owner": -1, "usage": 0, "inserted_order": 0}
_FIX = "Restore the bank from a backup, or re-create it and save it with TaskKnowledgeBank.save"


def fail(file: Path, problem: str) -> BankFormatError:
    return BankFormatError(f"{file}: {problem}. {_FIX}")


def read_manifest(mpath: Path) -> dict[str, Any]:
    manifest = read_json(mpath, fail)
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise fail(mpath, "no format_version field; this is not a bank manifest")
    version = manifest["format_version"]
    if type(version) is not int or version not in READABLE_BANK_VERSIONS:
        raise BankFormatError(
            f"{mpath}: unknown format_version {version!r:.80} (this nsr_gym reads "
            f"{READABLE_BANK_VERSIONS}). Load it with the nsr_gym version that wrote it, or "
            "re-save it")
    return manifest


def bank_parameters(m: Fields) -> dict[str, Any]:
    """Capacity, key_dim, eviction and byte budget, checked against the limits."""
    cap, dim = m.get("capacity", int), m.get("key_dim", int)
    problems = [f"{name} is {v}; it must be in [1, {hi}] (the limit of this version)"
                for name, v, hi in (("capacity", cap, MAX_CAPACITY), ("key_dim", dim, MAX_KEY_DIM))
                if not 1 <= v <= hi]
    if problems:
        raise fail(m.file, f"bad bank parameters ({'; '.join(problems)})")
    check_key_matrix(cap, dim, m.file, fail)
    return {"capacity": cap, "key_dim": dim, "eviction": m.get("eviction", str),
            "capacity_bytes": m.optional_integer("capacity_bytes", 1)}


def declared_entry(f: Fields, params: Mapping[str, Any],
                    taken: Mapping[int, Any]) -> dict[str, Any]:
    """One manifest entry's metadata and tensor specs, checked (``taken``: slots read so far)."""
    slot, key_dim = f.integer("slot"), params["key_dim"]
    if not 0 <= slot < params["capacity"] or slot in taken:
        raise fail(f.file, f"slot {slot} is out of range or repeated")
    specs = f.get("tensors", dict)
    key_spec = specs.get(KEY_TENSOR)
    # ``!=`` alone would let 4.0 or true stand for 4 or 1 in the shape: JSON numbers compare equal.
    if key_spec != {"shape": [key_dim], "dtype": "float32"} or \
            any(type(n) is not int for n in key_spec["shape"]):
        raise fail(f.file, f"slot {slot} needs its key declared as {KEY_TENSOR!r}: "
                   f"{{'shape': [{key_dim}], 'dtype': 'float32'}} (got {key_spec!r:.80})")
    nbytes = sum(spec_nbytes(spec, f"slot{slot}/{name}", f.file, fail)
                 for name, spec in specs.items() if name != KEY_TENSOR)
    meta = {name: f.integer(name, INT_LOWER.get(name, -(1 << 62))) for name in INT_FIELDS}
    tasks = f.get("tasks_served", list)
    if not all(type(i) is int and 0 <= i for i in tasks):
        raise fail(f.file, f"slot {slot} tasks_served must be a list of ints >= 0")
    return {"slot": slot, "specs": specs, "nbytes": nbytes + 4 * key_dim, "meta": meta,
            "tasks": tasks, "pinned": f.get("pinned", bool), "sha256": f.get("sha256", str)}


def check_directory(root: Path, m: Fields) -> None:
    """Everything in ``root`` is covered by the manifest: no stray files, and ``geometry.json``
    (parsed first, so a malformed one is named as such) present exactly when the manifest names
    it, with the sha256 it names."""
    known = {MANIFEST, TENSORS, GEOMETRY_FILE}
    stray = sorted(p.name for p in root.iterdir() if p.name not in known)
    if stray:
        raise fail(root, f"holds files no manifest covers: {stray[:10]} (a bank directory "
                    f"holds {sorted(known)} only); move them elsewhere")
    geo = root / GEOMETRY_FILE
    if geo.exists():
        if not isinstance(read_json(geo, fail, what="bank geometry"), dict):
            raise fail(geo, "expected a JSON object")
    if GEOMETRY_SHA not in m.d:
        if geo.exists():
            warnings.warn(f"{geo} is not covered by the manifest of this bank (saved by an "
                          "earlier nsr_gym); save the bank again to cover it", stacklevel=4)
        return
    want = m.d[GEOMETRY_SHA]
    if want is not None and not isinstance(want, str):
        raise fail(m.file, f"field {GEOMETRY_SHA!r} must be a sha256 string or null")
    if want is None and geo.exists():
        raise fail(geo, "is not covered by the manifest (its geometry_sha256 is null): "
                    "added or copied in after the save. Delete it, or save the bank with the "
                    "env that made it")
    if want is not None and not geo.is_file():
        raise fail(geo, "is missing, but the manifest covers one: deleted. Restore it")
    if want is not None and sha256_file(geo) != want:
        raise fail(geo, "sha256 differs from the manifest's geometry_sha256: replaced or "
                    "modified")


# ----------------------------------------------------------------------------- checksums


def spec(t: torch.Tensor) -> dict[str, Any]:
    """Manifest description of a tensor, e.g. ``{"shape": [16, 3], "dtype": "float32"}``."""
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def entry_sha256(named: dict[str, torch.Tensor]) -> str:
    """sha256 of the raw (little-endian) bytes of ``named``'s tensors, in sorted-name order."""
    return sha256_bytes(b"".join(
        named[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for name in sorted(named)))


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without its own field."""
    return sha256_json(manifest, exclude=MANIFEST_SHA)
