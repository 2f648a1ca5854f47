"""The interface every learner backend implements, so one env drives them all.

A learner owns the *active subspace*: the adapter (LoRA factors, or an analytic learner's
experience vector) and the task head that trains with it. The env decides what the active
subspace is (keep it, start a fresh one, or load a bank entry's payload) and asks the learner to
train and evaluate it on the current task. The bank stores whatever :meth:`Learner.snapshot`
returns; :meth:`Learner.load` must accept it back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class UpdateReport:
    """What happened during :meth:`Learner.train`.

    Attributes:
        loss: Mean training loss over the finite updates (``nan`` if none ran).
        skipped: Number of updates skipped because the loss or a gradient was NaN or infinite.
    """

    loss: float
    skipped: int = 0


class Learner(ABC):
    """A continual learner with one active subspace.

    Attributes:
        n_tasks: ``M``, number of tasks it can train on (ids ``0 .. M - 1``).
        key_dim: Length of the task embeddings returned by :meth:`embed`.
    """

    n_tasks: int
    key_dim: int

    @abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode: a fresh active subspace; all randomness drawn from ``rng``."""

    @abstractmethod
    def fresh(self) -> None:
        """Replace the active subspace by a newly initialised one (adapter and head)."""

    @abstractmethod
    def load(self, payload: dict[str, torch.Tensor]) -> None:
        """Make a stored payload (from :meth:`snapshot`) the active subspace; a payload in a
        lower precision than the learner computes in (float16 factors) is cast up first."""

    @abstractmethod
    def snapshot(self, task_id: int | None = None) -> tuple[dict[str, torch.Tensor], float]:
        """Compress the active subspace for the bank.

        Args:
            task_id: The task the subspace was just trained on, to measure the truncation gap.

        Returns:
            ``(payload, truncation_gap)``: the tensors to store (floating point: float16,
            float32 or float64, the dtypes a bank holds), and how much accuracy on the task last
            trained the compression costs (``acc(full) - acc(stored)``, the stored payload in its
            stored dtype; ``0.0`` where it is not measured).
        """

    def payload_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """The payload :meth:`snapshot` returns, as name -> shape (``None`` for a dimension that
        may vary, such as a compressed rank); a saved bank's entries are checked against it
        before the bank is loaded. Learners whose payloads are checked override it."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its payloads")

    @abstractmethod
    def train(self, task_id: int, n_updates: int) -> UpdateReport:
        """Run ``n_updates`` optimiser updates of the active subspace on task ``task_id``."""

    @abstractmethod
    def evaluate(self, task_id: int) -> float:
        """Accuracy in ``[0, 1]`` of the active subspace on task ``task_id``'s held-out data."""

    @abstractmethod
    def embed(self, task_id: int) -> np.ndarray:
        """``(key_dim,)`` float32 embedding of task ``task_id`` from a probe batch."""

    def protect(self, task_ids: Sequence[int]) -> None:  # noqa: B027 - optional hook
        """Protect ``task_ids`` during the coming updates: from now until the next call, training
        adds a distillation term that keeps the active subspace's outputs on those tasks close
        to what they are *now* (the teacher is a frozen copy of the current subspace).

        The env calls it whenever the active subspace is chosen (a load, a fresh one, or a new
        phase), with the tasks that subspace already served other than the one about to train;
        an empty sequence turns distillation off. The default does nothing (a learner without
        distillation, such as the analytic model).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory); the default does nothing."""
