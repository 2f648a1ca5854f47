"""The TaskKnowledgeBank: reserve and recall LoRA subspaces in fixed slots (NSR cycle, 2-3).

A bank holds at most ``K`` entries (:class:`~nsr_gym.bank.entry.BankEntry`) in fixed slots. Each
entry is keyed by a task embedding and carries a payload of tensors (compressed LoRA factors, a
task head, or an analytic learner's state). Slot indices never change while an entry lives,
because agents address slots directly ("load slot k"). The bank keeps its own
:class:`~nsr_gym.bank.view.BankView` (the per-slot arrays an observation reads) current on every
write. Its files are :mod:`nsr_gym.bank.files`' (``bank.safetensors`` plus a checksummed
``manifest.json``, written atomically, read without pickle), which :meth:`TaskKnowledgeBank.save`
and :meth:`TaskKnowledgeBank.load` call.

A bank may also have a byte budget (``capacity_bytes``): the entries' exact bytes
(:attr:`BankEntry.nbytes`) never sum to more. A write that would exceed it evicts by the policy,
as many entries as it takes (:func:`nsr_gym.bank.eviction.make_room`); smaller entries (float16
payloads, lower SVD ranks) so hold more tasks in the same bytes. Without one (the default), the
slots alone bound the bank, exactly as before.

Imports inside the package point one way: ``core`` imports ``checks``, ``entry``, ``eviction``,
``files`` and ``view``, which import only ``checks`` and ``entry``; ``geometry`` and ``disk``
import ``core``.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from nsr_gym.bank.checks import PAYLOAD_DTYPES
from nsr_gym.bank.entry import BankEntry, is_finite, unique_ids
from nsr_gym.bank.eviction import EVICTION_POLICIES, make_room
from nsr_gym.bank.files import KEY_TENSOR, load_bank, save_bank
from nsr_gym.bank.view import BankView

#: Recall's novelty threshold: a task whose best cosine with every key is below this counts as
#: unlike anything stored (NSR's similarity rule starts a fresh subspace for it).
SIMILARITY_THRESHOLD: float = 0.5

__all__ = ["EVICTION_POLICIES", "SIMILARITY_THRESHOLD", "BankEntry", "TaskKnowledgeBank"]


class TaskKnowledgeBank:
    """A top-``K`` bank of task subspaces with stable slots and a pluggable eviction policy.

    Keys live L2-normalised in one contiguous ``(K, d)`` float32 array (zero rows for empty
    slots), so a recall over the whole bank is a single matrix-vector product.

    Args:
        capacity: number of slots ``K >= 1``.
        key_dim: embedding dimension ``d >= 1``.
        eviction: one of ``EVICTION_POLICIES``.
        capacity_bytes: byte budget ``>= 1`` on the entries' total ``nbytes`` (``None``: the
            slots alone bound the bank).

    Attributes:
        last_evicted: The entries the latest insert, update or write evicted, in the policy's
            order (more than one only under a byte budget).
    """

    def __init__(self, capacity: int, key_dim: int, eviction: str = "lru",
                 capacity_bytes: int | None = None) -> None:
        if int(capacity) < 1:
            raise ValueError(f"TaskKnowledgeBank capacity must be >= 1, got {capacity}")
        if int(key_dim) < 1:
            raise ValueError(f"TaskKnowledgeBank key_dim must be >= 1, got {key_dim}")
        if eviction not in EVICTION_POLICIES:
            raise ValueError(f"unknown eviction {eviction!r}; choose one of {EVICTION_POLICIES}")
        if capacity_bytes is not None and (isinstance(capacity_bytes, (bool, np.bool_)) or
                                           not isinstance(capacity_bytes, (int, np.integer))
                                           or capacity_bytes < 1):
            raise ValueError(f"TaskKnowledgeBank capacity_bytes must be None or an int >= 1 "
                             f"(bytes), got {capacity_bytes!r}")
        self.capacity, self.key_dim, self.eviction = int(capacity), int(key_dim), eviction
        self.capacity_bytes = None if capacity_bytes is None else int(capacity_bytes)
        self.last_evicted: list[BankEntry] = []
        self.slots: list[BankEntry | None] = [None] * self.capacity
        self._keys = np.zeros((self.capacity, self.key_dim), dtype=np.float32)
        self._next_order = 0  # persisted, so FIFO order survives a save/load round trip
        self._version = 0  # bumped by every write, load or pin: lets callers cache derived views
        self._view: BankView | None = None  # built on first use, then kept current by writes

    @property
    def version(self) -> int:
        """A counter bumped by every change made through the bank's methods (insert, update,
        touch, pin, restore, ...), so values derived from the bank can be cached until it
        changes. Change entries through these methods, not by assigning fields."""
        return self._version

    @property
    def next_inserted_order(self) -> int:
        """The ``inserted_order`` the next insert gets (saved with the bank, so FIFO order
        survives a save/load round trip; :meth:`restore` sets it back)."""
        return self._next_order

    @property
    def view(self) -> BankView:
        """The per-slot arrays an observation reads (occupied, last use, usage, owners, size),
        built on first use and kept current by every write made through the bank's methods."""
        if self._view is None:
            self._view = BankView(self)
        return self._view

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

    def fits(self, entry: BankEntry, slot: int | None = None) -> bool:
        """Whether ``entry`` could be stored (in ``slot``, replacing what it holds, or by
        :meth:`insert`) without evicting anything: a slot for it, and bytes under the budget."""
        room = make_room(self.slots, self._keys, "reject", entry.nbytes, self.capacity_bytes,
                         None if slot is None else self._index(slot))
        return room == []

    # --- mutation ----------------------------------------------------------------------------

    def insert(self, entry: BankEntry, step: int) -> tuple[int | None, BankEntry | None]:
        """Store ``entry`` in the lowest empty slot, evicting by policy when the bank is full.

        Victims: lru = smallest ``last_used_step`` (ties: oldest insert); fifo = smallest
        ``inserted_order``; lfu = smallest ``usage`` (ties: smallest ``last_used_step``, then
        oldest insert); least_unique = the entry whose key has the highest cosine to another
        stored key (ties: lower slot); reject = admission control, nothing is stored when full.
        Pinned entries are never victims. Under a byte budget, victims go in that order until
        the entry's bytes fit too (all of them are in :attr:`last_evicted`); an entry that cannot
        fit (larger than the budget, or only pinned entries to evict) is not stored.

        Returns:
            ``(slot, evicted)``: ``evicted`` is the first victim (None when there was room);
            ``(None, None)`` when the entry was not stored.
        """
        self._check_entry(entry)
        self.last_evicted = []
        victims = make_room(self.slots, self._keys, self.eviction, entry.nbytes,
                            self.capacity_bytes)
        if victims is None:
            return None, None
        empty = [k for k, e in enumerate(self.slots) if e is None]
        slot = empty[0] if empty else victims[0]
        evicted = self._evict(victims, keep=slot)
        self._admit(slot, entry, step)
        return slot, evicted

    def write(self, slot: int, entry: BankEntry, step: int) -> BankEntry | None:
        """Store ``entry`` in ``slot`` whatever it holds: a retention decision made by the caller
        (an env's agent, ``retention="agent"``), not by the eviction policy.

        When ``slot`` holds an entry of the same ``owner``, ``entry`` updates it in place
        (:meth:`update`: its usage, pin, insertion order and creation step are kept). Otherwise
        whatever is there is replaced and ``entry`` gets the fields :meth:`insert` gives (created
        and last used at ``step``, the next insertion order). Pins and the eviction policy play no
        part: the caller chose the slot.

        Under a byte budget the entry must fit once the slot's old entry is gone
        (:meth:`fits`); the caller chose what to give up, so nothing else is evicted.

        Returns:
            The entry replaced (another owner's), or None (the slot was empty, or updated in place).

        Raises:
            IndexError: for a slot out of range; ValueError for an invalid entry, or one that does
                not fit the byte budget.
        """
        k = self._index(slot)
        old = self.slots[k]
        self.last_evicted = []
        if old is not None and old.owner == entry.owner:
            if not self.update(k, entry, step):
                raise ValueError(self._too_big(entry, k))
            return None
        self._check_entry(entry)
        if not self.fits(entry, k):
            raise ValueError(self._too_big(entry, k))
        self._admit(k, entry, step)
        self.last_evicted = [] if old is None else [old]
        return old

    def insert_many(self, entries: Iterable[BankEntry], step: int) -> list[int]:
        """Store ``entries`` in the empty slots, lowest first, in one pass; no eviction.

        For building large banks: :meth:`insert` scans the slots for the lowest empty one on
        every call, which makes filling ``K`` slots one by one cost ``O(K^2)``; this is ``O(K)``.
        The entries get the fields :meth:`insert` would give them, in order.

        Returns:
            The slots used, in the order of ``entries``.

        Raises:
            ValueError: for more entries than empty slots or bytes than the budget leaves, or an
                invalid entry (nothing is stored).
        """
        entries = list(entries)
        empty = [k for k, e in enumerate(self.slots) if e is None]
        if len(entries) > len(empty):
            raise ValueError(f"insert_many: {len(entries)} entries for {len(empty)} empty slots; "
                             "use insert() to store with eviction")
        if self.capacity_bytes is not None and \
                self.total_bytes + sum(e.nbytes for e in entries) > self.capacity_bytes:
            raise ValueError(f"insert_many: the entries do not fit capacity_bytes="
                             f"{self.capacity_bytes}; use insert() to store with eviction")
        stored = {id(e) for e in self.slots if e is not None}
        for entry in entries:
            self._check_entry(entry, stored)
            stored.add(id(entry))
        slots = empty[: len(entries)]
        for slot, entry in zip(slots, entries, strict=True):
            entry.tasks_served = unique_ids(entry.tasks_served)
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
            self._view = None  # rebuilt on next use: one O(K) pass for the whole batch
        return slots

    def update(self, slot: int, entry: BankEntry, step: int) -> bool:
        """Put ``entry`` in occupied ``slot`` in place of the old entry, keeping its ``usage``,
        ``pinned``, ``inserted_order`` and ``created_step``; ``tasks_served`` = old ids then new;
        ``last_used_step = step``.

        Under a byte budget, a larger entry evicts other entries by the policy until it fits
        (:attr:`last_evicted`); where none can go (``reject``, pins, or an entry larger than the
        budget) the update is refused and the old entry stays.

        Returns:
            True when ``entry`` was stored (always, without a byte budget).
        """
        old = self._occupied_entry(slot)
        self.last_evicted = []
        if entry is not old:
            self._check_entry(entry)
        else:
            entry.key = self._as_key(entry.key, "entry.key")
        if self.capacity_bytes is not None:
            victims = make_room(self.slots, self._keys, self.eviction, entry.nbytes,
                                self.capacity_bytes, target=slot)
            if victims is None:
                return False
            self._evict(victims, keep=slot)
        # Read everything kept before writing anything: ``entry`` may be ``old`` itself.
        kept = (old.usage, old.pinned, old.inserted_order, old.created_step)
        entry.tasks_served = unique_ids(list(old.tasks_served) + list(entry.tasks_served))
        entry.usage, entry.pinned, entry.inserted_order, entry.created_step = kept
        entry.last_used_step = int(step)
        self._place(slot, entry)
        return True

    def touch(self, slot: int, step: int) -> None:
        """Record a load of ``slot``: ``usage += 1`` and ``last_used_step = step``."""
        e = self._occupied_entry(slot)
        e.usage += 1
        e.last_used_step = int(step)
        self._version += 1
        if self._view is not None:
            self._view.touched(slot, e)

    def pin(self, slot: int, pinned: bool = True) -> None:
        """Mark the entry in ``slot`` as (un)evictable."""
        self._occupied_entry(slot).pinned = bool(pinned)
        self._version += 1

    def restore(self, entries: Mapping[int, BankEntry], next_inserted_order: int) -> None:
        """Put saved entries back into their (empty) slots with every field as saved, and the
        insertion counter back to ``next_inserted_order``: a load, not an insert (no eviction,
        no new steps or order). :func:`nsr_gym.bank.files.load_bank` calls it.

        Raises:
            ValueError: for a slot out of range or already occupied, or entries over the byte
                budget.
        """
        for slot in entries:
            if self.slots[self._index(slot)] is not None:
                raise ValueError(f"restore: bank slot {slot} is occupied")
        if self.capacity_bytes is not None and \
                self.total_bytes + sum(e.nbytes for e in entries.values()) > self.capacity_bytes:
            raise ValueError(f"restore: the entries do not fit capacity_bytes="
                             f"{self.capacity_bytes}")
        for slot, entry in entries.items():
            self._place(slot, entry)
        self._next_order = int(next_inserted_order)
        self._version += 1

    def shift_steps(self, delta: int) -> None:
        """Add ``delta`` to every entry's ``created_step`` and ``last_used_step``: re-bases a
        bank loaded into another episode (the env makes its most recent use "now")."""
        for e in self.slots:
            if e is not None:
                e.last_used_step += int(delta)
                e.created_step += int(delta)
        self._view = None
        self._version += 1

    def clear(self) -> None:
        """Empty every slot and restart the insertion counter: the bank as constructed."""
        self.slots = [None] * self.capacity
        self._keys[:] = 0.0
        self._next_order = 0
        self._view = None
        self._version += 1

    # --- internals ---------------------------------------------------------------------------

    def _evict(self, victims: list[int], keep: int) -> BankEntry | None:
        """Empty the ``victims`` slots except ``keep`` (which the caller overwrites); they all go
        to :attr:`last_evicted`. Returns the first victim, or None."""
        self.last_evicted = [self.slots[k] for k in victims]
        for k in victims:
            if k != keep:
                self.slots[k] = None
                self._keys[k] = 0.0
                self._view = None  # rebuilt on next use (evictions for bytes only)
                self._version += 1
        return self.last_evicted[0] if victims else None

    def _too_big(self, entry: BankEntry, slot: int) -> str:
        return (f"an entry of {entry.nbytes} bytes does not fit slot {slot} under "
                f"capacity_bytes={self.capacity_bytes} ({self.total_bytes} held); write it "
                "elsewhere, drop it, or free bytes first")

    def _admit(self, slot: int, entry: BankEntry, step: int) -> None:
        """Place a new ``entry`` in ``slot`` with the fields an insert gives it."""
        entry.tasks_served = unique_ids(entry.tasks_served)
        entry.created_step = entry.last_used_step = int(step)
        entry.inserted_order = self._next_order
        self._next_order += 1
        self._place(slot, entry)

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
                raise ValueError(f"bad tensor name {name!r}: non-empty str other than "
                                 f"{KEY_TENSOR!r}")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"entry.tensors[{name!r}] must be a torch.Tensor, got {type(t)}")
            if str(t.dtype).removeprefix("torch.") not in PAYLOAD_DTYPES:
                raise ValueError(f"entry.tensors[{name!r}] is {t.dtype}; a bank stores "
                                 f"{', '.join(PAYLOAD_DTYPES)} payloads only")
            if not is_finite(t):
                raise ValueError(f"entry.tensors[{name!r}] holds NaN or inf; a bank never stores "
                                 "non-finite tensors (skip the insert instead)")

    def _place(self, slot: int, entry: BankEntry) -> None:
        old, self.slots[slot] = self.slots[slot], entry
        self._version += 1
        norm = float(np.linalg.norm(entry.key.astype(np.float64)))
        # A zero key stays a zero row: it is similar to nothing rather than NaN.
        self._keys[slot] = 0.0 if norm == 0.0 else (entry.key / norm).astype(np.float32)
        if self._view is not None:
            if old is entry:  # updated in place: its old size is gone, build the view again
                self._view = None
            else:
                self._view.placed(slot, entry, old)

    # --- files (nsr_gym.bank.files) --------------------------------------------------------

    def save(self, path: str | os.PathLike, geometry: Mapping[str, Any] | None = None) -> None:
        """Write the bank atomically to directory ``path`` (created or replaced): a crash at any
        point leaves a complete bank on disk (:func:`nsr_gym.bank.files.save_bank`);
        ``geometry`` (:func:`nsr_gym.bank.env_geometry`) goes in a ``geometry.json`` that the
        manifest covers."""
        save_bank(self, path, geometry)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskKnowledgeBank:
        """Load a bank written by :meth:`save`, verifying version, shapes and checksums; after a
        save killed between its two renames, the previous bank, with a warning.

        Raises:
            BankFormatError: for a missing, unparseable, truncated, modified or inconsistent file.
        """
        return load_bank(path, cls)
