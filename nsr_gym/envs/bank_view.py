"""The bank as the allocation env's observation and info see it, kept up to date cheaply.

The env reads per-slot arrays (occupied, last use, usage, the action mask, which slot each task
owns) at every step; rebuilding them is ``O(K)``. :class:`BankView` builds them once per bank and
follows the env's own writes in ``O(1)``; any other change of the bank (its ``version`` moved
otherwise) makes the env build a new view.
"""

from __future__ import annotations

import numpy as np

from nsr_gym.bank import BankEntry, TaskKnowledgeBank


class BankView:
    """The bank's per-slot arrays as the observation and info show them, kept across steps.

    Built once per bank, then brought up to date by the env's own writes (:meth:`touched` after
    a load, :meth:`placed` after a reserve) in ``O(1)`` per write instead of ``O(K)``; rebuilt
    whenever the bank's ``version`` moved in any other way. The similarities are recomputed
    (one matrix-vector product) when the bank or the probe embedding changed.
    """

    __slots__ = ("bank", "version", "occupied", "last_used", "usage", "mask", "owner_slot",
                 "entries", "nbytes", "n_phases", "similarity", "sim_for")

    def __init__(self, bank: TaskKnowledgeBank, n_phases: int) -> None:
        self.bank, self.version, self.n_phases = bank, bank.version, n_phases
        occupied = bank.occupied()
        self.occupied = occupied.astype(np.float32)
        self.last_used = np.array([0.0 if e is None else e.last_used_step for e in bank.slots],
                                  dtype=np.float32)
        self.usage = np.minimum(bank.usages() / n_phases, 1.0).astype(np.float32)
        self.mask = np.concatenate([[True, True], occupied])
        self.owner_slot = {e.owner: k for k, e in reversed(list(enumerate(bank.slots)))
                           if e is not None}  # the lowest slot wins, as slot_of_owner
        self.entries = int(occupied.sum())
        self.nbytes = bank.total_bytes
        self.similarity, self.sim_for = np.zeros(bank.capacity, np.float32), None

    def is_current(self, bank: TaskKnowledgeBank) -> bool:
        return bank is self.bank and bank.version == self.version

    def similarities(self, embedding: np.ndarray | None) -> np.ndarray:
        """``bank.similarities(embedding)`` (float32, in [-1, 1]), recomputed only on change."""
        if embedding is not None and (self.sim_for is None or self.sim_for[0] != self.version
                                      or self.sim_for[1] is not embedding):
            self.similarity = self.bank.similarities(embedding)
            self.sim_for = (self.version, embedding)
        return self.similarity

    def _catch_up(self, bank: TaskKnowledgeBank) -> bool:
        """Whether the view was current just before one change of ``bank`` (then follow it)."""
        if bank is not self.bank or bank.version != self.version + 1:
            return False
        self.version = bank.version
        return True

    def touched(self, bank: TaskKnowledgeBank, slot: int) -> None:
        """Follow ``bank.touch(slot, ...)``: only usage and last use change."""
        if self._catch_up(bank):
            e = bank.slots[slot]
            self.usage[slot] = min(np.float32(e.usage) / self.n_phases, 1.0)
            self.last_used[slot] = e.last_used_step

    def placed(self, bank: TaskKnowledgeBank, slot: int, old: BankEntry | None) -> None:
        """Follow an insert or update that put a new entry in ``slot`` in place of ``old``."""
        if not self._catch_up(bank):
            return
        e = bank.slots[slot]
        self.occupied[slot], self.mask[2 + slot] = 1.0, True
        self.last_used[slot] = e.last_used_step
        self.usage[slot] = min(np.float32(e.usage) / self.n_phases, 1.0)
        self.nbytes += e.nbytes - (0 if old is None else old.nbytes)
        self.entries += old is None
        if old is not None and old.owner != e.owner and self.owner_slot.get(old.owner) == slot:
            others = [k for k, o in enumerate(bank.slots) if o is not None and o.owner == old.owner]
            if others:
                self.owner_slot[old.owner] = others[0]
            else:
                del self.owner_slot[old.owner]
        self.owner_slot[e.owner] = min(slot, self.owner_slot.get(e.owner, slot))
