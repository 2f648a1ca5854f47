"""Bank files: a TaskKnowledgeBank on disk, written atomically and read without pickle.

A bank directory holds ``bank.safetensors`` (every entry's tensors and key) and
``manifest.json`` (format version, bank parameters, per-entry metadata, tensor specs and sha256
checksums, and the manifest's own checksum). :func:`save_bank` writes both in a temporary
sibling directory and swaps it into place (:func:`nsr_gym.atomic.replace_dir`); :func:`load_bank`
checks everything before it returns, and any problem is a :class:`BankFormatError` naming the
file and what to do. :meth:`TaskKnowledgeBank.save` and :meth:`TaskKnowledgeBank.load` call these.

This module knows the file format, not the bank class: it reads and writes any bank with the
small public surface of :class:`StoredBank` (``nsr_gym.bank.core`` imports this module, never
the reverse).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import load_file, save_file

from nsr_gym.atomic import (
    replace_dir,
    sha256_bytes,
    sha256_file,
    sha256_json,
    temp_dir_beside,
)
from nsr_gym.bank.entry import BankEntry

__all__ = ["BANK_FORMAT_VERSION", "KEY_TENSOR", "READABLE_BANK_VERSIONS", "BankFormatError",
           "StoredBank", "entry_sha256", "load_bank", "manifest_sha256", "read_json", "save_bank"]

BANK_FORMAT_VERSION: int = 2
#: Versions :func:`load_bank` reads. Version 2 added ``manifest_sha256`` (the checksum of the
#: manifest's own contents), so a flipped byte in the metadata is detected too.
READABLE_BANK_VERSIONS: tuple[int, ...] = (1, 2)

_MANIFEST = "manifest.json"
_TENSORS = "bank.safetensors"
_MANIFEST_SHA = "manifest_sha256"
#: Name of the tensor that holds an entry's key in the file (no payload tensor may use it).
KEY_TENSOR = "__key__"
_INT_FIELDS = ("owner", "usage", "created_step", "last_used_step", "inserted_order")
_FIX = "Restore the bank from a backup, or re-create it and save it with TaskKnowledgeBank.save"


class BankFormatError(ValueError):
    """A bank file is corrupt, truncated, of an unknown version, or does not match; the message
    names the file, what is wrong, and what to do."""


class StoredBank(Protocol):
    """What :func:`save_bank` and :func:`load_bank` need of a bank (``TaskKnowledgeBank`` has it).

    Attributes:
        capacity: Slots ``K``.
        key_dim: Key length ``d``.
        eviction: Eviction policy name.
        slots: ``K`` entries or ``None``.
        next_inserted_order: The insertion counter the next insert gets (FIFO order).
    """

    capacity: int
    key_dim: int
    eviction: str
    slots: list[BankEntry | None]

    def __init__(self, capacity: int, key_dim: int, eviction: str) -> None: ...

    @property
    def next_inserted_order(self) -> int: ...

    def restore(self, entries: Mapping[int, BankEntry], next_inserted_order: int) -> None: ...


BankT = TypeVar("BankT", bound=StoredBank)


# ----------------------------------------------------------------------------- writing


def save_bank(bank: StoredBank, path: str | os.PathLike) -> None:
    """Write the bank atomically to directory ``path`` (created or replaced).

    Both files are written and fsynced in a temporary sibling directory, then renamed into
    place; an existing bank is renamed aside first and deleted only once the new one is in
    place, so a crash at any point leaves a complete bank on disk (see :func:`load_bank`).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a bank directory; choose another path")
    tmp = temp_dir_beside(root, "tmp")
    try:
        _write(bank, tmp)
        # The previous bank stays aside until the swap is fsynced; it goes with any crash's below.
        replace_dir(tmp, root, keep_old=lambda old: None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in _backups(root):  # the new bank is complete: old copies (ours or a crash's) go
        shutil.rmtree(stale, ignore_errors=True)


def _write(bank: StoredBank, folder: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for k, e in enumerate(bank.slots):
        if e is None:
            continue
        # Clone: safetensors refuses tensors that share storage (e.g. views of one tensor).
        named = {n: t.detach().cpu().contiguous().clone() for n, t in e.tensors.items()}
        named[KEY_TENSOR] = torch.from_numpy(e.key.copy())
        tensors.update({f"slot{k}/{n}": t for n, t in named.items()})
        meta = {f: int(getattr(e, f)) for f in _INT_FIELDS}
        entries.append({"slot": k, **meta, "pinned": bool(e.pinned),
                        "tasks_served": [int(i) for i in e.tasks_served],
                        "tensors": {n: _spec(t) for n, t in sorted(named.items())},
                        "sha256": entry_sha256(named)})
    # Straight into the temporary directory: the directory swap is what makes the save atomic.
    save_file(tensors, str(folder / _TENSORS), metadata={"format": "pt"})
    manifest = {"format_version": BANK_FORMAT_VERSION, "capacity": bank.capacity,
                "key_dim": bank.key_dim, "eviction": bank.eviction,
                "next_inserted_order": bank.next_inserted_order,
                "safetensors_sha256": sha256_file(folder / _TENSORS), "entries": entries}
    manifest[_MANIFEST_SHA] = manifest_sha256(manifest)
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------- reading


def load_bank(path: str | os.PathLike, cls: type[BankT]) -> BankT:
    """Load a bank written by :func:`save_bank` as a ``cls``, verifying version, shapes and
    checksums (:meth:`TaskKnowledgeBank.load` passes its class).

    If ``path`` is missing because a save was killed between its two renames, the previous
    bank (renamed aside) is loaded instead, with a warning.

    Raises:
        BankFormatError: for a missing, unparseable, truncated, modified or inconsistent file.
    """
    root = Path(path)
    if not root.is_dir():
        backups = sorted(_backups(root), key=lambda p: p.stat().st_mtime)
        if not backups:
            raise BankFormatError(f"{root}: no bank directory here. Check the path, or create "
                                  "a bank with TaskKnowledgeBank.save(path)")
        warnings.warn(f"{root} is missing after an interrupted save; loading the previous bank "
                      f"from {backups[-1]} (save again to restore {root})", stacklevel=2)
        root = backups[-1]
    mpath, tpath = root / _MANIFEST, root / _TENSORS
    m = _Fields(_read_manifest(mpath), mpath)
    try:
        bank = cls(m.integer("capacity"), m.integer("key_dim"), m.get("eviction", str))
    except ValueError as exc:
        raise _fail(mpath, f"bad bank parameters ({exc})") from exc
    next_order = m.integer("next_inserted_order")
    if not tpath.is_file():
        raise _fail(tpath, "tensor file is missing")
    if sha256_file(tpath) != m.get("safetensors_sha256", str):
        raise _fail(tpath, "sha256 differs from the manifest's: truncated or modified")
    try:  # safetensors raises its own error types for malformed headers and offsets
        stored = load_file(str(tpath))
    except Exception as exc:
        raise _fail(tpath, f"could not be parsed ({exc})") from exc
    expected: set[str] = set()
    entries: dict[int, BankEntry] = {}
    for raw in m.get("entries", list):
        slot, entry = _read_entry(_Fields(raw, mpath), bank, entries, stored, tpath, expected)
        entries[slot] = entry
    extra = sorted(set(stored) - expected)
    if extra:
        raise _fail(tpath, f"tensors not listed in the manifest: {extra}")
    # Last, so the checks above name the specific problem when there is one. A version-1
    # manifest has no checksum; one that carries it anyway (a flipped version byte) is checked.
    if (m.d["format_version"] >= 2 or _MANIFEST_SHA in m.d) and \
            m.d.get(_MANIFEST_SHA) != manifest_sha256(m.d):
        raise _fail(mpath, "the manifest's contents do not match its manifest_sha256: "
                    "modified or corrupted")
    bank.restore(entries, next_order)
    return bank


def _read_entry(f: _Fields, bank: StoredBank, taken: Mapping[int, BankEntry],
                stored: dict[str, torch.Tensor], tpath: Path,
                expected: set[str]) -> tuple[int, BankEntry]:
    """One manifest entry and its tensors, checked (``taken``: the slots read so far); adds its
    tensor names to ``expected``."""
    slot, key_dim = f.integer("slot"), bank.key_dim
    if not 0 <= slot < bank.capacity or slot in taken:
        raise _fail(f.file, f"slot {slot} is out of range or repeated")
    named: dict[str, torch.Tensor] = {}
    for name, spec in f.get("tensors", dict).items():
        full = f"slot{slot}/{name}"
        expected.add(full)
        if full not in stored:
            raise _fail(tpath, f"tensor {full!r} listed in the manifest is missing")
        if spec != _spec(stored[full]):
            raise _fail(tpath, f"tensor {full!r} is {_spec(stored[full])} but the "
                        f"manifest says {spec}")
        named[name] = stored[full]
    if entry_sha256(named) != f.get("sha256", str):
        raise _fail(tpath, f"checksum of slot {slot}'s tensors does not match the manifest")
    bad = [n for n, t in named.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:  # a well-formed file can still carry NaN/inf, which the bank never holds
        raise _fail(tpath, f"slot {slot} tensors {sorted(bad)} hold NaN or inf")
    key = named.pop(KEY_TENSOR, None)
    if key is None or _spec(key) != _spec(torch.zeros(key_dim)):
        raise _fail(f.file, f"slot {slot} needs a float32 ({key_dim},) {KEY_TENSOR} tensor")
    meta = {name: f.integer(name) for name in _INT_FIELDS}
    tasks = f.get("tasks_served", list)
    if not all(type(i) is int for i in tasks):
        raise _fail(f.file, f"slot {slot} tasks_served must be a list of ints")
    return slot, BankEntry(key.numpy().copy(), named, tasks_served=tasks,
                           pinned=f.get("pinned", bool), **meta)


def _fail(file: Path, problem: str) -> BankFormatError:
    return BankFormatError(f"{file}: {problem}. {_FIX}")


def read_json(path: Path, fail: Callable[[Path, str], BankFormatError] = _fail,
              missing: str = "manifest file is missing") -> Any:
    """The JSON document at ``path``; a missing or malformed file is ``fail(path, problem)``."""
    if not path.is_file():
        raise fail(path, missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(path, f"not valid JSON ({exc})") from exc


def _read_manifest(mpath: Path) -> dict[str, Any]:
    manifest = read_json(mpath)
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise _fail(mpath, "no format_version field; this is not a bank manifest")
    version = manifest["format_version"]
    if type(version) is not int or version not in READABLE_BANK_VERSIONS:
        raise BankFormatError(
            f"{mpath}: unknown format_version {version!r} (this nsr_gym reads "
            f"{READABLE_BANK_VERSIONS}). Load it with the nsr_gym version that wrote it, or "
            "re-save it")
    return manifest


def _backups(root: Path) -> list[Path]:
    """Previous banks that :func:`save_bank` renamed aside next to ``root``."""
    prefix = f".{root.name}.old-"
    if not root.parent.is_dir():
        return []
    return [p for p in root.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]


class _Fields:
    """Typed access to a manifest dict; a missing or mistyped field is a BankFormatError."""

    def __init__(self, d: Any, file: Path) -> None:
        if not isinstance(d, dict):
            raise _fail(file, f"expected a JSON object, got {type(d).__name__}")
        self.d, self.file = d, file

    def get(self, name: str, typ: type) -> Any:
        v = self.d.get(name)
        # bool is a subclass of int; an int field holding true/false is still malformed.
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise _fail(self.file, f"field {name!r} is missing or not {typ.__name__} (got {v!r})")
        return v

    def integer(self, name: str) -> int:
        return self.get(name, int)


# ----------------------------------------------------------------------------- checksums


def _spec(t: torch.Tensor) -> dict[str, Any]:
    """Manifest description of a tensor, e.g. ``{"shape": [16, 3], "dtype": "float32"}``."""
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def entry_sha256(named: dict[str, torch.Tensor]) -> str:
    """sha256 of the raw (little-endian) bytes of ``named``'s tensors, in sorted-name order."""
    return sha256_bytes(b"".join(
        named[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for name in sorted(named)))


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without its own field."""
    return sha256_json(manifest, exclude=_MANIFEST_SHA)
