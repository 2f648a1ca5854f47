"""The clairvoyant reference: it reads the whole task schedule and plans allocation and retention.

:class:`Clairvoyant` is the upper bound wherever capacity binds. After each ``reset`` the rollout
loop calls its :meth:`~Clairvoyant.bind` hook; it reads the env's schedule
(``env.unwrapped.task_schedule()``, privileged information for reference agents only), the
bank's size, the reward weights and the learner, and plans the whole episode with :func:`plan`
on the analytic model (THEORY.md's A1-A3, the env's own :class:`AnalyticLearner` arithmetic).
Its ``predict`` then replays the plan, one action per step, ignoring the observation.

## The plan: a backward dynamic program over phases
Decisions sit at phase starts only: first the retention of the *pending* subspace (under
``retention="agent"``: drop it, ``a[1] = 0``, or write it into slot ``k``, ``a[1] = 1 + k``; under
``retention="env"`` the env stores it under its task), then the allocation (KEEP, FRESH, LOAD
slot ``k``); KEEP at every other step. The state at a phase start is the active experience vector
``h`` and the bank's contents as a multiset of stored vectors (owners too under ``"env"``, whose
in-place update depends on them); slot identity does not change any value, so the memo key is
that multiset, vectors rounded to 12 decimals, and the plan is re-walked forward on the true slot
layout to name real slots. A phase's reward is simulated with the learner's own ``train`` and
``evaluate`` (``L * updates_per_step`` updates), so planned and env rewards agree to ~1e-12.

## Why phase starts suffice (exact optimum over ALL action sequences)
Assume complete forgetting (``gamma = 0``), noise-free evaluation (``eval_samples = 0``),
``transfer >= 0``, ``D >= 0`` and ``acc_weight >= 0`` (the env enforces the last three).

*Lemma 1 (monotone value).* Order states componentwise (the active ``h``, the pending entry and
every stored vector; same occupied slots). One update ``h -> (gamma h + transfer, h_m -> h_m + 1)``
is monotone, KEEP keeps the order, FRESH maps both to 0, LOAD ``k`` and the write of the pending
entry (``kappa h``) keep it, and the reward ``acc_weight g_m(h_m) - lam sigma`` is nondecreasing
in ``h_m`` with the same ``sigma`` for the same action. So the larger state, replaying the
smaller one's actions, earns at least as much at every step: ``V`` is monotone.

*Lemma 2 (mid-phase actions are dominated).* In a phase of task ``m`` the bank is constant (it
changes only by the write at the phase start). Take any actions ``a_0 .. a_{L-1}`` in the phase
and let ``b`` be, among the *sources* they use (the kept ``h0`` if ``a_0`` is KEEP, 0 for each
FRESH, the vector of each LOAD; an invalid load is a free no-op, a KEEP, and ``a[1]`` has no
effect while nothing is pending), the one with the largest ``m``-coordinate. A source chosen at
step ``s`` gives ``h_m(t) = src_m + U (t - s + 1)`` until the next switch (``U >= 1`` updates per
step; an update is ``own = h_m; h *= gamma; h += transfer; h_m = own + 1``, so the own coordinate
never meets ``gamma``). Choosing ``b`` at step 0 and keeping gives ``h_m(t) = b_m + U (t + 1)``,
at least as much at every step, with one switch at most and none when ``b`` is the kept ``h0``:
never more switches than the original, which switched to ``b``. At the phase end both vectors
are ``transfer`` off ``m`` (``gamma = 0``, at least one update after the last switch) and the new
one's ``b_m + U L`` is at least the original's ``m``-coordinate; the bank is the same, and the
pending entry is ``kappa`` times the end vector. By Lemma 1 the rest of the episode is worth at
least as much.

Applying Lemma 2 phase by phase from the first one turns any action sequence into a phase-level
one that earns at least as much, so the DP's value is the optimum over all action sequences.
``tests/test_clairvoyant.py`` checks it against a step-level brute force (every action at every
step) to 1e-9. With ``gamma > 0``, evaluation noise, a model other than the env's learner (the
torch backend: the plan uses ``AnalyticConfig`` defaults or the parameters given), or a state
space above ``max_states``, the plan is an approximation and ``exact`` is False.

## The fallback heuristic (``method = "heuristic"``)
Above ``max_states`` states the plan walks forward once: retention by Belady's MIN with bypass
(an entry of the pending task is replaced in place when the new one holds more of it; else an
empty slot; else the resident or the pending entry whose task comes back last is dropped, the
pending one on ties), then the allocation with the best reward this phase among KEEP, FRESH and
LOADs of the task's own entries.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from nsr_gym.agents.policies import Obs, Policy
from nsr_gym.envs import FRESH, KEEP, LOAD_OFFSET
from nsr_gym.learners import AnalyticConfig, AnalyticLearner

__all__ = ["DEFAULT_MAX_STATES", "RETENTION_MODES", "Clairvoyant", "Plan", "PlanningProblem",
           "plan"]

#: ``"env"``: the env stores each phase's subspace under its task; ``"agent"``: the plan does.
RETENTION_MODES = ("env", "agent")
#: States (summed over phases) the exact program may visit before it falls back.
DEFAULT_MAX_STATES = 200_000
_DECIMALS = 12


@dataclass(frozen=True)
class PlanningProblem:
    """One episode to plan: the schedule, the bank, the reward and the analytic model.

    Attributes:
        schedule: ``(n_phases,)`` task id of every phase.
        n_tasks: ``M``.
        capacity: ``K``, bank slots.
        phase_length: ``L``, steps per phase.
        phase_lengths: Steps of each phase where they differ (a task-free env draws them;
            ``env.unwrapped.phase_starts()``); ``None``: ``L`` each.
        updates_per_step: ``U``.
        lambda_switch: Switching cost per effective non-keep action (reward units).
        acc_weight: Weight of accuracy in the reward.
        config: The analytic model planned on.
        retention: One of :data:`RETENTION_MODES`.
        model_is_env: Whether ``config`` is the env's own learner (else the plan approximates).
    """

    schedule: np.ndarray
    n_tasks: int
    capacity: int
    phase_length: int
    updates_per_step: int = 1
    lambda_switch: float = 0.0
    acc_weight: float = 1.0
    config: AnalyticConfig = dataclasses.field(default_factory=AnalyticConfig)
    retention: str = "agent"
    model_is_env: bool = True
    phase_lengths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.retention not in RETENTION_MODES:
            raise ValueError(f"retention must be one of {RETENTION_MODES}, got {self.retention!r}")
        if self.retention == "env" and len(set(self.schedule.tolist())) > self.capacity:
            raise ValueError("with retention='env' the bank would evict (more tasks than slots); "
                             "the clairvoyant plans retention itself: make the env with "
                             "retention='agent'")
        if self.phase_lengths is not None and len(self.phase_lengths) != len(self.schedule):
            raise ValueError(f"phase_lengths has {len(self.phase_lengths)} phases, the schedule "
                             f"{len(self.schedule)}")

    def length(self, p: int) -> int:
        """Steps of phase ``p``."""
        return self.phase_length if self.phase_lengths is None else int(self.phase_lengths[p])

    def starts(self) -> np.ndarray:
        """``(n_phases,)`` the first step of every phase."""
        lengths = [self.length(p) for p in range(len(self.schedule))]
        return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    @classmethod
    def from_env(cls, env: gym.Env, config: AnalyticConfig | dict | None = None
                 ) -> PlanningProblem:
        """The problem of the episode ``env`` has just been reset to.

        Args:
            env: An nsr-gym ``AllocationEnv`` (wrapped or not), right after ``reset``, with an
                empty bank and ``reserve="owner"``.
            config: The analytic model to plan on; default the env's own analytic learner, or
                ``AnalyticConfig()`` for the torch backend (an approximation).
        """
        u = env.unwrapped
        if not hasattr(u, "task_schedule"):
            raise ValueError("the clairvoyant needs env.unwrapped.task_schedule() (an nsr-gym "
                             "AllocationEnv)")
        if getattr(u, "reserve", "owner") != "owner":
            raise ValueError("the clairvoyant plans for reserve='owner' only")
        if u.bank.view.entries:
            raise ValueError("the clairvoyant plans from an empty bank: bind right after reset")
        own = u.learner.config if isinstance(u.learner, AnalyticLearner) else None
        if isinstance(config, dict):
            config = AnalyticConfig(**config)
        lengths = None
        if getattr(u, "task_free", False):  # drawn phase lengths: read them (privileged)
            lengths = tuple(np.diff(np.append(u.phase_starts(), u.n_steps)).tolist())
        return cls(schedule=np.asarray(u.task_schedule(), dtype=np.int64).copy(),
                   n_tasks=int(u.n_tasks), capacity=int(u.capacity),
                   phase_length=int(u.phase_length), updates_per_step=int(u.updates_per_step),
                   lambda_switch=float(u.lambda_switch), acc_weight=float(u.acc_weight),
                   config=config or own or AnalyticConfig(),
                   retention=getattr(u, "retention", "env"),
                   model_is_env=own is not None and (config is None or config == own),
                   phase_lengths=lengths)

    def inexact_reasons(self) -> list[str]:
        """Why the exact program's optimum need not be the optimum over all action sequences."""
        cfg, out = self.config, []
        if self.acc_weight < 0 or cfg.transfer < 0 or self.updates_per_step < 1:
            out.append("acc_weight < 0, transfer < 0 or no update per step: values not monotone")
        if not self.model_is_env:
            out.append("planned on an analytic model, not the env's own learner")
        if cfg.gamma != 0.0:
            out.append("gamma > 0: mid-phase actions are not proven dominated")
        if cfg.eval_samples > 0:
            out.append("evaluation noise: optimal for the expected return only")
        return out


class Plan(NamedTuple):
    """A planned episode.

    Attributes:
        actions: ``(n_steps, 2)`` int64, read-only: ``[:, 0]`` the allocation, ``[:, 1]`` the
            retention decision (always 0 under ``retention="env"`` and when nothing is pending).
        value: The planned return (reward units) on the model.
        exact: Whether ``value`` is the optimum over all action sequences in the env.
        method: ``"dp"`` or ``"heuristic"``.
        n_states: States the program visited (summed over phases).
        reasons: Why ``exact`` is False (empty when it is True).
    """

    actions: np.ndarray
    value: float
    exact: bool
    method: str
    n_states: int
    reasons: tuple[str, ...]


class _Entry(NamedTuple):
    owner: int
    vec: np.ndarray
    key: tuple[float, ...]


class _State(NamedTuple):
    h: np.ndarray
    key: tuple[float, ...]
    slots: tuple[_Entry | None, ...]


class _Choice(NamedTuple):
    retain: int  # a[1]
    alloc: int  # a[0]
    slots: tuple[_Entry | None, ...]
    bank_key: tuple  # the value-relevant content of ``slots``
    start: np.ndarray
    start_key: tuple[float, ...]


def _key(v: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(v, _DECIMALS).tolist())


class _Planner:
    """The phase model and the decisions of :func:`plan` (one instance per problem)."""

    def __init__(self, pb: PlanningProblem) -> None:
        self.pb = pb
        self.learner = AnalyticLearner(pb.n_tasks, dataclasses.replace(pb.config, eval_samples=0))
        self.kappa = float(pb.config.kappa)
        self.zero = np.zeros(pb.n_tasks)
        self.zero_key = _key(self.zero)
        self._phases: dict[tuple[int, tuple[float, ...]], tuple[float, np.ndarray, tuple]] = {}

    def phase(self, p: int, start: np.ndarray, start_key: tuple[float, ...]
              ) -> tuple[float, np.ndarray, tuple[float, ...]]:
        """``(sum of acc_weight * accuracy, end vector, its key)`` of phase ``p`` from
        ``start``."""
        task, length = int(self.pb.schedule[p]), self.pb.length(p)
        hit = self._phases.get((task, length, start_key))
        if hit is None:
            lr, pb = self.learner, self.pb
            lr.h = start.copy()
            total = 0.0
            for _ in range(length):
                lr.train(task, pb.updates_per_step)
                total += pb.acc_weight * lr.evaluate(task)
            hit = (total, lr.h.copy(), _key(lr.h))
            self._phases[(task, length, start_key)] = hit
        return hit

    def bank_key(self, slots: tuple[_Entry | None, ...]) -> tuple:
        """What of the bank the value depends on: the stored vectors (with owners under
        ``retention="env"``, whose in-place update reads them), as a multiset."""
        if self.pb.retention == "agent":
            return tuple(sorted(e.key for e in slots if e is not None))
        return tuple(sorted((e.owner, e.key) for e in slots if e is not None))

    def state_key(self, st: _State) -> tuple:
        return st.key, self.bank_key(st.slots)

    def pending(self, p: int, st: _State) -> _Entry | None:
        if p == 0:
            return None
        vec = self.kappa * st.h  # the learner's snapshot arithmetic
        return _Entry(int(self.pb.schedule[p - 1]), vec, _key(vec))

    def retentions(self, p: int, st: _State) -> Iterator[tuple[int, tuple, tuple]]:
        """``(a[1], bank after it, its key)`` for each distinct outcome of the retention."""
        new = self.pending(p, st)
        if new is None:
            yield 0, st.slots, self.bank_key(st.slots)
            return
        if self.pb.retention == "env":  # in place for its owner, else the lowest empty slot
            owners = [None if e is None else e.owner for e in st.slots]
            k = owners.index(new.owner) if new.owner in owners else owners.index(None)
            slots = st.slots[:k] + (new,) + st.slots[k + 1:]
            yield 0, slots, self.bank_key(slots)
            return
        content = self.bank_key(st.slots)
        yield 0, st.slots, content
        seen = {content}
        for k in range(len(st.slots)):
            slots = st.slots[:k] + (new,) + st.slots[k + 1:]
            content = self.bank_key(slots)
            if content not in seen:
                seen.add(content)
                yield 1 + k, slots, content

    def choices(self, p: int, st: _State) -> Iterator[_Choice]:
        """Every distinct phase-start decision: retention, then KEEP, FRESH or a LOAD."""
        for retain, slots, bank_key in self.retentions(p, st):
            yield _Choice(retain, KEEP, slots, bank_key, st.h, st.key)
            yield _Choice(retain, FRESH, slots, bank_key, self.zero, self.zero_key)
            seen: set[tuple[float, ...]] = set()
            for k, e in enumerate(slots):
                if e is not None and e.key not in seen:
                    seen.add(e.key)
                    yield _Choice(retain, LOAD_OFFSET + k, slots, bank_key, e.vec, e.key)

    def step(self, p: int, ch: _Choice) -> tuple[float, _State, tuple]:
        """The phase's reward under ``ch``, the next phase's start state and its key."""
        acc, end, end_key = self.phase(p, ch.start, ch.start_key)
        reward = acc - self.pb.lambda_switch * float(ch.alloc != KEEP)
        return reward, _State(end, end_key, ch.slots), (end_key, ch.bank_key)


class _TooLarge(Exception):
    pass


def _initial(pb: PlanningProblem) -> _State:
    h = np.zeros(pb.n_tasks)
    return _State(h, _key(h), (None,) * pb.capacity)


class _Values(NamedTuple):
    index: list[dict[tuple, int]]  # per phase start: state key -> row
    values: list[np.ndarray]  # per phase start: the optimal value of the rest, per row
    visited: int


def _exact(planner: _Planner, max_states: int) -> _Values:
    """Forward: every reachable state, phase by phase, and the transitions; backward: values."""
    n = len(planner.pb.schedule)
    start = _initial(planner.pb)
    index, states, edges = [{planner.state_key(start): 0}], [start], []
    visited = 1
    for p in range(n):
        nxt: dict[tuple, int] = {}
        children: list[_State] = []
        src: list[int] = []
        dst: list[int] = []
        rew: list[float] = []
        for i, st in enumerate(states):
            for ch in planner.choices(p, st):
                r, child, key = planner.step(p, ch)
                j = nxt.setdefault(key, len(children))
                if j == len(children):
                    children.append(child)
                src.append(i)
                dst.append(j)
                rew.append(r)
        visited += len(children)
        if visited > max_states:
            raise _TooLarge
        edges.append((np.array(src), np.array(dst), np.array(rew)))
        index.append(nxt)
        states = children
    values = [np.zeros(len(index[n]))]
    for p in range(n - 1, -1, -1):
        src, dst, rew = edges[p]
        v = np.full(len(index[p]), -np.inf)
        np.maximum.at(v, src, rew + values[0][dst])
        values.insert(0, v)
    return _Values(index, values, visited)


def _walk(planner: _Planner, dp: _Values | None) -> tuple[np.ndarray, float]:
    """Actions on the true slot layout: argmax of the program (``dp``) or the heuristic."""
    pb = planner.pb
    n, starts = len(pb.schedule), pb.starts()
    actions = np.zeros((n * pb.phase_length, 2), dtype=np.int64)  # the lengths sum to n * L
    st, total = _initial(pb), 0.0
    for p in range(n):
        if dp is not None:
            def score(ch: _Choice, p: int = p) -> float:
                r, _, key = planner.step(p, ch)
                return r + dp.values[p + 1][dp.index[p + 1][key]]

            best = max(planner.choices(p, st), key=score)  # the first of equal values
        else:
            best = _heuristic_choice(planner, p, st)
        reward, st, _ = planner.step(p, best)
        total += reward
        actions[starts[p]] = (best.alloc, best.retain)
    actions.setflags(write=False)
    return actions, total


def _heuristic_choice(planner: _Planner, p: int, st: _State) -> _Choice:
    """Belady-with-bypass retention, then the best allocation this phase (module docstring)."""
    pb, task = planner.pb, int(planner.pb.schedule[p])
    new = planner.pending(p, st)
    if new is None or pb.retention == "env":
        retain, slots, _ = next(planner.retentions(p, st))
    else:
        retain = _belady_slot(pb.schedule, p, st.slots, new)
        k = retain - 1
        slots = st.slots if retain == 0 else st.slots[:k] + (new,) + st.slots[k + 1:]
    bank_key = planner.bank_key(slots)
    cands = [_Choice(retain, KEEP, slots, bank_key, st.h, st.key),
             _Choice(retain, FRESH, slots, bank_key, planner.zero, planner.zero_key)]
    cands += [_Choice(retain, LOAD_OFFSET + k, slots, bank_key, e.vec, e.key)
              for k, e in enumerate(slots) if e is not None and e.owner == task]
    return max(cands, key=lambda c: planner.step(p, c)[0])  # the first of equal rewards


def _belady_slot(schedule: np.ndarray, p: int, slots: tuple[_Entry | None, ...],
                 new: _Entry) -> int:
    """``a[1]`` for the pending entry ``new`` at the start of phase ``p`` (MIN with bypass)."""
    owners = [None if e is None else e.owner for e in slots]
    if new.owner in owners:
        k = owners.index(new.owner)
        return 1 + k if new.vec[new.owner] >= slots[k].vec[new.owner] else 0
    if None in owners:
        return 1 + owners.index(None)
    later = schedule[p:].tolist()

    def comes_back(task: int) -> float:
        return float(later.index(task)) if task in later else float("inf")

    cands = [(comes_back(new.owner), -1)] + [(comes_back(o), k) for k, o in enumerate(owners)]
    k = max(cands, key=lambda c: c[0])[1]  # the pending one first: dropped on ties
    return 0 if k < 0 else 1 + k


def plan(problem: PlanningProblem, max_states: int = DEFAULT_MAX_STATES) -> Plan:
    """Plan the episode: the exact phase-level program, or the heuristic above ``max_states``.

    Args:
        problem: The episode.
        max_states: Cap on the states the exact program visits (summed over phases).

    Returns:
        The :class:`Plan`; ``exact`` is True only for the finished program on the env's own
        analytic learner with ``gamma = 0`` and ``eval_samples = 0`` (module docstring).
    """
    return _plan_cached(_ProblemKey(problem), int(max_states))


class _ProblemKey:
    """A hashable handle on a :class:`PlanningProblem` (its schedule is an array)."""

    def __init__(self, pb: PlanningProblem) -> None:
        self.pb = pb
        rest = [(f.name, getattr(pb, f.name)) for f in dataclasses.fields(pb)
                if f.name != "schedule"]
        self._key = (pb.schedule.tobytes(), repr(rest))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _ProblemKey) and self._key == other._key


@functools.lru_cache(maxsize=16)
def _plan_cached(key: _ProblemKey, max_states: int) -> Plan:
    planner = _Planner(key.pb)
    reasons = key.pb.inexact_reasons()
    try:
        dp: _Values | None = _exact(planner, max_states)
        method, visited = "dp", dp.visited
    except _TooLarge:
        dp, method, visited = None, "heuristic", max_states
        reasons.append(f"more than {max_states} states: Belady-with-bypass heuristic")
    actions, total = _walk(planner, dp)
    value = total if dp is None else dp.values[0][0]
    return Plan(actions, float(value), not reasons, method, visited, tuple(reasons))


class Clairvoyant(Policy):
    """Knows the whole schedule; plans allocation and retention (module docstring).

    Call :meth:`bind` after every ``reset`` (:func:`~nsr_gym.agents.rollout` does); each
    ``predict`` then returns the next planned action: an int64 array ``(2,)`` (allocation,
    retention) under ``retention="agent"``, a 0-d one under ``retention="env"``.

    Args:
        model: The analytic model to plan on (an ``AnalyticConfig`` or its keyword dict); default
            the env's own analytic learner, or ``AnalyticConfig()`` on the torch backend.
        max_states: Cap of the exact program before the heuristic takes over.
    """

    name, memory_class = "clairvoyant", "clairvoyant"

    def __init__(self, model: AnalyticConfig | dict | None = None,
                 max_states: int = DEFAULT_MAX_STATES) -> None:
        self.model = model
        self.max_states = int(max_states)
        self.plan: Plan | None = None
        self._multi = False
        self._t = 0

    @property
    def exact(self) -> bool:
        """Whether the bound plan is the exact optimum (False before :meth:`bind`)."""
        return self.plan is not None and self.plan.exact

    def reset(self, seed: int | None = None) -> None:
        self._t = 0

    def bind(self, env: gym.Env) -> None:
        """Plan the episode ``env`` was just reset to (it reads ``task_schedule()``)."""
        problem = PlanningProblem.from_env(env, self.model)
        self.plan = plan(problem, self.max_states)
        self._multi = problem.retention == "agent"
        self._t = 0

    def actions(self, observation: Obs, deterministic: bool = True) -> np.ndarray:
        if self.plan is None:
            raise RuntimeError("Clairvoyant.bind(env) must be called after env.reset() (rollout "
                               "does it)")
        if self._t >= len(self.plan.actions):
            raise RuntimeError("the episode ran past the clairvoyant's plan; bind after reset")
        a = self.plan.actions[self._t]
        self._t += 1
        return a.copy() if self._multi else np.asarray(a[0], dtype=np.int64)

    def act(self, obs: Obs) -> int:
        return int(self.actions(obs).reshape(-1)[0])
