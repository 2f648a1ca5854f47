"""Retention rules: policies that decide what the bank keeps (``retention="agent"`` envs).

With ``retention="agent"`` the env stores nothing by itself: at each phase end it holds the
trained subspace as a *pending* entry, and the next action ``[allocation, retention]`` drops it
(``retention = 0``) or writes it into slot ``k`` (``retention = 1 + k``), before the allocation.
Every rule here allocates as NSR does (:class:`~nsr_gym.agents.policies.SimilarityRule`, on the
bank as it will be after the write, which the observation's ``similarity_pending`` tells) and
decides retention from the observation (plus the order of its own writes, to break ties as the
bank's eviction does); on the analytic backend each reproduces an ``eviction`` policy's rewards
exactly (``tests/test_retention.py``):

* :class:`PinRule` (``"pin"``): admission control. A pending entry goes over its own task's
  entry when it has one (:func:`own_slot`), else into the lowest empty slot, else it is dropped:
  the first ``K`` tasks are kept for good: ``eviction="reject"``. On a strict cycle with
  ``K < M`` it hits ``K`` tasks per cycle after the first (Theorem 3).
* :class:`LFURetention` (``"lfu-retain"``): in place, else the lowest empty slot, else over the
  entry loaded least often (``usage``: the revisits observed), ties by the oldest (``age``):
  ``eviction="lfu"``.
* :class:`LRURetention` (``"lru-retain"``): in place, else the lowest empty slot, else over the
  least recently used entry (``age``): ``eviction="lru"``.

And one *reference* rule, privileged as the clairvoyant is (it reads the future; ``make_agent``
builds it from :data:`REFERENCE_RETENTION_AGENTS`, apart from the rules an agent could learn):

* :class:`BeladyRetention` (``"belady-retain"``): Belady's MIN with bypass. It reads the task
  schedule (``env.unwrapped.task_schedule()``) in its :meth:`~BeladyRetention.bind` hook, which
  :func:`~nsr_gym.agents.rollout` calls after each ``reset``; a pending entry goes over its own
  task's entry (in place), else into the lowest empty slot, else the one of the ``K + 1``
  candidates (the stored entries and the pending one) whose task is next needed last is dropped,
  the pending entry on ties (a bypass). Its hits are
  :func:`nsr_gym.theory.capacity.belady_bypass_hits`' on the schedule, the most any agent gets
  (Theorem 3's general-recurrence bound); on a strict cycle it *is* pinning.

The rules know a task only by its keys: a pending entry's own slot is the occupied slot whose key
is most like its own, when that cosine reaches ``same_task`` (:data:`SAME_TASK_THRESHOLD`, 0.8;
the semantics of :data:`~nsr_gym.bank.SIMILARITY_THRESHOLD`, a higher level). Recall's 0.5 asks
"similar enough to warm-start from", retention asks "the same task", and taking another task's
entry for its own overwrites it. Measured over 3 seeds x 4 probes per task: the analytic
benchmarks' keys (16 dimensions) put other tasks at cosines up to 0.71, the same task at 0.92 or
more; on the torch backend the same task lies at 0.76 or more in 95% of probe pairs on
Split-Digits (0.52 at worst), 0.89 or more on FiveDomains and PermutedDigits, and other tasks at
0.27 or less (0.69 on FiveDomains). Pass ``same_task=`` to move it.

On a task-free env (``task_free=True``: the pending entry is the active subspace, pending at
every step once it has trained; the observation has ``trained_steps``) a rule decides retention
only where the similarity rule sees a task shift (``task_shift`` above
:data:`~nsr_gym.agents.policies.SHIFT_THRESHOLD`): it writes the subspace it is leaving, then
allocates. Between shifts it writes nothing and keeps. Belady's rule counts phases by the
pending entries it decides, which a task-free env does not mark, so it refuses one.

On an env with ``retention="env"`` (no ``pending`` in the observation) these rules raise a
``ValueError`` saying how to make the env: they would otherwise run as the similarity rule under
the env's eviction, and a table would credit them with it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from nsr_gym.agents.policies import Obs, Policy, SimilarityRule, is_task_free, shifted
from nsr_gym.bank import SIMILARITY_THRESHOLD
from nsr_gym.envs import DROP, WRITE_OFFSET

__all__ = ["REFERENCE_RETENTION_AGENTS", "RETENTION_AGENTS", "SAME_TASK_THRESHOLD",
           "BeladyRetention", "LFURetention", "LRURetention", "PinRule", "RetentionRule",
           "after_write", "own_slot"]

#: Cosine between a pending entry's key and a slot's key from which the rules take the slot for
#: the pending task's own (see the module docstring for the measured cosines).
SAME_TASK_THRESHOLD = 0.8


def own_slot(obs: Obs, threshold: float = SAME_TASK_THRESHOLD) -> int | None:
    """The slot that holds the pending entry's own task, judged by keys: the occupied slot whose
    key is most like the pending one (``pending_similarity``; the lower slot on ties), when that
    cosine reaches ``threshold``; None otherwise."""
    occupied = obs["occupied"] > 0
    if not occupied.any():
        return None
    sims = np.where(occupied, obs["pending_similarity"], -np.inf)
    best = int(np.argmax(sims))  # first maximum: the lower slot on ties
    return best if sims[best] >= threshold else None


def after_write(obs: Obs, retention: int) -> Obs:
    """The parts of ``obs`` the allocation reads, as they will be once ``retention`` is applied:
    the written slot occupied, its similarity ``similarity_pending``, and the active subspace
    that entry (or, when dropped, an unsaved one). ``obs`` itself is not changed."""
    if obs["pending"][0] <= 0:
        return obs
    out = dict(obs)
    active = np.zeros_like(obs["active"])
    if retention == DROP:
        active[0] = 1.0
    else:
        k = retention - WRITE_OFFSET
        out["occupied"] = obs["occupied"].copy()
        out["occupied"][k] = 1.0
        out["similarity"] = obs["similarity"].copy()
        out["similarity"][k] = obs["similarity_pending"][0]
        active[1 + k] = 1.0
    out["active"] = active
    return out


class RetentionRule(Policy):
    """Base class: the similarity rule's allocation plus a retention decision (:meth:`retain`).

    ``predict`` returns an int64 array ``[allocation, retention]`` of shape ``(2,)``. Besides the
    observation, a rule remembers the order of its own writes of new entries (its actions, which
    the env's ``inserted_order`` mirrors) to break ties between equally old entries as the bank's
    eviction does; an in-place write keeps a slot's place, and an empty bank starts it afresh.

    Args:
        threshold: The allocation's novelty threshold (:class:`SimilarityRule`'s).
        same_task: The cosine from which a slot counts as the pending task's own
            (:func:`own_slot`).
    """

    name, memory_class = "retention", "history"

    def __init__(self, threshold: float = SIMILARITY_THRESHOLD,
                 same_task: float = SAME_TASK_THRESHOLD) -> None:
        self.threshold = threshold
        self.same_task = same_task
        self._allocation = SimilarityRule(threshold)
        self._written: dict[int, int] = {}  # slot -> rank of the write that put its entry there

    def reset(self, seed: int | None = None) -> None:
        self._written = {}

    def retain(self, obs: Obs) -> int:
        """The retention action for a pending entry: ``0`` drop, ``1 + k`` write into slot ``k``."""
        raise NotImplementedError

    def act(self, obs: Obs) -> Any:
        """``[allocation, retention]`` as an int64 array (retention 0 while nothing is pending)."""
        if "pending" not in obs:
            raise ValueError(f"the {self.name!r} rule decides retention: make the env with "
                             "retention='agent' (and reserve='owner'), e.g. gym.make(..., "
                             "capacity=3, retention='agent')")
        if not (obs["occupied"] > 0).any():
            self._written = {}
        retention = DROP
        if obs["pending"][0] > 0 and (not is_task_free(obs) or shifted(obs)):
            retention = self.retain(obs)
            slot = retention - WRITE_OFFSET
            if retention != DROP and slot != own_slot(obs, self.same_task):
                self._written[slot] = max(self._written.values(), default=-1) + 1
        allocation = self._allocation.act(after_write(obs, retention))
        return np.array([allocation, retention], dtype=np.int64)

    def actions(self, observation: Obs, deterministic: bool = True) -> np.ndarray:
        return self.act(observation)

    def _in_place_or_empty(self, obs: Obs) -> int | None:
        """``1 + k`` for the pending entry's own slot, else for the lowest empty slot; None when
        neither exists (the bank is full of other tasks)."""
        own = own_slot(obs, self.same_task)
        if own is not None:
            return WRITE_OFFSET + own
        empty = np.flatnonzero(obs["occupied"] <= 0)
        return WRITE_OFFSET + int(empty[0]) if len(empty) else None

    def _first(self, obs: Obs, *keys: np.ndarray) -> int:
        """``1 + k`` for the slot first in the order of ``keys`` (each ``(K,)``, smallest first),
        then of the rule's writes (oldest first), then of the slots."""
        K = len(obs["occupied"])
        written = np.array([self._written.get(k, -1) for k in range(K)])
        return WRITE_OFFSET + int(np.lexsort((np.arange(K), written, *reversed(keys)))[0])


class PinRule(RetentionRule):
    """Admission control: keep the first entries that fit, update them in place, drop the rest."""

    name = "pin"

    def retain(self, obs: Obs) -> int:
        slot = self._in_place_or_empty(obs)
        return DROP if slot is None else slot


class LFURetention(RetentionRule):
    """In place, else an empty slot, else over the least-loaded entry (ties: the oldest by
    ``age``, then by write): the env's ``eviction="lfu"`` as an agent's decision."""

    name = "lfu-retain"

    def retain(self, obs: Obs) -> int:
        slot = self._in_place_or_empty(obs)
        return self._first(obs, obs["usage"], -obs["age"]) if slot is None else slot


class LRURetention(RetentionRule):
    """In place, else an empty slot, else over the least recently used entry (``age``; ties: the
    oldest write): the env's ``eviction="lru"`` as an agent's decision."""

    name = "lru-retain"

    def retain(self, obs: Obs) -> int:
        slot = self._in_place_or_empty(obs)
        return self._first(obs, -obs["age"]) if slot is None else slot


#: Constructors of the retention rules by name (``make_agent`` knows them).
RETENTION_AGENTS: dict[str, type[RetentionRule]] = {
    "pin": PinRule,
    "lfu-retain": LFURetention,
    "lru-retain": LRURetention,
}


class BeladyRetention(RetentionRule):
    """Belady's MIN with bypass as the retention decision: a privileged reference rule.

    Call :meth:`bind` after every ``reset`` (:func:`~nsr_gym.agents.rollout` does): it reads the
    episode's schedule, ``(n_phases,)`` task ids, from ``env.unwrapped.task_schedule()``. The
    rule then knows each entry's owner from its own writes (under ``retention="agent"`` only the
    agent writes, into a bank that ``reset`` empties) and the phase from the pending entries it
    has decided (one per phase end: the ``p``-th is the entry of phase ``p - 1``, decided at the
    first step of phase ``p``). A pending entry goes

    1. over its own task's entry when one is stored (in place, as every rule here);
    2. else into the lowest empty slot;
    3. else over the stored entry whose task is next needed last (from phase ``p`` on, ``inf``
       for never), unless the pending entry's task comes back later still or as late: then it
       is dropped (the bypass; ties between stored entries: the lower slot).

    This is :func:`nsr_gym.theory.capacity.belady_bypass_hits`' cache schedule (the new item
    dropped first on ties), so with an allocation that loads a task's entry whenever the bank
    holds it, the phases that hit are exactly the ones it marks: the most hits any policy gets.
    The allocation is the similarity rule's, as for every :class:`RetentionRule`.

    Args:
        threshold: The allocation's novelty threshold (:class:`SimilarityRule`'s).
        same_task: Unused by the retention decision (owners are known); kept for the common
            signature of the rules.
    """

    name, memory_class = "belady-retain", "clairvoyant"

    def __init__(self, threshold: float = SIMILARITY_THRESHOLD,
                 same_task: float = SAME_TASK_THRESHOLD) -> None:
        super().__init__(threshold, same_task)
        self._schedule: np.ndarray | None = None
        self._owner: dict[int, int] = {}  # slot -> task of the entry the rule wrote there
        self._phase = 0  # the current phase, counted by the pending entries decided

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._owner, self._phase = {}, 0

    def bind(self, env: gym.Env) -> None:
        """Read the schedule of the episode ``env`` was just reset to (privileged information)."""
        u = env.unwrapped
        if not hasattr(u, "task_schedule"):
            raise ValueError("belady-retain needs env.unwrapped.task_schedule() (an nsr-gym "
                             "AllocationEnv)")
        self._schedule = np.asarray(u.task_schedule(), dtype=np.int64).copy()
        self._owner, self._phase = {}, 0

    def _bound(self) -> np.ndarray:
        if self._schedule is None:
            raise RuntimeError("BeladyRetention.bind(env) must be called after env.reset() "
                               "(rollout does it)")
        return self._schedule

    def next_use(self, task: int, phase: int) -> float:
        """The first phase ``>= phase`` that trains ``task`` (``inf``: none)."""
        later = np.flatnonzero(self._bound()[phase:] == task)
        return float(phase + later[0]) if len(later) else float("inf")

    def retain(self, obs: Obs) -> int:
        if is_task_free(obs):
            raise ValueError("belady-retain counts phases by the pending entries it decides, "
                             "which a task-free env (task_free=True) does not mark: use the "
                             "clairvoyant as the reference there")
        schedule = self._bound()
        occupied = set(np.flatnonzero(obs["occupied"] > 0).tolist())
        if occupied != set(self._owner):
            raise RuntimeError(f"the bank's occupied slots {sorted(occupied)} are not the ones "
                               f"belady-retain wrote {sorted(self._owner)}: it must decide every "
                               "write of the episode (bind after reset, one predict per step)")
        self._phase += 1
        if self._phase >= len(schedule):
            raise RuntimeError("more pending entries than phase ends in the bound schedule; "
                               "bind after every reset")
        task = int(schedule[self._phase - 1])  # the pending entry's owner
        slot = self._choose(task, len(obs["occupied"]))
        if slot is None:
            return DROP
        self._owner[slot] = task
        return WRITE_OFFSET + slot

    def _choose(self, task: int, K: int) -> int | None:
        """The slot (of ``K``) the pending entry of ``task`` goes to; None: drop it."""
        own = [k for k, t in sorted(self._owner.items()) if t == task]
        if own:
            return own[0]
        empty = [k for k in range(K) if k not in self._owner]
        if empty:
            return empty[0]
        stored = [self.next_use(self._owner[k], self._phase) for k in range(K)]
        victim = int(np.argmax(stored))  # the lower slot on ties
        return None if self.next_use(task, self._phase) >= stored[victim] else victim


#: Privileged reference rules by name (``make_agent`` knows them; they need ``bind(env)``).
REFERENCE_RETENTION_AGENTS: dict[str, type[RetentionRule]] = {
    "belady-retain": BeladyRetention,
}
