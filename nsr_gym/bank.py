"""The TaskKnowledgeBank: compress, reserve and recall LoRA subspaces (NSR cycle, steps 1-3).

A bank holds at most ``K`` entries in fixed slots. Each entry is keyed by a task embedding and
carries a payload of tensors (compressed LoRA factors, a task head, or an analytic learner's
state). Slot indices never change while an entry lives, because agents address slots directly
("load slot k"). Banks are saved atomically as ``bank.safetensors`` plus ``manifest.json``
(format version, metadata and sha256 checksums) and loaded without pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

BANK_FORMAT_VERSION: int = 2
#: Versions :meth:`TaskKnowledgeBank.load` reads. Version 2 added ``manifest_sha256`` (the
#: checksum of the manifest's own contents), so a flipped byte in the metadata is detected too.
READABLE_BANK_VERSIONS: tuple[int, ...] = (1, 2)
EVICTION_POLICIES: tuple[str, ...] = ("lru", "fifo", "lfu", "least_unique", "reject")

_MANIFEST = "manifest.json"
_TENSORS = "bank.safetensors"
_KEY = "__key__"


class BankFormatError(ValueError):
    """A bank file is corrupt, truncated, of an unknown version, or does not match; the message
    names the file, what is wrong, and what to do."""


# ----------------------------------------------------------------------------- compression


def compress_lora(
    B: torch.Tensor, A: torch.Tensor, rank: int | None = None, energy: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``dW = B @ A`` computed without ever forming ``dW``.

    With reduced QRs ``B = Q_B R_B`` and ``A^T = Q_A R_A``, ``dW = Q_B (R_B R_A^T) Q_A^T``, so the
    SVD of the ``r x r`` core gives that of ``dW`` in ``O((m + n) r^2 + r^3)`` time and
    ``O((m + n) r)`` memory (the dense route: ``O(m n min(m, n))`` and ``O(m n)``).
    Kept rank ``k``: ``min(rank, r)`` for ``rank``; the smallest ``k`` with
    ``sum(s[:k]^2) / sum(s^2) >= energy`` for ``energy`` (values below the numerical-rank
    tolerance count as zero); the min of the two for both; the numerical rank for neither.
    Always ``k >= 1``; a zero ``dW`` gives ``k = 1`` zero factors.

    Args:
        B: ``(m, r)`` float32 or float64.
        A: ``(r, n)`` float32 or float64.
        rank: rank budget, ``>= 1``.
        energy: fraction of the squared Frobenius norm to keep, in ``(0, 1]``.

    Returns:
        ``(B_k, A_k)``, float32, contiguous, on ``B``'s device, shapes ``(m, k)`` and ``(k, n)``:
        ``B_k = U_k sqrt(s_k)``, ``A_k = sqrt(s_k) Vh_k``, so ``B_k @ A_k`` is the best rank-``k``
        approximation of ``dW`` (Eckart-Young).

    Raises:
        ValueError: for non-2-D or mismatched shapes, NaN/inf, or a bad ``rank``/``energy``.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"compress_lora needs B (m, r), A (r, n); got {tuple(B.shape)}, "
                         f"{tuple(A.shape)}")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    (m, r), n = B.shape, A.shape[1]
    in_dtype = torch.promote_types(B.dtype, A.dtype)
    # The rank tolerance follows the precision the factors were given in (as matrix_rank does);
    # the arithmetic itself runs in float64, which costs little at O((m + n) r^2).
    eps = torch.finfo(in_dtype if in_dtype.is_floating_point else torch.float32).eps
    b64, a64 = B.detach().to(torch.float64), A.detach().to(torch.float64)
    # A finite sum means finite entries (NaN and inf propagate): one reduction instead of an
    # elementwise check, which only runs when the sum is not finite (or overflowed).
    if not (math.isfinite(float(b64.sum())) and math.isfinite(float(a64.sum()))) and not (
            bool(torch.isfinite(b64).all()) and bool(torch.isfinite(a64).all())):
        raise ValueError("compress_lora: B and A must be finite (found NaN or inf)")
    zeros = (torch.zeros(m, 1, device=B.device), torch.zeros(1, n, device=B.device))
    if min(m, n, r) == 0:
        return zeros
    q_b, r_b = torch.linalg.qr(b64)  # (m, p), (p, r), p = min(m, r)
    q_a, r_a = torch.linalg.qr(a64.T)  # (n, q), (q, r), q = min(n, r)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    s_np = s.cpu().numpy()
    if s_np[0] == 0.0:
        return zeros
    k = _select_rank(s_np, eps * max(m, n, r), rank, energy)
    root = s[:k].sqrt()
    b_k = (q_b @ u[:, :k]) * root
    a_k = root[:, None] * (vh[:k] @ q_a.T)
    return b_k.to(torch.float32).contiguous(), a_k.to(torch.float32).contiguous()


def _select_rank(s: np.ndarray, rel_tol: float, rank: int | None, energy: float | None) -> int:
    """Number of singular values to keep; ``s`` is sorted descending with ``s[0] > 0``."""
    s2 = np.where(s > s[0] * rel_tol, s.astype(np.float64) ** 2, 0.0)
    nonzero = max(1, int(np.count_nonzero(s2)))
    k = nonzero if rank is None and energy is None else len(s)
    if rank is not None:
        k = min(k, int(rank))
    if energy is not None:
        cum = np.cumsum(s2)
        # Divide by cum[-1] (not s2.sum()) so the ratio reaches exactly 1.0 at the numerical
        # rank and energy=1.0 never spills into noise-level singular values.
        ratio = cum / cum[-1]
        k = min(k, int(np.count_nonzero(ratio < float(energy))) + 1, nonzero)
    return max(1, k)


def dense_truncated_svd(W: torch.Tensor, k: int) -> torch.Tensor:
    """Reference rank-``k`` truncation of a dense ``(m, n)`` ``W`` (same shape and dtype out) via
    ``torch.linalg.svd``, ``O(m n min(m, n))``: for tests and benchmarks."""
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


# ----------------------------------------------------------------------------- the bank


@dataclass(eq=False)  # identity equality: field-wise == is ill-defined for arrays and tensors
class BankEntry:
    """One reserved subspace.

    Attributes:
        key: ``(d,)`` float32 task embedding, raw (the bank normalises its own copy).
        tensors: payload, any names and shapes (float32 by convention).
        owner: task id the entry was stored under (ground truth, never shown to agents).
        tasks_served: task ids trained into this entry, in order, unique.
        usage: number of times the entry was loaded.
        created_step: env step of the insert.
        last_used_step: env step of the last insert, update or load.
        inserted_order: monotone insertion counter (FIFO order).
        pinned: pinned entries are never evicted.
    """

    key: np.ndarray
    tensors: dict[str, torch.Tensor]
    owner: int
    tasks_served: list[int]
    usage: int = 0
    created_step: int = 0
    last_used_step: int = 0
    inserted_order: int = 0
    pinned: bool = False

    @property
    def nbytes(self) -> int:
        """Exact payload size in bytes: all tensor elements plus the key."""
        payload = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return payload + int(self.key.nbytes)


def _unique(ids: list[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


class TaskKnowledgeBank:
    """A top-``K`` bank of task subspaces with stable slots and a pluggable eviction policy.

    Keys live L2-normalised in one contiguous ``(K, d)`` float32 array (zero rows for empty
    slots), so a recall over the whole bank is a single matrix-vector product.

    Args:
        capacity: number of slots ``K >= 1``.
        key_dim: embedding dimension ``d >= 1``.
        eviction: one of ``EVICTION_POLICIES``.
    """

    def __init__(self, capacity: int, key_dim: int, eviction: str = "lru") -> None:
        if int(capacity) < 1:
            raise ValueError(f"TaskKnowledgeBank capacity must be >= 1, got {capacity}")
        if int(key_dim) < 1:
            raise ValueError(f"TaskKnowledgeBank key_dim must be >= 1, got {key_dim}")
        if eviction not in EVICTION_POLICIES:
            raise ValueError(f"unknown eviction {eviction!r}; choose one of {EVICTION_POLICIES}")
        self.capacity, self.key_dim, self.eviction = int(capacity), int(key_dim), eviction
        self.slots: list[BankEntry | None] = [None] * self.capacity
        self._keys = np.zeros((self.capacity, self.key_dim), dtype=np.float32)
        self._next_order = 0  # persisted, so FIFO order survives a save/load round trip
        self._version = 0  # bumped by every write, load or pin: lets callers cache derived views

    @property
    def version(self) -> int:
        """A counter bumped by every change made through the bank's methods (insert, update,
        touch, pin, load), so per-step views of the bank (the env's observation) are rebuilt
        only when it changed. Change entries through these methods, not by assigning fields."""
        return self._version

    def __len__(self) -> int:
        return sum(e is not None for e in self.slots)

    # --- lookup ------------------------------------------------------------------------------

    def occupied(self) -> np.ndarray:
        """``(K,)`` bool: which slots hold an entry."""
        return np.array([e is not None for e in self.slots], dtype=bool)

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """``(K,)`` float32 cosine of ``query`` ``(d,)`` with each key; 0.0 for empty slots, zero
        keys, or a zero query."""
        q = self._as_key(query, "query")
        q64 = q.astype(np.float64)
        norm = math.sqrt(float(q64 @ q64))
        if norm == 0.0:
            return np.zeros(self.capacity, dtype=np.float32)
        sims = self._keys @ (q64 / norm).astype(np.float32)
        return np.clip(sims, -1.0, 1.0, out=sims)

    def recall(self, query: np.ndarray, top_k: int = 1) -> list[tuple[int, float]]:
        """At most ``top_k`` occupied ``(slot, cosine)``, most similar first (ties: lower slot).

        Exact: one matrix-vector product over the contiguous normalised keys. ``top_k = 1`` is an
        ``argmax`` (no sort, no pass over the slot list) whenever the best cosine is positive, so
        a single query over 10^6 keys costs one pass over the key matrix.
        """
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        sims = self.similarities(query)
        if top_k == 1 and len(sims):
            best = int(np.argmax(sims))  # first maximum: the lower slot on ties
            # Empty slots hold zero keys (cosine exactly 0), so a positive maximum is occupied.
            if sims[best] > 0.0 and self.slots[best] is not None:
                return [(best, float(sims[best]))]
        slots = np.flatnonzero(self.occupied())
        order = slots[np.argsort(-sims[slots], kind="stable")]  # stable keeps lower slot on ties
        return [(int(k), float(sims[k])) for k in order[:top_k]]

    def slot_of_owner(self, task_id: int) -> int | None:
        """Lowest slot whose entry's ``owner`` is ``task_id``, or None."""
        for k, e in enumerate(self.slots):
            if e is not None and e.owner == task_id:
                return k
        return None

    def get(self, slot: int) -> BankEntry:
        """The entry in ``slot``; IndexError when out of range, ValueError when empty."""
        return self._occupied_entry(slot)

    def ages(self, step: int) -> np.ndarray:
        """``(K,)`` float32 ``step - last_used_step`` in env steps; 0 for empty slots."""
        return np.array([0.0 if e is None else step - e.last_used_step for e in self.slots],
                        dtype=np.float32)

    def usages(self) -> np.ndarray:
        """``(K,)`` float32 load counts; 0 for empty slots."""
        return np.array([0.0 if e is None else e.usage for e in self.slots], dtype=np.float32)

    @property
    def total_bytes(self) -> int:
        """Exact bytes held by all entries (tensors plus keys)."""
        return sum(e.nbytes for e in self.slots if e is not None)

    def bytes_per_entry(self) -> float:
        """Mean bytes per occupied slot; 0.0 for an empty bank."""
        return self.total_bytes / len(self) if len(self) else 0.0

    # --- mutation ----------------------------------------------------------------------------

    def insert(self, entry: BankEntry, step: int) -> tuple[int | None, BankEntry | None]:
        """Store ``entry`` in the lowest empty slot, evicting by policy when the bank is full.

        Victims: lru = smallest ``last_used_step`` (ties: oldest insert); fifo = smallest
        ``inserted_order``; lfu = smallest ``usage`` (ties: smallest ``last_used_step``, then
        oldest insert); least_unique = the entry whose key has the highest cosine to another
        stored key (ties: lower slot); reject = admission control, nothing is stored when full.
        Pinned entries are never victims.

        Returns:
            ``(slot, evicted)``; ``(None, None)`` when the entry was not stored.
        """
        self._check_entry(entry)
        empty = [k for k, e in enumerate(self.slots) if e is None]
        slot = empty[0] if empty else self._victim()
        if slot is None:
            return None, None
        evicted = None if empty else self.slots[slot]
        entry.tasks_served = _unique(entry.tasks_served)
        entry.created_step = entry.last_used_step = int(step)
        entry.inserted_order = self._next_order
        self._next_order += 1
        self._place(slot, entry)
        return slot, evicted

    def insert_many(self, entries: Iterable[BankEntry], step: int) -> list[int]:
        """Store ``entries`` in the empty slots, lowest first, in one pass; no eviction.

        For building large banks: :meth:`insert` scans the slots for the lowest empty one on
        every call, which makes filling ``K`` slots one by one cost ``O(K^2)``; this is ``O(K)``.
        The entries get the fields :meth:`insert` would give them, in order.

        Returns:
            The slots used, in the order of ``entries``.

        Raises:
            ValueError: for more entries than empty slots, or an invalid entry (nothing is stored).
        """
        entries = list(entries)
        empty = [k for k, e in enumerate(self.slots) if e is None]
        if len(entries) > len(empty):
            raise ValueError(f"insert_many: {len(entries)} entries for {len(empty)} empty slots; "
                             "use insert() to store with eviction")
        stored = {id(e) for e in self.slots if e is not None}
        for entry in entries:
            self._check_entry(entry, stored)
            stored.add(id(entry))
        slots = empty[: len(entries)]
        for slot, entry in zip(slots, entries, strict=True):
            entry.tasks_served = _unique(entry.tasks_served)
            entry.created_step = entry.last_used_step = int(step)
            entry.inserted_order = self._next_order
            self._next_order += 1
            self.slots[slot] = entry
        if entries:  # the keys, normalised as _place does (float64 norm, float32 divide), at once
            keys = np.stack([e.key for e in entries])
            # x.dot(x) per row, as np.linalg.norm computes it (a batched einsum rounds differently)
            norms = np.array([math.sqrt(k.dot(k)) for k in keys.astype(np.float64)],
                             dtype=np.float32)[:, None]
            self._keys[slots] = np.divide(keys, norms, out=np.zeros_like(keys), where=norms > 0)
            self._version += 1
        return slots

    def update(self, slot: int, entry: BankEntry, step: int) -> None:
        """Put ``entry`` in occupied ``slot`` in place of the old entry, keeping its ``usage``,
        ``pinned``, ``inserted_order`` and ``created_step``; ``tasks_served`` = old ids then new;
        ``last_used_step = step``."""
        old = self._occupied_entry(slot)
        if entry is not old:
            self._check_entry(entry)
        else:
            entry.key = self._as_key(entry.key, "entry.key")
        # Read everything kept before writing anything: ``entry`` may be ``old`` itself.
        kept = (old.usage, old.pinned, old.inserted_order, old.created_step)
        entry.tasks_served = _unique(list(old.tasks_served) + list(entry.tasks_served))
        entry.usage, entry.pinned, entry.inserted_order, entry.created_step = kept
        entry.last_used_step = int(step)
        self._place(slot, entry)

    def touch(self, slot: int, step: int) -> None:
        """Record a load of ``slot``: ``usage += 1`` and ``last_used_step = step``."""
        e = self._occupied_entry(slot)
        e.usage += 1
        e.last_used_step = int(step)
        self._version += 1

    def pin(self, slot: int, pinned: bool = True) -> None:
        """Mark the entry in ``slot`` as (un)evictable."""
        self._occupied_entry(slot).pinned = bool(pinned)
        self._version += 1

    # --- internals ---------------------------------------------------------------------------

    def _index(self, slot: int) -> int:
        k = operator.index(slot)
        if not 0 <= k < self.capacity:
            raise IndexError(f"bank slot {k} is out of range: slots are 0..{self.capacity - 1}")
        return k

    def _occupied_entry(self, slot: int) -> BankEntry:
        k = self._index(slot)
        if (e := self.slots[k]) is None:
            raise ValueError(f"bank slot {k} is empty; check bank.occupied() before using a slot")
        return e

    def _as_key(self, x: np.ndarray, what: str) -> np.ndarray:
        arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if arr.shape != (self.key_dim,):
            raise ValueError(f"{what} must have shape ({self.key_dim},), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} must be finite (found NaN or inf)")
        return arr

    def _check_entry(self, entry: BankEntry, stored: set[int] | None = None) -> None:
        """``stored``: ids of the stored entries, when the caller has them (saves a slot scan)."""
        if (id(entry) in stored) if stored is not None else any(e is entry for e in self.slots):
            raise ValueError("this BankEntry object is already stored; insert a copy instead")
        entry.key = self._as_key(entry.key, "entry.key")
        for name, t in entry.tensors.items():
            if not isinstance(name, str) or not name or name == _KEY:
                raise ValueError(f"bad tensor name {name!r}: non-empty str other than {_KEY!r}")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"entry.tensors[{name!r}] must be a torch.Tensor, got {type(t)}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"entry.tensors[{name!r}] holds NaN or inf; a bank never stores "
                                 "non-finite tensors (skip the insert instead)")

    def _place(self, slot: int, entry: BankEntry) -> None:
        self.slots[slot] = entry
        self._version += 1
        norm = float(np.linalg.norm(entry.key.astype(np.float64)))
        # A zero key stays a zero row: it is similar to nothing rather than NaN.
        self._keys[slot] = 0.0 if norm == 0.0 else (entry.key / norm).astype(np.float32)

    def _victim(self) -> int | None:
        if self.eviction == "reject":
            return None
        cands = {k: e for k, e in enumerate(self.slots) if e is not None and not e.pinned}
        if not cands:
            return None
        if self.eviction == "lru":
            return min(cands, key=lambda k: (cands[k].last_used_step, cands[k].inserted_order))
        if self.eviction == "fifo":
            return min(cands, key=lambda k: cands[k].inserted_order)
        if self.eviction == "lfu":
            e = cands
            return min(e, key=lambda k: (e[k].usage, e[k].last_used_step, e[k].inserted_order))
        # least_unique: redundancy = max cosine to any other stored key (pinned ones included).
        keys = self._keys.astype(np.float64)
        gram = keys @ keys.T
        gram = (gram + gram.T) / 2.0  # exact symmetry, so a redundant pair ties -> lower slot
        gram[:, ~self.occupied()] = -np.inf
        np.fill_diagonal(gram, -np.inf)
        return max(cands, key=lambda k: (gram[k].max(), -k))

    # --- persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank atomically to directory ``path`` (created or replaced).

        Both files are written and fsynced in a temporary sibling directory, then renamed into
        place; an existing bank is renamed aside first and deleted only once the new one is in
        place, so a crash at any point leaves a complete bank on disk (see :meth:`load`).
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a bank directory; choose another path")
        root.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp, old = (root.parent / f".{root.name}.{kind}-{tag}" for kind in ("tmp", "old"))
        tmp.mkdir()
        try:
            self._write(tmp)
            if root.exists():
                os.replace(root, old)
                try:
                    os.replace(tmp, root)
                except BaseException:
                    os.replace(old, root)  # roll back: the previous bank goes back in place
                    raise
            else:
                os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(root.parent)
        for stale in _backups(root):  # the new bank is complete: old copies (ours or a crash's) go
            shutil.rmtree(stale, ignore_errors=True)

    def _write(self, folder: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        entries: list[dict[str, Any]] = []
        for k, e in enumerate(self.slots):
            if e is None:
                continue
            # Clone: safetensors refuses tensors that share storage (e.g. views of one tensor).
            named = {n: t.detach().cpu().contiguous().clone() for n, t in e.tensors.items()}
            named[_KEY] = torch.from_numpy(e.key.copy())
            tensors.update({f"slot{k}/{n}": t for n, t in named.items()})
            meta = {f: int(getattr(e, f)) for f in _INT_FIELDS}
            entries.append({"slot": k, **meta, "pinned": bool(e.pinned),
                            "tasks_served": [int(i) for i in e.tasks_served],
                            "tensors": {n: _spec(t) for n, t in sorted(named.items())},
                            "sha256": _entry_sha256(named)})
        save_file(tensors, str(folder / _TENSORS), metadata={"format": "pt"})
        manifest = {"format_version": BANK_FORMAT_VERSION, "capacity": self.capacity,
                    "key_dim": self.key_dim, "eviction": self.eviction,
                    "next_inserted_order": self._next_order,
                    "safetensors_sha256": _file_sha256(folder / _TENSORS), "entries": entries}
        manifest[_MANIFEST_SHA] = _manifest_sha256(manifest)
        with open(folder / _MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        for p in (folder / _TENSORS, folder / _MANIFEST, folder):
            _fsync(p)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskKnowledgeBank:
        """Load a bank written by :meth:`save`, verifying version, shapes and checksums.

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
        bank._next_order = m.integer("next_inserted_order")
        if not tpath.is_file():
            raise _fail(tpath, "tensor file is missing")
        if _file_sha256(tpath) != m.get("safetensors_sha256", str):
            raise _fail(tpath, "sha256 differs from the manifest's: truncated or modified")
        try:  # safetensors raises its own error types for malformed headers and offsets
            stored = load_file(str(tpath))
        except Exception as exc:
            raise _fail(tpath, f"could not be parsed ({exc})") from exc
        expected: set[str] = set()
        for raw in m.get("entries", list):
            f = _Fields(raw, mpath)
            slot = f.integer("slot")
            if not 0 <= slot < bank.capacity or bank.slots[slot] is not None:
                raise _fail(mpath, f"slot {slot} is out of range or repeated")
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
            if _entry_sha256(named) != f.get("sha256", str):
                raise _fail(tpath, f"checksum of slot {slot}'s tensors does not match the manifest")
            bad = [n for n, t in named.items()
                   if t.is_floating_point() and not bool(t.isfinite().all())]
            if bad:  # a well-formed file can still carry NaN/inf, which the bank never holds
                raise _fail(tpath, f"slot {slot} tensors {sorted(bad)} hold NaN or inf")
            key = named.pop(_KEY, None)
            if key is None or _spec(key) != _spec(torch.zeros(bank.key_dim)):
                raise _fail(mpath, f"slot {slot} needs a float32 ({bank.key_dim},) {_KEY} tensor")
            meta = {name: f.integer(name) for name in _INT_FIELDS}
            tasks = f.get("tasks_served", list)
            if not all(type(i) is int for i in tasks):
                raise _fail(mpath, f"slot {slot} tasks_served must be a list of ints")
            bank._place(slot, BankEntry(key.numpy().copy(), named, tasks_served=tasks,
                                        pinned=f.get("pinned", bool), **meta))
        extra = sorted(set(stored) - expected)
        if extra:
            raise _fail(tpath, f"tensors not listed in the manifest: {extra}")
        # Last, so the checks above name the specific problem when there is one. A version-1
        # manifest has no checksum; one that carries it anyway (a flipped version byte) is checked.
        if (m.d["format_version"] >= 2 or _MANIFEST_SHA in m.d) and \
                m.d.get(_MANIFEST_SHA) != _manifest_sha256(m.d):
            raise _fail(mpath, "the manifest's contents do not match its manifest_sha256: "
                        "modified or corrupted")
        return bank


_INT_FIELDS = ("owner", "usage", "created_step", "last_used_step", "inserted_order")
_MANIFEST_SHA = "manifest_sha256"
_FIX = "Restore the bank from a backup, or re-create it and save it with TaskKnowledgeBank.save"


def _fail(file: Path, problem: str) -> BankFormatError:
    return BankFormatError(f"{file}: {problem}. {_FIX}")


def _read_manifest(mpath: Path) -> dict[str, Any]:
    if not mpath.is_file():
        raise _fail(mpath, "manifest file is missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(mpath, f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise _fail(mpath, "no format_version field; this is not a bank manifest")
    version = manifest["format_version"]
    if type(version) is not int or version not in READABLE_BANK_VERSIONS:
        raise BankFormatError(
            f"{mpath}: unknown format_version {version!r} (this nsr_gym reads "
            f"{READABLE_BANK_VERSIONS}). Load it with the nsr_gym version that wrote it, or "
            "re-save it")
    return manifest


def _manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without its own field."""
    body = {k: v for k, v in manifest.items() if k != _MANIFEST_SHA}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def _backups(root: Path) -> list[Path]:
    """Previous banks that :meth:`TaskKnowledgeBank.save` renamed aside next to ``root``."""
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


def _spec(t: torch.Tensor) -> dict[str, Any]:
    """Manifest description of a tensor, e.g. ``{"shape": [16, 3], "dtype": "float32"}``."""
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _entry_sha256(named: dict[str, torch.Tensor]) -> str:
    """sha256 of the raw (little-endian) bytes of ``named``'s tensors, in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """fsync a file or a directory (directories: POSIX only; elsewhere a no-op)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some platforms/filesystems cannot fsync a directory
    finally:
        os.close(fd)
