"""Task streams: which task each phase serves.

A stream is a sequence of phases of ``phase_length`` steps each; phase ``p`` serves task
``schedule[p]``. Schedules:

* ``cyclic``: ``M`` tasks in a fixed cycle, ``C`` cycles (``phase p -> p mod M``); cycle 1 holds
  the first visits, cycles 2..C the revisits. The setting of Theorem 1.
* ``sequential``: each task once, in order (``C = 1``).
* ``recurring``: each phase draws its task uniformly from a seeded generator (no two consecutive
  phases share a task), so a phase counter cannot predict the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEDULES = ("cyclic", "sequential", "recurring")


@dataclass(frozen=True)
class TaskStream:
    """A schedule of tasks and its phase length.

    Attributes:
        schedule: ``(n_phases,)`` int64 task id per phase.
        phase_length: ``L``, steps per phase.
        n_tasks: ``M``, number of distinct tasks the benchmark defines.
    """

    schedule: np.ndarray
    phase_length: int
    n_tasks: int

    @property
    def n_phases(self) -> int:
        return int(len(self.schedule))

    @property
    def n_steps(self) -> int:
        return self.n_phases * self.phase_length

    def task_at(self, step: int) -> int:
        """Task served at global step ``step`` (``0 .. n_steps - 1``)."""
        return int(self.schedule[step // self.phase_length])


def make_stream(
    kind: str,
    n_tasks: int,
    phase_length: int,
    n_cycles: int = 1,
    rng: np.random.Generator | None = None,
) -> TaskStream:
    """Build a task stream.

    Args:
        kind: One of ``SCHEDULES``.
        n_tasks: ``M >= 1`` distinct tasks.
        phase_length: ``L >= 1`` steps per phase.
        n_cycles: ``C >= 1``; for ``recurring`` the stream has ``C * M`` phases.
        rng: Generator for ``recurring`` (required there, ignored otherwise).

    Raises:
        ValueError: on an unknown kind or non-positive sizes, saying which value to change.
    """
    for name, value in (("n_tasks", n_tasks), ("phase_length", phase_length), ("n_cycles", n_cycles)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if kind == "cyclic":
        schedule = np.tile(np.arange(n_tasks), n_cycles)
    elif kind == "sequential":
        schedule = np.arange(n_tasks)
    elif kind == "recurring":
        if rng is None:
            raise ValueError("a recurring stream needs rng (a seeded numpy Generator)")
        n_phases = n_tasks * n_cycles
        schedule = np.empty(n_phases, dtype=np.int64)
        prev = -1
        for p in range(n_phases):
            choices = [t for t in range(n_tasks) if t != prev] if n_tasks > 1 else [0]
            prev = int(choices[int(rng.integers(len(choices)))])
            schedule[p] = prev
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    return TaskStream(schedule.astype(np.int64), int(phase_length), int(n_tasks))
