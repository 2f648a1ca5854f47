"""Theorem 3, capacity: a bank of ``K < M`` slots on a strict cycle, and its offline hit bound.

## The cache view (hits per cycle)
One access per phase to task ``m_p``. A *hit* means the task's entry is in the bank when its
phase starts. With env eviction (forced insertion) a miss inserts the task (the env stores every
phase's adapter), evicting one entry when full, except under admission control (``"reject"``,
alias ``"pin"``), which keeps the first ``K`` tasks and admits nothing else.
Steady-state hits per cycle, ``K < M`` (theory/THEORY.md's table):

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
* Belady *with bypass* (:func:`belady_bypass_hits`): on a strict cycle the incoming task is the
  one needed farthest in the future (``M`` accesses away, every resident within ``M - 1``), so
  it is always bypassed once the bank is full: it *is* pinning, ``K`` hits per cycle.

For ``K >= M`` every revisit hits: ``M`` per cycle.

## Theorem 3 (A1-A3 with ``g`` the exponential curve, complete forgetting ``gamma = 0``, no
## transfer, one update per step, strict cycle, ``K < M``, ``Delta_min >= lam``)
*Policies.* Any policy in the widest sense: it chooses every step's allocation (KEEP, FRESH,
LOAD_k, mid-phase too) and every retention (env eviction of any kind, or the agent's own
decision ``retention="agent"``: write the phase's compressed subspace into any slot, or drop it),
knowing the whole schedule. ``B_inf`` is THEORY.md's Bank oracle with an unbounded bank
(LOAD the task's own entry at each revisit start, KEEP otherwise): its return is
``M C L a* - M sum_c Phi(H_c) - lam M (C - 1)``. With ``x_c = Delta_c - lam``,
``Delta_c = Phi(0) - Phi(H_c)``:

* (i) no policy hits more than ``K`` tasks per revisit cycle (nor ``K (C - 1)`` in all);
* (ii) every policy's regret against ``B_inf`` is at least
  ``sum_{c=2..C} (M - K) x_c >= (C - 1)(M - K)(Delta_min - lam)`` (:func:`capacity_lower_bound`;
  for ``x_c < 0``, a case outside the theorem, the valid per-cycle term is ``M x_c``);
* (iii) pinning with keep-on-miss (LOAD the own entry when held, KEEP otherwise; the env's
  ``eviction="reject"`` and ``Oracle(first_visit="keep")``) attains the per-cycle bound exactly
  for every ``kappa`` and ``C``; pinning with fresh-on-miss pays ``lam`` more per miss;
* (iv) LRU and FIFO (forced insertion) hit nothing: with keep-on-miss they pay the M0 rate
  ``M x_c`` per cycle (keep-current's regret, Theorem 1'), with fresh-on-miss
  always-fresh's ``M Delta_c`` (plus ``lam (M - 1)`` in cycle 1).

*Proof.* (a) Entries are one-task vectors: an entry is ``kappa`` times the adapter at the end of
a phase of some task ``j``; with ``gamma = 0`` and at least one update after any reset or load,
every coordinate but ``j`` is 0. So a phase of task ``m`` starts from ``h_m = 0`` after KEEP
(the previous phase trained another task: ``M >= 2``), FRESH, or a LOAD of another task's entry;
only a LOAD of an entry of ``m`` (a *hit*) starts it higher. (b) A hit at phase ``p`` needs an
``m``-entry in the bank at phase ``p``. New entries appear only at phase ends (the env's
reserve, or the agent's write of the pending subspace at the next phase start), and the last
``m``-entry made before ``p`` is the one of phase ``p - M``. So the ``m``-entry used sits in one
slot through the ``M`` phase boundaries ``p - M + 1 .. p`` (entries never move between slots and
a slot holds one entry): its *holding interval*. Two hits served by one slot have disjoint
intervals (different tasks cannot share a slot at once; the same task's hits ``M`` phases apart
have disjoint intervals anyway). The revisit hits of cycle ``c`` have intervals inside
``(c - 2) M + 1 .. c M - 1``, ``2 M - 1`` boundaries, which fit one interval of length ``M`` per
slot: at most ``K`` per cycle, (i). (c) Per revisit phase against ``B_inf``'s deficit
``Phi(H_c)`` plus ``lam``: a miss has ``h_m(t) <= t + 1`` at every step (a mid-phase FRESH or
foreign LOAD restarts from 0), deficit ``>= Phi(0)`` and switch cost ``>= 0``: regret ``>=
x_c``. A hit's own entry holds at most ``H_c`` (induction on visits: a visit starting from at
most ``H_{c-1}`` ends at most ``H_{c-1} + L`` and stores ``kappa`` times that, ``H_c``), so its
deficit is ``>= Phi(H_c)`` and it paid a LOAD: regret ``>= 0``. First visits: deficit ``>=
Phi(0)``, ``B_inf``'s own, no switch: regret ``>= 0``. With ``x_c >= 0`` and at least
``M - K`` misses per revisit cycle by (i), (ii) follows; ``H_c`` and so ``Delta_c`` grow with
``c``, hence the simplified form. (d) Pinning with keep-on-miss: the first ``K`` tasks own a slot
forever, are updated in place and follow ``B_inf``'s trajectory exactly (regret 0); each other
revisit KEEPs from ``h_m = 0``: regret exactly ``Phi(0) - Phi(H_c) - lam = x_c``, (iii). (e)
LRU / FIFO: on a strict cycle the victim is the least recently written (= first inserted) entry,
the task that comes next, so no revisit finds its entry, (iv). QED.

The closed forms (:func:`capacity_return_per_cycle`) follow one rule: each phase starts from
``x = kappa (x_prev + L)`` on a hit (the entry stored at the end of the task's previous visit,
which every forced insertion and every pinned in-place update makes) and from 0 on a miss; its
reward is ``L a* - Phi(x) - lam [switched]``. Which visits hit is closed-form for ``pin``,
``lru`` and ``fifo``; for ``belady`` (forced insertion) it is the deterministic cache pattern of
:func:`capacity_hit_pattern`. :func:`simulate_capacity` is the step-level reference (the env's
semantics, slot by slot) that the tests hold the closed forms to, to 1e-9.

## General recurrence: the offline hit bound
For any request sequence, the hits of any policy in the env are at most those of Belady's MIN
*with bypass* (:func:`belady_bypass_hits`, proof there): the cache model below is what the env
allows (the set of tasks owning an entry at phase ``p + 1`` is a subset, of size ``<= K``, of
the set at phase ``p`` plus ``m_p``), so the env cannot do better than the best cache schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from nsr_gym.theory.model import bank_experience

if TYPE_CHECKING:
    from nsr_gym.theory.theorem1 import CyclicSetting

__all__ = [
    "CACHE_POLICIES",
    "MISS_ACTIONS",
    "RETENTION_RULES",
    "CapacityBound",
    "bank_inf_return",
    "belady_bypass_hits",
    "capacity_hit_pattern",
    "capacity_lower_bound",
    "capacity_regret",
    "capacity_regret_per_cycle",
    "capacity_return",
    "capacity_return_per_cycle",
    "hits_per_cycle",
    "simulate_capacity",
    "simulate_hits",
]

CACHE_POLICIES = ("lru", "fifo", "lfu", "belady", "reject", "pin")
#: Retention rules with Theorem 3 closed forms (``belady``: forced insertion).
RETENTION_RULES = ("pin", "lru", "fifo", "belady")
#: What the oracle allocation does at a phase start whose task has no entry.
MISS_ACTIONS = ("keep", "fresh")


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
    return _cache_hits(policy, M, K, cycles).reshape(cycles, M).sum(axis=1).astype(int)


def _cache_hits(policy: str, M: int, K: int, cycles: int) -> np.ndarray:
    """``(cycles * M,)`` bool: which accesses of the strict cycle hit, forced insertion."""
    seq = [p % M for p in range(M * cycles)]
    cache: list[int] = []  # insertion order, for FIFO and for "reject"
    last_use: dict[int, int] = {}
    uses: dict[int, int] = {}  # in-bank use count, reset on eviction (standard LFU)
    hits = np.zeros(len(seq), dtype=bool)
    for t, x in enumerate(seq):
        if x in cache:
            hits[t] = True
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
    return max(cache, key=lambda y: _next_use(seq, y, t))


def _next_use(seq: Sequence[int], y: int, t: int) -> float:
    for u in range(t + 1, len(seq)):
        if seq[u] == y:
            return float(u)
    return float("inf")


def _check(policy: str, M: int, K: int) -> None:
    if policy not in CACHE_POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; known: {CACHE_POLICIES}")
    if M < 2 or K < 1:
        raise ValueError(f"need M >= 2 and K >= 1, got M={M}, K={K}")


# --------------------------------------------------------------------------- Theorem 3


class CapacityBound(NamedTuple):
    """Theorem 3's lower bound on regret against the unbounded Bank ``B_inf``."""

    exact: float
    """``sum_{c>=2} n_c x_c`` with ``n_c = M - K`` (``M`` where ``x_c < 0``): the tighter number."""
    simplified: float
    """``(C - 1)(M - K)(Delta_min - lam)`` (``M`` for ``M - K`` when negative), ``<= exact``."""


def _check_rule(rule: str, on_miss: str, K: int) -> None:
    if rule not in RETENTION_RULES:
        raise ValueError(f"unknown retention rule {rule!r}; known: {RETENTION_RULES}")
    if on_miss not in MISS_ACTIONS:
        raise ValueError(f"on_miss must be one of {MISS_ACTIONS}, got {on_miss!r}")
    if K < 1:
        raise ValueError(f"need K >= 1, got K={K}")


def capacity_hit_pattern(rule: str, M: int, K: int, C: int) -> np.ndarray:
    """Which visits find their entry under the oracle allocation; ``(C, M)`` bool, row ``c - 1``.

    ``pin``: the first ``min(K, M)`` tasks in every revisit cycle; ``lru`` and ``fifo``: every
    revisit when ``K >= M``, none otherwise (Theorem 3 (iv)); ``belady`` (forced insertion): the
    cache pattern of :func:`simulate_hits`, which has no simpler closed form than its own
    period-``(M - 1)`` recursion.

    Args:
        rule: One of ``RETENTION_RULES``.
        M: Tasks, ``>= 2``.
        K: Slots, ``>= 1``.
        C: Cycles, ``>= 1``.
    """
    _check_rule(rule, "keep", K)
    out = np.zeros((C, M), dtype=bool)
    if rule == "belady":
        return _cache_hits("belady", M, K, C).reshape(C, M)
    if rule == "pin" or K >= M:
        out[1:, : min(K, M)] = True
    return out


def bank_inf_return(setting: CyclicSetting) -> np.ndarray:
    """``B_inf``'s return per cycle, ``(C,)``: ``M (L a* - Phi(H_c)) - lam M [c >= 2]``."""
    H = np.array([bank_experience(c, setting.L, setting.kappa) for c in range(1, setting.C + 1)])
    out = setting.M * (setting.L * setting.curve.a_star - np.asarray(setting.phi(H)))
    out[1:] -= setting.lam * setting.M
    return out


def capacity_return_per_cycle(setting: CyclicSetting, K: int, rule: str,
                              on_miss: str = "keep") -> np.ndarray:
    """Return per cycle of the oracle allocation with a ``K``-slot bank under ``rule``; ``(C,)``.

    The oracle allocation LOADs the task's own entry at a phase start when the bank holds it and
    otherwise does ``on_miss``: ``"keep"`` (the env's ``Oracle(first_visit="keep")``) or
    ``"fresh"`` (FRESH at every miss but the very first phase, where ``h`` is already 0: the
    ``theory.simulate`` convention; the env's ``Oracle()`` also FRESHes there, ``lam`` more).
    Complete forgetting is required (module docstring, proof step (a)).

    Args:
        setting: Strict cycle, ``gamma = 0``.
        K: Slots.
        rule: One of ``RETENTION_RULES``.
        on_miss: One of ``MISS_ACTIONS``.

    Raises:
        ValueError: for ``gamma != 0``, an unknown rule or miss action.
    """
    _check_rule(rule, on_miss, K)
    if setting.gamma != 0.0:
        raise ValueError(f"the capacity closed forms assume gamma = 0, got {setting.gamma}")
    M, L, C = setting.M, setting.L, setting.C
    hits = capacity_hit_pattern(rule, M, K, C)
    x = np.zeros(M)  # each task's start experience at its latest visit
    out = np.zeros(C)
    for c in range(C):
        for m in range(M):
            x[m] = setting.kappa * (x[m] + L) if hits[c, m] else 0.0
            switched = hits[c, m] or (on_miss == "fresh" and (c, m) != (0, 0))
            out[c] += L * setting.curve.a_star - float(setting.phi(x[m])) - setting.lam * switched
    return out


def capacity_return(setting: CyclicSetting, K: int, rule: str, on_miss: str = "keep") -> float:
    """Cumulative return, ``sum`` of :func:`capacity_return_per_cycle`."""
    return float(np.sum(capacity_return_per_cycle(setting, K, rule, on_miss)))


def capacity_regret_per_cycle(setting: CyclicSetting, K: int, rule: str,
                              on_miss: str = "keep") -> np.ndarray:
    """Regret against the unbounded Bank ``B_inf`` per cycle, ``(C,)``.

    Closed forms for ``K < M`` (``x_c = Delta_c - lam``; cycle 1 costs ``lam (M - 1)`` with
    ``on_miss="fresh"``, 0 with ``"keep"``): ``pin`` ``(M - K) x_c`` (keep) or ``(M - K)
    Delta_c`` (fresh); ``lru``, ``fifo`` ``M x_c`` (keep, the M0 rate) or ``M Delta_c`` (fresh).
    """
    return bank_inf_return(setting) - capacity_return_per_cycle(setting, K, rule, on_miss)


def capacity_regret(setting: CyclicSetting, K: int, rule: str, on_miss: str = "keep") -> float:
    """Cumulative regret against ``B_inf``, ``sum`` of :func:`capacity_regret_per_cycle`."""
    return float(np.sum(capacity_regret_per_cycle(setting, K, rule, on_miss)))


def capacity_lower_bound(setting: CyclicSetting, K: int) -> CapacityBound:
    """Theorem 3 (ii): every policy's regret against ``B_inf`` with ``K`` slots.

    ``exact = sum_{c=2..C} n_c x_c`` with ``n_c = max(M - K, 0)`` misses where ``x_c >= 0`` and
    ``n_c = M`` where ``x_c < 0`` (``lam > Delta_c``: then missing is the cheaper outcome and
    keep-current's ``M x_c`` is what a policy can reach; outside the theorem's assumptions but
    still a valid bound). Pinning with keep-on-miss attains ``exact`` when ``Delta_min >= lam``.

    Raises:
        ValueError: if ``gamma != 0`` (proof step (a) needs complete forgetting) or ``K < 1``.
    """
    if setting.gamma != 0.0:
        raise ValueError(f"capacity_lower_bound assumes gamma = 0, got gamma={setting.gamma}")
    if K < 1:
        raise ValueError(f"need K >= 1, got K={K}")
    M, C = setting.M, setting.C
    H = np.array([bank_experience(c, setting.L, setting.kappa) for c in range(2, C + 1)])
    x = setting.phi(0.0) - np.asarray(setting.phi(H), dtype=np.float64) - setting.lam
    misses = max(M - K, 0)
    exact = float(np.sum(np.where(x >= 0, misses * x, M * x)))
    x_min = float(x[0]) if len(x) else 0.0
    simplified = (C - 1) * (misses if x_min >= 0 else M) * x_min
    return CapacityBound(exact=exact, simplified=float(simplified))


# --------------------------------------------------------------------------- reference simulator


def simulate_capacity(setting: CyclicSetting, K: int, rule: str,
                      on_miss: str = "keep") -> np.ndarray:
    """Per-step rewards ``(M L C,)`` of the oracle allocation with a ``K``-slot bank, step by step.

    The env's semantics, slot by slot (any ``gamma``): at a phase start LOAD the slot owned by
    the task when there is one, else ``on_miss`` (no FRESH at the very first phase); one update
    per step (``own = h_m; h *= gamma; h_m = own + 1``); reward ``g(h_m) - lam * switched``. At
    each phase end store ``kappa * h`` under the task: in place when it owns a slot, else in the
    lowest empty slot, else by ``rule``: ``lru`` evicts the smallest last-write-or-load step
    (ties: oldest insert), ``fifo`` the oldest insert, ``pin`` stores nothing, ``belady`` evicts
    the resident whose task comes back last (ties: lowest slot).
    """
    _check_rule(rule, on_miss, K)
    M, L, C = setting.M, setting.L, setting.C
    seq = [p % M for p in range(M * C)]
    owner: list[int | None] = [None] * K
    vec: list[np.ndarray | None] = [None] * K
    last_used, order = [0] * K, [0] * K
    h, rewards, t = np.zeros(M), np.zeros(M * L * C), 0
    for p, m in enumerate(seq):
        slot = owner.index(m) if m in owner else None
        switched = slot is not None or (on_miss == "fresh" and p > 0)
        if slot is not None:
            h, last_used[slot] = vec[slot].copy(), t
        elif switched:
            h = np.zeros(M)
        for s in range(L):
            own = h[m]
            h *= setting.gamma
            h[m] = own + 1.0
            rewards[t] = float(setting.curve.acc(h[m])) - setting.lam * (switched and s == 0)
            t += 1
        if slot is None:
            slot = _store_slot(rule, owner, last_used, order, seq, p)
            if slot is None:
                continue
            owner[slot], order[slot] = m, p
        vec[slot], last_used[slot] = setting.kappa * h, t
    return rewards


def _store_slot(rule: str, owner: list[int | None], last_used: list[int], order: list[int],
                seq: Sequence[int], p: int) -> int | None:
    """The slot a new entry goes to at the end of phase ``p`` (``None``: not stored)."""
    if None in owner:
        return owner.index(None)
    slots = range(len(owner))
    if rule == "pin":
        return None
    if rule == "fifo":
        return min(slots, key=lambda k: order[k])
    if rule == "lru":
        return min(slots, key=lambda k: (last_used[k], order[k]))
    nxt = [_next_use(seq, owner[k], p) for k in slots]  # belady: farthest return, lowest slot
    return int(np.argmax(nxt))


# --------------------------------------------------------------------------- general recurrence


def belady_bypass_hits(requests: Sequence[int], K: int) -> np.ndarray:
    """Belady's MIN with bypass on ``requests``: which requests hit; ``(n,)`` bool.

    Cache model: the cache seen by request ``t`` is a set ``S_t`` of at most ``K`` items; request
    ``t`` hits iff ``r_t in S_t``; then ``S_{t+1}`` is any subset of ``S_t | {r_t}`` of size
    ``<= K`` (in the env: the tasks owning an entry, and the pending entry of the phase just
    trained, written into a slot or dropped). MIN with bypass keeps everything while it fits and
    otherwise drops, from the ``K + 1`` candidates, the one requested farthest in the future,
    the new one first on ties (a bypass). ``sum`` of the result is the most hits any policy gets.
    An immediate repeat (``r_t = r_{t-1}``) is a request like any other here; in the env KEEP
    serves it without the bank, so collapse repeats first to count bank hits only.

    *Proof of optimality* (exchange). Holding more never hurts (a policy with a superset cache
    can copy any schedule of the subset one), so an optimal schedule drops at most one
    candidate, and only when ``K + 1`` compete. Let OPT be optimal and agree with MIN before
    ``t``; at ``t`` MIN drops ``e`` (farthest next request), OPT drops ``f`` with ``next(f) <=
    next(e)``. OPT' drops ``e`` and then copies OPT with ``f`` in place of ``e`` (when OPT drops
    ``e``, OPT' drops ``f`` and the caches agree). Until ``next(f)`` neither is requested, so
    both hit alike. At ``next(f)`` OPT' hits and OPT misses; OPT' then holds OPT's cache minus
    ``e`` (or the same), and copying OPT's drops it loses at most the one hit at ``next(e)``,
    after which the candidates agree. So OPT' is optimal and agrees with MIN through ``t``; by
    induction MIN is optimal.

    Args:
        requests: Item (task) ids, in order.
        K: Cache size, ``>= 1``.
    """
    if K < 1:
        raise ValueError(f"need K >= 1, got K={K}")
    seq = [int(r) for r in requests]
    n = len(seq)
    nxt, seen = [float("inf")] * n, {}
    for t in range(n - 1, -1, -1):
        nxt[t] = seen.get(seq[t], float("inf"))
        seen[seq[t]] = float(t)
    cache: dict[int, float] = {}  # item -> its next request
    hits = np.zeros(n, dtype=bool)
    for t, r in enumerate(seq):
        hits[t] = r in cache
        cache[r] = nxt[t]
        if len(cache) > K:
            # the new item first: on ties it is the one dropped (max keeps the first maximum)
            order = [r] + [y for y in cache if y != r]
            del cache[max(order, key=lambda y: cache[y])]
    return hits
