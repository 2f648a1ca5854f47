"""Eviction: which entry a full bank gives up, by slots or by bytes (NSR's top-K retention cap).

:func:`victim` is the policy (LRU, FIFO, LFU, least unique, reject); :func:`make_room` applies it
as often as a new entry needs, for a slot and, where the bank has a byte budget, for bytes. The
bank (:mod:`nsr_gym.bank.core`) calls both; neither changes anything.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from nsr_gym.bank.entry import BankEntry

__all__ = ["EVICTION_POLICIES", "make_room", "victim"]

EVICTION_POLICIES: tuple[str, ...] = ("lru", "fifo", "lfu", "least_unique", "reject")


def victim(slots: Sequence[BankEntry | None], keys: np.ndarray, policy: str,
           exclude: Collection[int] = ()) -> int | None:
    """The slot ``policy`` evicts next, or None (``reject``, or nothing evictable).

    Victims: lru = smallest ``last_used_step`` (ties: oldest insert); fifo = smallest
    ``inserted_order``; lfu = smallest ``usage`` (ties: smallest ``last_used_step``, then
    oldest insert); least_unique = the entry whose key has the highest cosine to another
    stored key (ties: lower slot). Pinned entries and the slots in ``exclude`` (already chosen,
    or the one being written) are never victims; the excluded slots count as gone for
    least_unique.

    Args:
        slots: The bank's ``K`` slots.
        keys: ``(K, d)`` float32 L2-normalised keys (zero rows for empty slots).
        policy: One of :data:`EVICTION_POLICIES`.
        exclude: Slots that may not be chosen.
    """
    if policy == "reject":
        return None
    cands = {k: e for k, e in enumerate(slots)
             if e is not None and not e.pinned and k not in exclude}
    if not cands:
        return None
    if policy == "lru":
        return min(cands, key=lambda k: (cands[k].last_used_step, cands[k].inserted_order))
    if policy == "fifo":
        return min(cands, key=lambda k: cands[k].inserted_order)
    if policy == "lfu":
        e = cands
        return min(e, key=lambda k: (e[k].usage, e[k].last_used_step, e[k].inserted_order))
    # least_unique: redundancy = max cosine to any other stored key (pinned ones included).
    k64 = keys.astype(np.float64)
    gram = k64 @ k64.T
    gram = (gram + gram.T) / 2.0  # exact symmetry, so a redundant pair ties -> lower slot
    present = np.array([e is not None and k not in exclude for k, e in enumerate(slots)])
    gram[:, ~present] = -np.inf
    np.fill_diagonal(gram, -np.inf)
    return max(cands, key=lambda k: (gram[k].max(), -k))


def make_room(slots: Sequence[BankEntry | None], keys: np.ndarray, policy: str, nbytes: int,
              capacity_bytes: int | None, target: int | None = None) -> list[int] | None:
    """The slots to evict, in the policy's order, so that an entry of ``nbytes`` fits.

    It fits when it has a slot (``target``, the slot it replaces or updates, or an empty one)
    and, with a byte budget, when the bytes held after the write are at most ``capacity_bytes``
    (``target``'s old entry no longer counts).

    Returns:
        The victims (``[]`` when it fits as is), or None when no choice of victims makes it fit
        (``reject``, pinned entries, or an entry larger than the budget): nothing is evicted.
    """
    if capacity_bytes is not None and nbytes > capacity_bytes:
        return None
    chosen: list[int] = []
    has_slot = target is not None or any(e is None for e in slots)
    held = sum(e.nbytes for k, e in enumerate(slots) if e is not None and k != target) \
        if capacity_bytes is not None else 0
    while not has_slot or (capacity_bytes is not None and held + nbytes > capacity_bytes):
        k = victim(slots, keys, policy, exclude={*chosen, *(() if target is None else (target,))})
        if k is None:
            return None
        chosen.append(k)
        has_slot = True
        held -= slots[k].nbytes if capacity_bytes is not None else 0
    return chosen
