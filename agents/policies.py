"""Rule-based allocation policies with SB3's ``predict`` signature, and their base class.

Every policy maps the env's ``Dict`` observation to an action: ``0`` keep, ``1`` fresh,
``2 + k`` load slot ``k``. The classes of ``theory/THEORY.md``:

* **M0, bank-free**: :class:`AlwaysFresh` (fresh at every task shift) and :class:`KeepCurrent`
  (sequential fine-tuning). They never load; the only head they have is the active one.
* **M1, task-blind**: :class:`FixedSlot` and :class:`RandomSlot` act at task shifts only and
  choose from one fixed distribution that ignores which task arrived. The shift signal only
  times their decision, it never informs it.
* **History-aware**: :class:`SimilarityRule` (argmax cosine, fresh below a threshold): NSR's
  allocation rule; :class:`AdaptiveSimilarityRule`, the same with a novelty threshold that
  grows with the bank. :class:`RoundRobin` loads slots in turn: a phase counter, which is memory of
  the schedule, so it is *not* memoryless (it is exact on a strict cycle and useless on a
  recurring one).
* **Oracle**: :class:`Oracle` reads the true next task from ``info``; the regret reference.

Heads travel with the subspace: a bank entry stores the head trained with its adapter, so
loading an entry restores both; memoryless policies keep no head beyond the active one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsr_gym.bank import SIMILARITY_THRESHOLD
from nsr_gym.envs import FRESH, KEEP, LOAD_OFFSET

Obs = dict[str, np.ndarray]

#: ``task_shift`` above which a policy treats the step as the start of a new task.
SHIFT_THRESHOLD = 0.1
#: Rival cosines the adaptive novelty threshold needs before it departs from the fixed one.
MIN_RIVALS = 5


class Policy:
    """Base class: a policy with SB3's ``predict`` and two optional hooks.

    Attributes:
        name: Short identifier used in tables.
        memory_class: ``"M0"``, ``"M1"``, ``"history"``, ``"oracle"`` or ``"learned"``.
    """

    name = "policy"
    memory_class = "history"

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; policies with randomness reseed from ``seed``."""

    def observe(self, info: dict[str, Any]) -> None:
        """Receive the env's ``info`` after ``reset`` and each ``step``.

        Only the oracle reads it.
        """

    def act(self, obs: Obs) -> int:
        """The action for one observation (``0`` keep, ``1`` fresh, ``2 + k`` load slot ``k``)."""
        raise NotImplementedError

    def actions(self, observation: Obs, deterministic: bool = True) -> np.ndarray:
        """The action(s) :meth:`predict` returns; the one method a subclass with its own network
        overrides (:class:`~nsr_gym.agents.sb3_policy.SB3Policy`).

        Args:
            observation: The env's ``Dict`` observation.
            deterministic: Greedy actions; rules are always deterministic and ignore it.

        Returns:
            A 0-d int64 array (rules); a policy that takes batched observations returns ``(n,)``.
        """
        return np.asarray(self.act(observation), dtype=np.int64)

    def predict(
        self,
        observation: Obs,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """SB3-compatible: returns ``(action, state)``, ``state`` passed through unchanged.

        ``action`` comes from :meth:`actions`; none of these policies is recurrent, so
        ``episode_start`` is ignored, as SB3's feed-forward policies ignore it.
        """
        return self.actions(observation, deterministic), state


def is_task_free(obs: Obs) -> bool:
    """Whether ``obs`` comes from a task-free env (``task_free=True``: it has ``trained_steps``),
    where the rules act only at the shifts they see."""
    return "trained_steps" in obs


def shifted(obs: Obs) -> bool:
    """Whether the rules treat the step as the start of a new task: ``task_shift`` above
    :data:`SHIFT_THRESHOLD`."""
    return float(obs["task_shift"][0]) > SHIFT_THRESHOLD


def _active_slot(obs: Obs) -> int | None:
    idx = int(np.argmax(obs["active"]))
    return None if idx == 0 or obs["active"][idx] == 0 else idx - 1


class KeepCurrent(Policy):
    """Sequential fine-tuning: one subspace for everything, never switches (class M0)."""

    name, memory_class = "keep-current", "M0"

    def act(self, obs: Obs) -> int:
        return KEEP


class AlwaysFresh(Policy):
    """A fresh subspace at every task shift, keep otherwise (class M0)."""

    name, memory_class = "always-fresh", "M0"

    def act(self, obs: Obs) -> int:
        return FRESH if shifted(obs) else KEEP


class FixedSlot(Policy):
    """At every task shift load slot ``slot`` when it is occupied, keep otherwise (class M1)."""

    memory_class = "M1"

    def __init__(self, slot: int = 0) -> None:
        self.slot = slot
        self.name = "fixed-slot" if slot == 0 else f"fixed-slot-{slot}"

    def act(self, obs: Obs) -> int:
        if shifted(obs) and obs["occupied"][self.slot] > 0:
            return LOAD_OFFSET + self.slot
        return KEEP


class RandomSlot(Policy):
    """At every task shift load a uniformly drawn occupied slot (class M1)."""

    name, memory_class = "random-slot", "M1"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs: Obs) -> int:
        occupied = np.flatnonzero(obs["occupied"] > 0)
        if not shifted(obs) or len(occupied) == 0:
            return KEEP
        return LOAD_OFFSET + int(self._rng.choice(occupied))


class SimilarityRule(Policy):
    """NSR's recall: load the most similar entry; a fresh subspace for a task unlike any stored.

    On a task-free env (``task_free=True``, whose observation has ``trained_steps``) it acts
    only where it sees a task shift (:func:`shifted`) and keeps in between.

    Args:
        threshold: Cosine similarity below which the task counts as new (default: the bank's
            :data:`~nsr_gym.bank.SIMILARITY_THRESHOLD`, 0.5).
    """

    name, memory_class = "similarity", "history"

    def __init__(self, threshold: float = SIMILARITY_THRESHOLD) -> None:
        self.threshold = threshold

    def novelty_threshold(self, stored: np.ndarray) -> float:
        """The cosine the best match must reach, given the cosines to every stored entry."""
        return self.threshold

    def act(self, obs: Obs) -> int:
        if is_task_free(obs) and not shifted(obs):
            return KEEP  # task-free: similarity moves with every noisy batch; act at shifts only
        occupied = obs["occupied"] > 0
        sims = np.where(occupied, obs["similarity"], -np.inf)
        active = _active_slot(obs)
        if occupied.any() and np.max(sims) >= self.novelty_threshold(obs["similarity"][occupied]):
            best = int(np.argmax(sims))
            # Reload only when the best entry is not already the active subspace.
            return KEEP if best == active else LOAD_OFFSET + best
        return FRESH if shifted(obs) else KEEP


class AdaptiveSimilarityRule(SimilarityRule):
    """:class:`SimilarityRule` whose novelty threshold grows with the bank.

    A new task's best cosine is the largest of ``n`` rival cosines, and that maximum rises as the
    bank fills (0.45 with 10 permuted-digit tasks stored, 0.77 with 1000:
    ``results/scaling/scaling.md``), so a fixed threshold ends up taking every new task for a
    stored one. This rule reads the rivals off the observation (the cosines to every stored entry
    but the best: mean ``mu``, variance ``v``), treats them as cosines between random directions
    in ``d = 1 / v`` dimensions, and takes the level ``t_n`` that the largest of ``n`` such
    cosines exceeds with probability about ``1 / 2`` (``n P(cos > t_n) = 1``, from the
    regularised incomplete beta function). It recalls only when the best cosine also reaches
    ``mu + t_n + margin``; with fewer than :data:`MIN_RIVALS` rivals it is the fixed rule.
    ``nsr-gym study novelty`` measures what this buys and costs.

    Args:
        threshold: The fixed rule's threshold, still a floor.
        margin: Cosine added to the rivals' expected maximum.
    """

    name = "similarity-adaptive"

    def __init__(self, threshold: float = SIMILARITY_THRESHOLD, margin: float = 0.1) -> None:
        super().__init__(threshold)
        self.margin = margin

    def novelty_threshold(self, stored: np.ndarray) -> float:
        if stored.size < MIN_RIVALS + 1:
            return self.threshold
        from scipy.special import betaincinv  # scipy comes with scikit-learn

        rivals = np.delete(stored, np.argmax(stored)).astype(np.float64)
        d = max(2.0, 1.0 / max(float(rivals.var(ddof=1)), 1e-12))
        # P(cos > t) = I_{1 - t^2}((d - 1) / 2, 1 / 2) / 2 for a random direction; set it to 1/n.
        x = float(betaincinv((d - 1.0) / 2.0, 0.5, min(1.0, 2.0 / rivals.size)))
        level = float(np.sqrt(max(0.0, 1.0 - x)))
        return max(self.threshold, float(rivals.mean()) + level + self.margin)


class RoundRobin(Policy):
    """Load slots in turn at each task shift: a phase counter, so NOT memoryless."""

    name, memory_class = "round-robin", "history"

    def __init__(self) -> None:
        self._phase = 0

    def reset(self, seed: int | None = None) -> None:
        self._phase = 0

    def act(self, obs: Obs) -> int:
        if not shifted(obs):
            return KEEP
        K = len(obs["occupied"])
        slot = self._phase % K
        self._phase += 1
        return LOAD_OFFSET + slot if obs["occupied"][slot] > 0 else FRESH


class Oracle(Policy):
    """Knows the true next task: loads its entry at each revisit.

    A reference agent: it reads privileged information, from the env it is bound to
    (``bind(env)``, which :func:`nsr_gym.agents.rollout` calls: ``env.unwrapped.oracle_info()``)
    or, unbound, from an info made with ``privileged_info=True``.

    Args:
        first_visit: Action at a task's first visit: ``"fresh"`` (the default: on the torch
            backend a fresh subspace learns a new task faster than another task's), or ``"keep"``
            (the comparator B of ``theory/THEORY.md``, which never pays a switch it need not pay).
    """

    name, memory_class = "oracle", "oracle"

    def __init__(self, first_visit: str = "fresh") -> None:
        if first_visit not in ("keep", "fresh"):
            raise ValueError("first_visit must be 'keep' or 'fresh'")
        self.first_visit = first_visit
        self._info: dict[str, Any] = {}
        self._env: Any = None

    def bind(self, env: Any) -> None:
        """Read the ground truth from ``env`` (wrapped or not) at every decision."""
        self._env = env.unwrapped

    def observe(self, info: dict[str, Any]) -> None:
        self._info = info

    def act(self, obs: Obs) -> int:
        info = self._info
        if not info.get("next_is_phase_start", 0):
            return KEEP
        if self._env is not None:
            slot = int(self._env.oracle_info()["next_task_slot"])
        elif "next_task_slot" in info:
            slot = int(info["next_task_slot"])
        else:
            raise ValueError("the oracle reads privileged information: bind it to the env "
                             "(oracle.bind(env), as nsr_gym.agents.rollout does) or make the "
                             "env with privileged_info=True")
        if slot < 0:
            return FRESH if self.first_visit == "fresh" else KEEP
        return KEEP if _active_slot(obs) == slot else LOAD_OFFSET + slot


#: Constructors of the rule agents by name.
RULE_AGENTS = {
    "always-fresh": AlwaysFresh,
    "keep-current": KeepCurrent,
    "fixed-slot": FixedSlot,
    "random-slot": RandomSlot,
    "round-robin": RoundRobin,
    "similarity": SimilarityRule,
    "similarity-adaptive": AdaptiveSimilarityRule,
    "oracle": Oracle,
}


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a rule agent by name.

    Args:
        name: A key of :data:`RULE_AGENTS`.
        **kwargs: Passed to the rule's constructor (``threshold=`` of the similarity rules,
            ``first_visit=`` of the oracle, ``slot=`` of fixed-slot, ``seed=`` of random-slot).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name not in RULE_AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose from {sorted(RULE_AGENTS)}")
    return RULE_AGENTS[name](**kwargs)
