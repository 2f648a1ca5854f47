"""Task streams: which task each phase serves.

A stream is a sequence of phases of ``phase_length`` steps each; phase ``p`` serves task
``schedule[p]``. Schedules:

* ``cyclic``: ``M`` tasks in a fixed cycle, ``C`` cycles (``phase p -> p mod M``); cycle 1 holds
  the first visits, cycles 2..C the revisits. The setting of Theorem 1.
* ``sequential``: each task once, in order (``C = 1``).
* ``recurring``: each phase draws its task uniformly from a seeded generator (no two consecutive
  phases share a task), so a phase counter cannot predict the task.
* ``revisit``: the 5-Datasets protocol: every task once in order (first visits), then ``C - 1``
  passes that revisit every task in a seeded random order (never the same task twice in a row),
  so revisits come back after varying gaps and a phase counter cannot predict them.
* ``zipf`` and ``geometric``: long-horizon recurrence for hundreds of tasks (issue 8). New tasks
  arrive in order, task ``m`` at phase ``m * C``; every other phase revisits a task already seen,
  drawn by its *stack distance* ``d`` (how many distinct tasks were served since its last visit,
  ``d = 1`` the most recent other task) with weight ``d ** -s`` (``zipf``, default ``s = 1``) or
  ``(1 - q) ** (d - 1)`` (``geometric``, default ``q = 0.1``). ``"zipf:1.5"`` or
  ``"geometric:0.3"`` sets the parameter. An LRU bank of ``K`` slots holds the revisited task
  exactly when ``d < K``, so the law sets how much a capped bank can serve.

Phase lengths are ``L`` each by default. ``random_lengths=True`` (the task-free benchmarks)
draws them from the seed instead: ``n_phases`` lengths of at least ``max(1, L // 3)`` steps that
sum to ``n_phases * L`` (the episode keeps its length), the rest spread by a flat Dirichlet
share, so a phase runs from ``L // 3`` to several times ``L`` and a step counter cannot time a
boundary (:func:`random_phase_lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Long-horizon recurrence laws and their default parameter (``"zipf:1.5"`` sets another).
RECURRENCE_LAWS = {"zipf": 1.0, "geometric": 0.1}


class _ScheduleNames(tuple):
    """The schedule names; ``in`` also accepts a recurrence law with a parameter
    (``"zipf:1.5"``)."""

    def __contains__(self, kind: object) -> bool:
        try:
            return isinstance(kind, str) and (tuple.__contains__(self, kind)
                                              or parse_recurrence(kind) is not None)
        except ValueError:
            return False


SCHEDULES = _ScheduleNames(("cyclic", "sequential", "recurring", "revisit", *RECURRENCE_LAWS))


@dataclass(frozen=True)
class TaskStream:
    """A schedule of tasks and its phase lengths.

    Attributes:
        schedule: ``(n_phases,)`` int64 task id per phase.
        phase_length: ``L``, steps per phase (the mean one when ``phase_lengths`` is given).
        n_tasks: ``M``, number of distinct tasks the benchmark defines.
        phase_lengths: ``(n_phases,)`` int64 steps of each phase, summing to
            ``n_phases * L``; ``None``: ``L`` each.
    """

    schedule: np.ndarray
    phase_length: int
    n_tasks: int
    phase_lengths: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = self.phase_lengths
        if lengths is None:
            return
        if lengths.shape != self.schedule.shape or lengths.min(initial=1) < 1 \
                or int(lengths.sum()) != self.n_steps:
            raise ValueError(f"phase_lengths must be {len(self.schedule)} positive lengths "
                             f"summing to {self.n_steps}, got {lengths!r}")
        object.__setattr__(self, "_starts", np.concatenate([[0], np.cumsum(lengths)[:-1]]))

    @property
    def n_phases(self) -> int:
        return int(len(self.schedule))

    @property
    def n_steps(self) -> int:
        return self.n_phases * self.phase_length

    def phase_at(self, step: int) -> tuple[int, int]:
        """``(phase, step within it)`` of global step ``step`` (``0 .. n_steps - 1``)."""
        if self.phase_lengths is None:
            return divmod(int(step), self.phase_length)
        phase = int(np.searchsorted(self._starts, step, side="right")) - 1
        return phase, int(step - self._starts[phase])

    def task_at(self, step: int) -> int:
        """Task served at global step ``step`` (``0 .. n_steps - 1``)."""
        return int(self.schedule[self.phase_at(step)[0]])

    def is_phase_start(self, step: int) -> bool:
        """Whether ``step`` begins a phase (``n_steps``, the end of the stream, does not)."""
        return 0 <= step < self.n_steps and self.phase_at(step)[1] == 0

    def phase_starts(self) -> np.ndarray:
        """``(n_phases,)`` int64: the global step at which each phase begins."""
        if self.phase_lengths is None:
            return np.arange(self.n_phases, dtype=np.int64) * self.phase_length
        return self._starts.astype(np.int64, copy=True)


def random_phase_lengths(n_phases: int, phase_length: int, rng: np.random.Generator
                         ) -> np.ndarray:
    """``(n_phases,)`` int64 phase lengths drawn from ``rng``: each at least
    ``max(1, L // 3)``, summing to ``n_phases * L``; the steps above the minimum are spread by a
    multinomial draw on a flat Dirichlet share (mean ``L``, standard deviation near ``2L / 3``)."""
    shortest = max(1, phase_length // 3)
    spare = n_phases * (phase_length - shortest)
    shares = rng.dirichlet(np.ones(n_phases)) if n_phases > 1 else np.ones(1)
    return (shortest + rng.multinomial(spare, shares)).astype(np.int64)


def make_stream(
    kind: str,
    n_tasks: int,
    phase_length: int,
    n_cycles: int = 1,
    rng: np.random.Generator | None = None,
    random_lengths: bool = False,
) -> TaskStream:
    """Build a task stream.

    Args:
        kind: One of ``SCHEDULES``.
        n_tasks: ``M >= 1`` distinct tasks.
        phase_length: ``L >= 1`` steps per phase.
        n_cycles: ``C >= 1``; for ``recurring`` the stream has ``C * M`` phases.
        rng: Generator for ``recurring`` and ``revisit`` (required there, ignored otherwise).
        random_lengths: Draw the phase lengths from ``rng`` (:func:`random_phase_lengths`,
            after the schedule's own draws) instead of ``L`` each.

    Raises:
        ValueError: on an unknown kind or non-positive sizes, saying which value to change.
    """
    for name, value in (("n_tasks", n_tasks), ("phase_length", phase_length),
                        ("n_cycles", n_cycles)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if kind == "cyclic":
        schedule = np.tile(np.arange(n_tasks), n_cycles)
    elif kind == "sequential":
        schedule = np.arange(n_tasks)
    elif kind in ("recurring", "revisit") or parse_recurrence(kind) is not None:
        if rng is None:
            raise ValueError(f"a {kind} stream needs rng (a seeded numpy Generator)")
        schedule = _random_schedule(kind, n_tasks, n_cycles, rng)
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    lengths = None
    if random_lengths:
        if rng is None:
            raise ValueError("random phase lengths need rng (a seeded numpy Generator)")
        lengths = random_phase_lengths(len(schedule), int(phase_length), rng)
    return TaskStream(schedule.astype(np.int64), int(phase_length), int(n_tasks), lengths)


def _random_schedule(kind: str, n_tasks: int, n_cycles: int,
                     rng: np.random.Generator) -> np.ndarray:
    """The phase schedule of a seeded kind (``recurring``, ``revisit`` or a recurrence law)."""
    if kind == "recurring":
        n_phases = n_tasks * n_cycles
        schedule = np.empty(n_phases, dtype=np.int64)
        prev = -1
        for p in range(n_phases):
            choices = [t for t in range(n_tasks) if t != prev] if n_tasks > 1 else [0]
            prev = int(choices[int(rng.integers(len(choices)))])
            schedule[p] = prev
        return schedule
    if kind == "revisit":
        passes = [np.arange(n_tasks)]
        for _ in range(n_cycles - 1):
            order = rng.permutation(n_tasks)
            if n_tasks > 1 and order[0] == passes[-1][-1]:
                order = np.roll(order, -1)  # no task twice in a row across passes
            passes.append(order)
        return np.concatenate(passes)
    weights = recurrence_weights(*parse_recurrence(kind), n_tasks)
    return _stack_distance_schedule(n_tasks, n_cycles, weights, rng)


def parse_recurrence(kind: str) -> tuple[str, float] | None:
    """``"zipf"`` -> ``("zipf", 1.0)``, ``"geometric:0.3"`` -> ``("geometric", 0.3)``; ``None``
    for a schedule that is not a recurrence law. ValueError for a bad parameter."""
    name, sep, value = kind.partition(":")
    if name not in RECURRENCE_LAWS:
        return None
    try:
        param = float(value) if sep else RECURRENCE_LAWS[name]
    except ValueError:
        raise ValueError(f"{kind!r}: the {name} parameter must be a number, e.g. '{name}:"
                         f"{RECURRENCE_LAWS[name]}'") from None
    ok = param >= 0 if name == "zipf" else 0 < param < 1
    if not (ok and np.isfinite(param)):
        raise ValueError(f"{kind!r}: zipf needs an exponent s >= 0, geometric a q in (0, 1)")
    return name, param


def recurrence_weights(law: str, param: float, n_tasks: int) -> np.ndarray:
    """``(max(n_tasks - 1, 1),)`` unnormalised weights of stack distances ``d = 1, 2, ...``."""
    d = np.arange(1, max(n_tasks - 1, 1) + 1, dtype=np.float64)
    return d ** -param if law == "zipf" else (1.0 - param) ** (d - 1)


def _stack_distance_schedule(n_tasks: int, n_cycles: int, weights: np.ndarray,
                             rng: np.random.Generator) -> np.ndarray:
    """``n_tasks * n_cycles`` phases: arrivals in order at phases ``m * n_cycles`` (earlier while
    fewer than two tasks have been seen), revisits drawn by stack distance with ``weights``."""
    cum = np.cumsum(weights)
    schedule = np.empty(n_tasks * n_cycles, dtype=np.int64)
    stack: list[int] = []  # seen tasks, most recently served first
    for p in range(len(schedule)):
        arrives = len(stack) < n_tasks and (p >= len(stack) * n_cycles or len(stack) < 2)
        if arrives:
            task = len(stack)
        elif len(stack) == 1:
            task = stack.pop(0)  # a single task has nothing else to alternate with
        else:
            d = 1 + int(np.searchsorted(cum[: len(stack) - 1], rng.random() * cum[len(stack) - 2],
                                        side="right"))
            task = stack.pop(min(d, len(stack) - 1))
        stack.insert(0, task)
        schedule[p] = task
    return schedule
