"""Batch indices drawn ahead: the learner's data order at a fraction of the per-update cost.

Every update draws ``torch.randint(high, (batch,), generator=gen)``. On the benchmarks' small
models that draw is one of a dozen kernel launches per member and update, so
:class:`BatchDraws` draws several updates' indices in one call and serves them slice by slice.
The indices are the same: ``randint`` on the CPU draws element by element from the generator's
stream, so one draw of ``k * batch`` indices is the concatenation of ``k`` draws of ``batch``,
and it leaves the generator in the same state (``tests/test_learners.py`` checks both). Whoever
uses the generator for anything else first calls :meth:`BatchDraws.settle`, which rewinds it to
where the served draws alone would have left it, so every consumer sees the stream it always saw.
"""

from __future__ import annotations

import torch

__all__ = ["BatchDraws"]


class BatchDraws:
    """``torch.randint(high, (batch,), generator=gen)`` per call of :meth:`next`, the same
    values and generator states, drawn up to ``most_ahead`` calls at a time.

    How far it draws ahead adapts: it doubles when a read-ahead was used up and halves when one
    was cut short (by :meth:`settle`, or a new ``high``), so a learner whose generator is used
    between most updates (a probe every step) draws as it would alone.

    Args:
        gen: The generator; :meth:`settle` before any other use of it, :meth:`discard` after
            reseeding it.
        batch: Indices per call.
        most_ahead: The most calls drawn at once.
    """

    def __init__(self, gen: torch.Generator, batch: int, most_ahead: int = 16) -> None:
        self.gen, self.batch, self.most_ahead = gen, int(batch), int(most_ahead)
        self.ahead = 1
        self._buf: torch.Tensor | None = None  # (ahead * batch,) int64
        self._state: torch.Tensor | None = None  # the generator before the read-ahead
        self._high, self._used = -1, 0

    def next(self, high: int) -> torch.Tensor:
        """The next ``(batch,)`` int64 indices in ``[0, high)`` (a view: read, do not write)."""
        if self._buf is None or high != self._high or self._used == self.ahead:
            self.settle()
            # only a read-ahead of several calls may need rewinding
            self._state = self.gen.get_state() if self.ahead > 1 else None
            self._buf = torch.randint(high, (self.ahead * self.batch,), generator=self.gen)
            self._high, self._used = high, 0
        start = self._used * self.batch
        self._used += 1
        return self._buf[start:start + self.batch]

    def settle(self) -> None:
        """Put the generator where the indices served so far alone would have left it (before
        any other use of it)."""
        if self._buf is None:
            return
        if self._used < self.ahead:  # drawn beyond what was served: rewind, replay the served
            self.gen.set_state(self._state)
            torch.randint(self._high, (self._used * self.batch,), generator=self.gen)
            self.ahead = max(1, self.ahead // 2)
        else:
            self.ahead = min(self.most_ahead, 2 * self.ahead)
        self._buf = self._state = None

    def discard(self) -> None:
        """Forget the read-ahead (the generator was reseeded: nothing to rewind)."""
        self._buf = self._state = None
