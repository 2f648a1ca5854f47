"""The TaskKnowledgeBank: compress, reserve and recall LoRA subspaces (NSR cycle, steps 1-3).

A bank holds at most ``K`` entries in fixed slots. Each entry is keyed by a task embedding and
carries a payload of tensors (compressed LoRA factors, a task head, or an analytic learner's
state). Slot indices never change while an entry lives, because agents address slots directly
("load slot k"). Compression lives in :mod:`nsr_gym.compression` and the files in
:mod:`nsr_gym.bank_files` (``bank.safetensors`` plus a checksummed ``manifest.json``, written
atomically, read without pickle); both are re-exported here.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from nsr_gym.bank_files import (BANK_FORMAT_VERSION, KEY_TENSOR, READABLE_BANK_VERSIONS,
                                BankFormatError, load_bank, save_bank)
from nsr_gym.compression import compress_lora, dense_truncated_svd

EVICTION_POLICIES: tuple[str, ...] = ("lru", "fifo", "lfu", "least_unique", "reject")

__all__ = ["BANK_FORMAT_VERSION", "EVICTION_POLICIES", "READABLE_BANK_VERSIONS", "BankEntry",
           "BankFormatError", "TaskKnowledgeBank", "compress_lora", "dense_truncated_svd"]


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
            if not isinstance(name, str) or not name or name == KEY_TENSOR:
                raise ValueError(f"bad tensor name {name!r}: non-empty str other than {KEY_TENSOR!r}")
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

    # --- persistence (nsr_gym.bank_files) ---------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank atomically to directory ``path`` (created or replaced): a crash at any
        point leaves a complete bank on disk (:func:`nsr_gym.bank_files.save_bank`)."""
        save_bank(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskKnowledgeBank:
        """Load a bank written by :meth:`save`, verifying version, shapes and checksums; after a
        save killed between its two renames, the previous bank, with a warning.

        Raises:
            BankFormatError: for a missing, unparseable, truncated, modified or inconsistent file.
        """
        return load_bank(path, cls)
