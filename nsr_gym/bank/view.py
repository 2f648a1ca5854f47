"""The bank as an observation reads it: per-slot arrays that the bank itself keeps current.

An env reads per-slot arrays (occupied, last use, usage, which slot each task owns, the bank's
size) at every step; rebuilding them is ``O(K)``. :attr:`TaskKnowledgeBank.view` builds a
:class:`BankView` once, and every write made through the bank's methods brings it up to date:
``O(1)`` for the hot writes (:meth:`~TaskKnowledgeBank.touch` on a load, an insert or update on a
reserve), a rebuild on first use after the others. Nothing outside the bank patches it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nsr_gym.bank.entry import BankEntry

__all__ = ["BankView", "ViewedBank"]


class ViewedBank(Protocol):
    """What a :class:`BankView` reads of its bank (``TaskKnowledgeBank`` has it; the bank
    imports this module, not the reverse)."""

    capacity: int
    slots: list[BankEntry | None]

    @property
    def version(self) -> int: ...

    @property
    def total_bytes(self) -> int: ...

    def occupied(self) -> np.ndarray: ...

    def usages(self) -> np.ndarray: ...

    def similarities(self, query: np.ndarray) -> np.ndarray: ...


class BankView:
    """The bank's per-slot arrays, as of its latest write (read them, do not write them).

    Attributes:
        occupied: ``(K,)`` float32, 1.0 where the slot holds an entry.
        last_used: ``(K,)`` float32 ``last_used_step`` of each entry (0 for empty slots).
        usage: ``(K,)`` float32 load count of each entry (0 for empty slots).
        owner_slot: task id -> the lowest slot whose entry it owns (as ``slot_of_owner``).
        entries: Occupied slots.
        nbytes: ``bank.total_bytes``.
    """

    __slots__ = ("_bank", "occupied", "last_used", "usage", "owner_slot", "entries", "nbytes",
                 "_placements", "_similarity", "_similarity_for")

    def __init__(self, bank: ViewedBank) -> None:
        self._bank = bank
        occupied = bank.occupied()
        self.occupied = occupied.astype(np.float32)
        self.last_used = np.array([0.0 if e is None else e.last_used_step for e in bank.slots],
                                  dtype=np.float32)
        self.usage = bank.usages()
        self.owner_slot = {e.owner: k for k, e in reversed(list(enumerate(bank.slots)))
                           if e is not None}  # the lowest slot wins, as slot_of_owner
        self.entries = int(occupied.sum())
        self.nbytes = bank.total_bytes
        self._placements = 0  # entries placed since built: the keys changed (a load does not)
        self._similarity = np.zeros(bank.capacity, np.float32)
        self._similarity_for: tuple[int, np.ndarray] | None = None

    def similarities(self, embedding: np.ndarray | None) -> np.ndarray:
        """``bank.similarities(embedding)`` ``(K,)`` float32 in [-1, 1], recomputed only when a
        key changed or another embedding object is passed (zeros for ``None``, before any)."""
        cached = self._similarity_for
        if embedding is not None and (cached is None or cached[0] != self._placements
                                      or cached[1] is not embedding):
            self._similarity = self._bank.similarities(embedding)
            self._similarity_for = (self._placements, embedding)
        return self._similarity

    # --- kept current by the bank --------------------------------------------------------

    def touched(self, slot: int, entry: BankEntry) -> None:
        """After ``bank.touch(slot, ...)``: only usage and last use change."""
        self.usage[slot] = entry.usage
        self.last_used[slot] = entry.last_used_step

    def placed(self, slot: int, entry: BankEntry, old: BankEntry | None) -> None:
        """After an insert or update put ``entry`` in ``slot`` in place of ``old``."""
        self._placements += 1
        self.occupied[slot] = 1.0
        self.last_used[slot] = entry.last_used_step
        self.usage[slot] = entry.usage
        self.nbytes += entry.nbytes - (0 if old is None else old.nbytes)
        self.entries += old is None
        if old is not None and old.owner != entry.owner and self.owner_slot.get(old.owner) == slot:
            others = [k for k, o in enumerate(self._bank.slots)
                      if o is not None and o.owner == old.owner]
            if others:
                self.owner_slot[old.owner] = others[0]
            else:
                del self.owner_slot[old.owner]
        self.owner_slot[entry.owner] = min(slot, self.owner_slot.get(entry.owner, slot))
