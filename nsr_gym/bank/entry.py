"""One bank entry: a reserved subspace, its key and its bookkeeping (NSR cycle, step 2).

The bottom of the bank package: :mod:`nsr_gym.bank.core` keeps entries in slots,
:mod:`nsr_gym.bank.files` and :mod:`nsr_gym.bank.disk` write and read them; this module imports
none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BankEntry", "is_finite", "unique_ids"]


@dataclass(eq=False)  # identity equality: field-wise == is ill-defined for arrays and tensors
class BankEntry:
    """One reserved subspace.

    Attributes:
        key: ``(d,)`` float32 task embedding, raw (the bank normalises its own copy).
        tensors: payload, any names and shapes (float32 by convention).
        owner: task id the entry was stored under (ground truth, never shown to agents).
        tasks_served: task ids trained into this entry, in order, unique.
        usage: number of times the entry was loaded.
        created_step: env step of the insert.
        last_used_step: env step of the last insert, update or load.
        inserted_order: monotone insertion counter (FIFO order).
        pinned: pinned entries are never evicted.
    """

    key: np.ndarray
    tensors: dict[str, torch.Tensor]
    owner: int
    tasks_served: list[int]
    usage: int = 0
    created_step: int = 0
    last_used_step: int = 0
    inserted_order: int = 0
    pinned: bool = False

    @property
    def nbytes(self) -> int:
        """Exact payload size in bytes: all tensor elements plus the key."""
        payload = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return payload + int(self.key.nbytes)


def unique_ids(ids: list[int]) -> list[int]:
    """``ids`` as ints, first occurrences only, in order (how ``tasks_served`` is kept)."""
    return list(dict.fromkeys(int(i) for i in ids))


def is_finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or inf (integer and bool tensors always do).

    A finite sum means finite entries (NaN and inf propagate), so one reduction decides the
    common case; only a sum that is not finite (or overflowed) runs the elementwise check."""
    if not (t.is_floating_point() or t.is_complex()):
        return True
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())
