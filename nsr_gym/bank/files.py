"""Bank files: a TaskKnowledgeBank on disk, written atomically and read without pickle.

A bank directory holds ``bank.safetensors`` (every entry's tensors and key), ``manifest.json``
(format version, bank parameters, per-entry metadata, tensor specs and sha256 checksums, the
sha256 of ``geometry.json`` where the bank has one, and the manifest's own checksum), and
optionally ``geometry.json`` (what env the bank fits, :mod:`nsr_gym.bank.geometry`). The manifest
covers everything the directory holds: a ``geometry.json`` it does not name, one it names that is
missing or differs, or any other file, is a :class:`BankFormatError`.

:func:`save_bank` writes the files in a temporary sibling directory and swaps it into place
(:func:`nsr_gym.atomic.replace_dir`); :func:`attach_geometry` adds or replaces ``geometry.json``
the same way. :func:`load_bank` validates before it allocates: the manifest is read through the
bounded JSON reader, every declared size, count, shape and dtype is checked against
:mod:`nsr_gym.bank.checks`' limits, then the tensor file against the manifest (checksum, sizes,
specs, finite values), the manifest against its own checksum, and only then is a bank built.

This module knows the file format, not the bank class: it reads and writes any bank with the
small public surface of :class:`StoredBank` (``nsr_gym.bank.core`` imports this module, never
the reverse).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import load_file, save_file

from nsr_gym.atomic import atomic_write_text, replace_dir, sha256_file, temp_dir_beside
from nsr_gym.bank.checks import BankFormatError, Fields, read_json
from nsr_gym.bank.entry import BankEntry
from nsr_gym.bank.manifest import (
    BANK_FORMAT_VERSION,
    GEOMETRY_FILE,
    GEOMETRY_SHA,
    INT_FIELDS,
    KEY_TENSOR,
    MANIFEST,
    MANIFEST_SHA,
    READABLE_BANK_VERSIONS,
    TENSORS,
    bank_parameters,
    check_directory,
    declared_entry,
    entry_sha256,
    fail,
    manifest_sha256,
    read_manifest,
    spec,
)

__all__ = ["BANK_FORMAT_VERSION", "GEOMETRY_FILE", "KEY_TENSOR", "READABLE_BANK_VERSIONS",
           "BankFormatError", "StoredBank", "attach_geometry", "entry_sha256", "load_bank",
           "manifest_sha256", "read_json", "save_bank"]


class StoredBank(Protocol):
    """What :func:`save_bank` and :func:`load_bank` need of a bank (``TaskKnowledgeBank`` has it).

    Attributes:
        capacity: Slots ``K``.
        key_dim: Key length ``d``.
        eviction: Eviction policy name.
        capacity_bytes: Byte budget (``None``: slots only).
        slots: ``K`` entries or ``None``.
        next_inserted_order: The insertion counter the next insert gets (FIFO order).
    """

    capacity: int
    key_dim: int
    eviction: str
    capacity_bytes: int | None
    slots: list[BankEntry | None]

    def __init__(self, capacity: int, key_dim: int, eviction: str,
                 capacity_bytes: int | None = None) -> None: ...

    @property
    def next_inserted_order(self) -> int: ...

    def restore(self, entries: Mapping[int, BankEntry], next_inserted_order: int) -> None: ...


BankT = TypeVar("BankT", bound=StoredBank)


# ----------------------------------------------------------------------------- writing


def save_bank(bank: StoredBank, path: str | os.PathLike,
              geometry: Mapping[str, Any] | None = None) -> None:
    """Write the bank atomically to directory ``path`` (created or replaced), with
    ``geometry.json`` (covered by the manifest) when ``geometry`` is given.

    The files are written and fsynced in a temporary sibling directory, then renamed into
    place; an existing bank is renamed aside first and deleted only once the new one is in
    place, so a crash at any point leaves a complete bank on disk (see :func:`load_bank`).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a bank directory; choose another path")
    tmp = temp_dir_beside(root, "tmp")
    try:
        _write(bank, tmp, geometry)
        # The previous bank stays aside until the swap is fsynced; it goes with any crash's below.
        replace_dir(tmp, root, keep_old=lambda old: None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in _backups(root):  # the new bank is complete: old copies (ours or a crash's) go
        shutil.rmtree(stale, ignore_errors=True)


def _write(bank: StoredBank, folder: Path, geometry: Mapping[str, Any] | None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for k, e in enumerate(bank.slots):
        if e is None:
            continue
        # Clone: safetensors refuses tensors that share storage (e.g. views of one tensor).
        named = {n: t.detach().cpu().contiguous().clone() for n, t in e.tensors.items()}
        named[KEY_TENSOR] = torch.from_numpy(e.key.copy())
        tensors.update({f"slot{k}/{n}": t for n, t in named.items()})
        meta = {f: int(getattr(e, f)) for f in INT_FIELDS}
        entries.append({"slot": k, **meta, "pinned": bool(e.pinned),
                        "tasks_served": [int(i) for i in e.tasks_served],
                        "tensors": {n: spec(t) for n, t in sorted(named.items())},
                        "sha256": entry_sha256(named)})
    # Straight into the temporary directory: the directory swap is what makes the save atomic.
    save_file(tensors, str(folder / TENSORS), metadata={"format": "pt"})
    geometry_sha = None
    if geometry is not None:
        (folder / GEOMETRY_FILE).write_text(_geometry_text(geometry), encoding="utf-8")
        geometry_sha = sha256_file(folder / GEOMETRY_FILE)
    manifest = {"format_version": BANK_FORMAT_VERSION, "capacity": bank.capacity,
                "key_dim": bank.key_dim, "eviction": bank.eviction,
                "capacity_bytes": getattr(bank, "capacity_bytes", None),
                "next_inserted_order": bank.next_inserted_order,
                "safetensors_sha256": sha256_file(folder / TENSORS),
                GEOMETRY_SHA: geometry_sha, "entries": entries}
    manifest[MANIFEST_SHA] = manifest_sha256(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _geometry_text(geometry: Mapping[str, Any]) -> str:
    return json.dumps(dict(geometry), indent=1) + "\n"


def attach_geometry(path: str | os.PathLike, geometry: Mapping[str, Any]) -> None:
    """Add (or replace) the ``geometry.json`` of the bank saved at ``path``, covered by its
    manifest's ``geometry_sha256``, atomically: the directory is rebuilt aside (the tensor file
    hard-linked, or copied) and swapped in, so a crash leaves the bank as it was or as it will be.

    A directory without a bank manifest just gets the file, written atomically.

    Raises:
        BankFormatError: when the manifest is malformed or fails its own checksum.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        atomic_write_text(root / GEOMETRY_FILE, _geometry_text(geometry))
        return
    manifest = read_manifest(mpath)
    if (manifest["format_version"] >= 2 or MANIFEST_SHA in manifest) and \
            manifest.get(MANIFEST_SHA) != manifest_sha256(manifest):
        raise fail(mpath, "the manifest's contents do not match its manifest_sha256: "
                    "modified or corrupted")
    tmp = temp_dir_beside(root, "tmp")
    try:
        try:
            os.link(root / TENSORS, tmp / TENSORS)
        except OSError:
            shutil.copyfile(root / TENSORS, tmp / TENSORS)
        (tmp / GEOMETRY_FILE).write_text(_geometry_text(geometry), encoding="utf-8")
        manifest = {**manifest, "format_version": BANK_FORMAT_VERSION,
                    GEOMETRY_SHA: sha256_file(tmp / GEOMETRY_FILE)}
        manifest[MANIFEST_SHA] = manifest_sha256(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- reading


def load_bank(path: str | os.PathLike, cls: type[BankT]) -> BankT:
    """Load a bank written by :func:`save_bank` as a ``cls``, validating everything first
    (:meth:`TaskKnowledgeBank.load` passes its class); see the module docstring for the order.

    If ``path`` is missing because a save was killed between its two renames, the previous
    bank (renamed aside) is loaded instead, with a warning.

    Raises:
        BankFormatError: for a missing, unparseable, truncated, modified, over-limit or
            inconsistent file.
    """
    root = _existing_root(Path(path))
    mpath, tpath = root / MANIFEST, root / TENSORS
    m = Fields(read_manifest(mpath), mpath, fail)
    params = bank_parameters(m)
    next_order = m.integer("next_inserted_order", 0)
    raw_entries = m.get("entries", list)
    if len(raw_entries) > params["capacity"]:
        raise fail(mpath, f"{len(raw_entries)} entries for {params['capacity']} slots")
    declared: dict[int, dict[str, Any]] = {}
    for raw in raw_entries:  # metadata and specs only: nothing is allocated for them
        plan = declared_entry(Fields(raw, mpath, fail), params, declared)
        declared[plan["slot"]] = plan
    check_directory(root, m)
    stored = _tensor_file(tpath, m, sum(p["nbytes"] for p in declared.values()))
    expected: set[str] = set()
    entries = {slot: _entry_from(plan, stored, tpath, expected)
               for slot, plan in declared.items()}
    extra = sorted(set(stored) - expected)
    if extra:
        raise fail(tpath, f"tensors not listed in the manifest: {extra[:10]}")
    # Last, so the checks above name the specific problem when there is one. A version-1
    # manifest has no checksum; one that carries it anyway (a flipped version byte) is checked.
    if (m.d["format_version"] >= 2 or MANIFEST_SHA in m.d) and \
            m.d.get(MANIFEST_SHA) != manifest_sha256(m.d):
        raise fail(mpath, "the manifest's contents do not match its manifest_sha256: "
                    "modified or corrupted")
    held = sum(e.nbytes for e in entries.values())
    if params["capacity_bytes"] is not None and held > params["capacity_bytes"]:
        raise fail(mpath, f"its entries hold {held} bytes, over its capacity_bytes "
                    f"{params['capacity_bytes']}")
    try:
        bank = cls(**params)
    except ValueError as exc:
        raise fail(mpath, f"bad bank parameters ({exc})") from exc
    bank.restore(entries, next_order)
    return bank


def _existing_root(root: Path) -> Path:
    """``root``, or after a save killed between its renames, the previous bank (a warning)."""
    if root.is_dir():
        return root
    backups = sorted(_backups(root), key=lambda p: p.stat().st_mtime)
    if not backups:
        raise BankFormatError(f"{root}: no bank directory here. Check the path, or create "
                              "a bank with TaskKnowledgeBank.save(path)")
    warnings.warn(f"{root} is missing after an interrupted save; loading the previous bank "
                  f"from {backups[-1]} (save again to restore {root})", stacklevel=3)
    return backups[-1]


def _tensor_file(tpath: Path, m: Fields, declared: int) -> dict[str, torch.Tensor]:
    """The tensor file's tensors, after its checksum and the declared sizes match it."""
    if not tpath.is_file():
        raise fail(tpath, "tensor file is missing")
    if sha256_file(tpath) != m.get("safetensors_sha256", str):
        raise fail(tpath, "sha256 differs from the manifest's: truncated or modified")
    size = tpath.stat().st_size
    if size < 8 + declared:
        raise fail(tpath, f"the manifest declares {declared} tensor bytes, the file holds "
                    f"{size}: truncated or modified")
    try:  # safetensors raises its own error types for malformed headers and offsets
        return load_file(str(tpath))
    except Exception as exc:
        raise fail(tpath, f"could not be parsed ({exc})") from exc


def _entry_from(plan: dict[str, Any], stored: dict[str, torch.Tensor], tpath: Path,
                expected: set[str]) -> BankEntry:
    """The entry ``plan`` declares, from the loaded tensors; adds its names to ``expected``."""
    slot = plan["slot"]
    named: dict[str, torch.Tensor] = {}
    for name, declared in plan["specs"].items():
        full = f"slot{slot}/{name}"
        expected.add(full)
        if full not in stored:
            raise fail(tpath, f"tensor {full!r} listed in the manifest is missing")
        if declared != spec(stored[full]):
            raise fail(tpath, f"tensor {full!r} is {spec(stored[full])} but the "
                       f"manifest says {declared}")
        named[name] = stored[full]
    if entry_sha256(named) != plan["sha256"]:
        raise fail(tpath, f"checksum of slot {slot}'s tensors does not match the manifest")
    bad = [n for n, t in named.items() if not bool(t.isfinite().all())]
    if bad:  # a well-formed file can still carry NaN/inf, which the bank never holds
        raise fail(tpath, f"slot {slot} tensors {sorted(bad)} hold NaN or inf")
    key = named.pop(KEY_TENSOR)
    return BankEntry(key.numpy().copy(), named, tasks_served=plan["tasks"],
                     pinned=plan["pinned"], **plan["meta"])


def _backups(root: Path) -> list[Path]:
    """Previous banks that :func:`save_bank` renamed aside next to ``root``."""
    prefix = f".{root.name}.old-"
    if not root.parent.is_dir():
        return []
    return [p for p in root.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]


