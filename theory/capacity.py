"""Bank capacity ``K < M`` on a strict cycle: how many revisits per cycle find their entry.

Model: one access per phase to task ``m_p = p mod M``. A hit means the task's entry is in the
bank. A miss inserts the task (the env stores every phase's adapter), evicting one entry when
full, except under admission control (``"reject"``, alias ``"pin"``), which keeps the first
``K`` tasks and admits nothing else.

Steady-state hits per cycle, ``K < M`` (THEORY.md's table):

* LRU, FIFO: 0. The entry evicted is always the one needed soonest: on a strict cycle the least
  recently used (= first inserted) task is exactly the next one in the cycle.
* LFU (in-bank use counts, ties broken by recency): 0. No entry is ever hit, so every count
  stays 1 and LFU degenerates to LRU, which never hits.
* Belady with forced insertion (evict the resident entry used farthest in the future; the new
  one must go in): ``M (K - 1) / (M - 1)``. *Sketch:* the incoming task is never needed for
  ``M - 1`` accesses, so the eviction always keeps ``K - 1`` of the other ``M - 1`` tasks in
  the order they come back; in the long run each task is a hit with frequency
  ``(K - 1) / (M - 1)``. It is a long-run average; the pattern has period ``M - 1`` cycles.
* Pinning / admission control: ``K`` (the first ``K`` tasks hit in every cycle after the first).

For ``K >= M`` every revisit hits: ``M`` per cycle. When no revisit hits the Bank is no better
than always-fresh (it pays ``lam`` for a LOAD that restores nothing useful).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CACHE_POLICIES", "hits_per_cycle", "simulate_hits"]

CACHE_POLICIES = ("lru", "fifo", "lfu", "belady", "reject", "pin")


def hits_per_cycle(policy: str, M: int, K: int) -> float:
    """Steady-state (long-run mean) hits per cycle on a strict cycle of ``M`` tasks.

    Args:
        policy: One of ``CACHE_POLICIES``.
        M: Number of tasks, ``>= 2``.
        K: Capacity, ``>= 1``.
    """
    _check(policy, M, K)
    if K >= M:
        return float(M)
    if policy in ("lru", "fifo", "lfu"):
        return 0.0
    if policy == "belady":
        return M * (K - 1) / (M - 1)
    return float(K)  # reject / pin


def simulate_hits(policy: str, M: int, K: int, cycles: int) -> np.ndarray:
    """Simulate the bank as a cache over ``cycles`` cycles; return hits in each cycle.

    Args:
        policy: One of ``CACHE_POLICIES``.
        M: Number of tasks.
        K: Capacity.
        cycles: Number of cycles; cycle 1 is all (compulsory) misses.

    Returns:
        Integer array of shape ``(cycles,)``.
    """
    _check(policy, M, K)
    seq = [p % M for p in range(M * cycles)]
    T = len(seq)
    cache: list[int] = []  # insertion order, for FIFO and for "reject"
    last_use: dict[int, int] = {}
    uses: dict[int, int] = {}  # in-bank use count, reset on eviction (standard LFU)
    hits = np.zeros(cycles, dtype=int)
    for t, x in enumerate(seq):
        if x in cache:
            hits[t // M] += 1
            uses[x] += 1
        elif policy in ("reject", "pin") and len(cache) >= K:
            pass  # admission control: the bank keeps its first K tasks
        else:
            if len(cache) >= K:
                cache.remove(_victim(policy, cache, last_use, uses, seq, t))
            cache.append(x)
            uses[x] = 1
        last_use[x] = t
    return hits


def _victim(
    policy: str,
    cache: list[int],
    last_use: dict[int, int],
    uses: dict[int, int],
    seq: list[int],
    t: int,
) -> int:
    """The resident entry to evict before inserting ``seq[t]``."""
    if policy == "fifo":
        return cache[0]
    if policy == "lru":
        return min(cache, key=lambda y: last_use[y])
    if policy == "lfu":
        return min(cache, key=lambda y: (uses[y], last_use[y]))
    # Belady: farthest next use among residents (the incoming task must be inserted).
    def next_use(y: int) -> float:
        for u in range(t + 1, len(seq)):
            if seq[u] == y:
                return float(u)
        return float("inf")

    return max(cache, key=next_use)


def _check(policy: str, M: int, K: int) -> None:
    if policy not in CACHE_POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; known: {CACHE_POLICIES}")
    if M < 2 or K < 1:
        raise ValueError(f"need M >= 2 and K >= 1, got M={M}, K={K}")
