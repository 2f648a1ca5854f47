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

The rules know a task only by its keys: a pending entry's own slot is the occupied slot whose key
is most like its own, when that cosine reaches ``same_task`` (:data:`SAME_TASK_THRESHOLD`, 0.8;
the semantics of :data:`~nsr_gym.bank.SIMILARITY_THRESHOLD`, a higher level). Recall's 0.5 asks
"similar enough to warm-start from", retention asks "the same task", and taking another task's
entry for its own overwrites it. Measured over 3 seeds x 4 probes per task: the analytic
benchmarks' keys (16 dimensions) put other tasks at cosines up to 0.71, the same task at 0.92 or
more; on the torch backend the same task lies at 0.76 or more in 95% of probe pairs on
Split-Digits (0.52 at worst), 0.89 or more on FiveDomains and PermutedDigits, and other tasks at
0.27 or less (0.69 on FiveDomains). Pass ``same_task=`` to move it.

On an env with ``retention="env"`` (no ``pending`` in the observation) these rules raise a
``ValueError`` saying how to make the env: they would otherwise run as the similarity rule under
the env's eviction, and a table would credit them with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsr_gym.agents.policies import Obs, Policy, SimilarityRule
from nsr_gym.bank import SIMILARITY_THRESHOLD
from nsr_gym.envs import DROP, WRITE_OFFSET

__all__ = ["RETENTION_AGENTS", "SAME_TASK_THRESHOLD", "LFURetention", "LRURetention", "PinRule",
           "RetentionRule", "after_write", "own_slot"]

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
        if obs["pending"][0] > 0:
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
