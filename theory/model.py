"""The learner model behind Theorem 1: exponential experience curves and what follows from them.

Assumptions (theory/THEORY.md, A1-A3), in the form every other module of ``theory`` uses:

* **A1, experience curves.** The active adapter carries an experience ``h_m >= 0`` per task and
  its accuracy on task ``m`` is ``g(h_m)`` with ``g`` nondecreasing. The exponential instance is
  ``g(h) = a* - D exp(-h / tau)`` with ``D >= 0``, ``tau > 0``; write ``q = exp(-1 / tau)``.
  FRESH sets ``h = 0``; one update on task ``m`` adds 1 to ``h_m`` and multiplies every other
  ``h_j`` by ``gamma``.
* **A2, forgetting.** An adapter last trained on another task has ``h_m <= h_bar``;
  ``gamma = 0`` (complete forgetting) gives ``h_bar = 0``.
* **A3, compression.** A stored entry keeps ``kappa * h`` with ``kappa in (0, 1]``: SVD truncation
  read as a haircut on experience (equivalently an accuracy loss at recall).

Accuracy is measured *after* the step's update, so the ``s``-th step of a phase that starts
from experience ``H`` scores ``g(H + s)``, ``s = 1..L``. Everything below uses that convention.

Pure numpy: no env, no agent, no torch. ``recovery_time`` (model-free, on a logged curve) is
:func:`nsr_gym.metrics.recovery_time`, re-exported: the step-log metrics and the theory count
recovery with one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# The model-free recovery time is the metrics module's: one definition for logs and theory.
from nsr_gym.metrics import recovery_time

__all__ = [
    "ExpCurve",
    "bank_experience",
    "phase_deficit",
    "phase_deficit_bruteforce",
    "pre_switch_accuracy",
    "recovery_time",
    "recovery_time_fresh",
]


@dataclass(frozen=True)
class ExpCurve:
    """Exponential experience curve ``g(h) = a* - D exp(-h / tau)`` (assumption A1).

    Attributes:
        a_star: Asymptotic accuracy ``a*``.
        D: Initial deficit; a never-trained adapter scores ``a* - D``. Must be ``>= 0`` so that
            ``g`` is nondecreasing, which every bound in ``theory`` relies on.
        tau: Learning time constant in updates, ``> 0``.
    """

    a_star: float
    D: float
    tau: float

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not self.D >= 0:
            raise ValueError(f"D must be >= 0 (g nondecreasing), got {self.D}")

    @property
    def q(self) -> float:
        """Per-step contraction of the deficit, ``q = exp(-1 / tau)``."""
        return math.exp(-1.0 / self.tau)

    @property
    def area(self) -> float:
        """Area between the curve and its asymptote, ``sum_{s>=1} D q^s = D q / (1 - q)``.

        This is ``Phi(0)`` for ``L -> infinity``, the "about ``D tau``" of theory/THEORY.md
        (``D q / (1 - q) = D / (e^{1/tau} - 1)``, which is ``D (tau - 1/2) + O(1/tau)``).
        """
        q = self.q
        return self.D * q / (1.0 - q)

    def acc(self, h: ArrayLike) -> np.ndarray | float:
        """Accuracy ``g(h)`` at experience ``h`` (scalar in, float out; array in, array out)."""
        h_arr = np.asarray(h, dtype=np.float64)
        out = self.a_star - self.D * np.exp(-h_arr / self.tau)
        return float(out) if out.ndim == 0 else out


def phase_deficit(H: ArrayLike, L: int, curve: ExpCurve) -> np.ndarray | float:
    """Accuracy deficit of one phase, ``Phi(H) = sum_{s=1..L} (a* - g(H + s))``, in closed form.

    A geometric sum: ``a* - g(H + s) = D e^{-H/tau} q^s``, hence

        ``Phi(H) = D exp(-H / tau) q (1 - q^L) / (1 - q)``.

    ``Phi`` is decreasing in ``H`` and ``Phi(H) = Phi(0) exp(-H / tau)``.

    Args:
        H: Experience on the phase's task at the phase start (before the first update).
        L: Phase length in steps (updates), ``>= 0``.
        curve: The experience curve.

    Returns:
        ``Phi(H)``, with the shape of ``H``.
    """
    if L < 0:
        raise ValueError(f"L must be >= 0, got {L}")
    q = curve.q
    H_arr = np.asarray(H, dtype=np.float64)
    out = curve.D * np.exp(-H_arr / curve.tau) * q * (1.0 - q**L) / (1.0 - q)
    return float(out) if out.ndim == 0 else out


def phase_deficit_bruteforce(H: float, L: int, curve: ExpCurve) -> float:
    """``Phi(H)`` by summing ``a* - g(H + s)`` step by step; the reference for the closed form."""
    s = np.arange(1, L + 1, dtype=np.float64)
    return float(np.sum(curve.a_star - np.asarray(curve.acc(H + s))))


def bank_experience(c: int, L: int, kappa: float) -> float:
    """Experience the Bank restores at visit ``c``: ``H_1 = 0``, ``H_c = kappa (H_{c-1} + L)``.

    At the end of a visit the task has ``H_c + L`` experience; the env stores ``kappa`` times that
    and the Bank loads it at the next visit. In closed form ``H_c = L sum_{j=1}^{c-1} kappa^j``:
    ``(c - 1) L`` for ``kappa = 1`` and ``kappa L (1 - kappa^{c-1}) / (1 - kappa) ->
    kappa L / (1 - kappa)`` otherwise. Kept as the recursion so that it reads like the env.

    Args:
        c: Visit index, 1-based (``c = 1`` is the first visit).
        L: Phase length.
        kappa: Compression factor in ``(0, 1]``.
    """
    if c < 1:
        raise ValueError(f"visits are 1-based, got c={c}")
    H = 0.0
    for _ in range(c - 1):
        H = kappa * (H + L)
    return H


def recovery_time_fresh(D: float, tau: float, L: int, eps: float, w: int = 1) -> int:
    """Recovery time of a phase that starts fresh, in closed form (theory/THEORY.md).

        ``R = max(1, ceil(tau ln(D / (D exp(-L/tau) + eps)))) - 1``.

    **Which ``a_pre`` makes it exact** (worked out, not stated in theory/THEORY.md): the pre-switch
    accuracy of a previous phase that also started fresh and ran ``L`` steps, measured over its
    last ``w = 1`` step: ``a_pre = g(L) = a* - D exp(-L / tau)``. Then ``acc_s = g(s) >= a_pre -
    eps`` iff ``D e^{-s/tau} <= D e^{-L/tau} + eps`` iff ``s >= tau ln(D / (D e^{-L/tau} + eps))``,
    and ``R = min s - 1``. It does not depend on ``a*``. The right-hand side is ``< L`` for
    ``eps > 0``, so the fresh recovery is never censored.

    For ``w > 1`` (``a_pre`` = mean of the last ``w`` steps, theory/THEORY.md's general
    definition) the same argument holds with ``exp(-L/tau)`` replaced by
    ``mean_{s=L-w+1..L} exp(-s/tau)``; that is what ``w`` does here. ``w = 1`` is
    theory/THEORY.md's formula and reproduces its example ``D = 0.75, tau = 6, L = 40 -> 25, 21,
    16`` for ``eps = 0.01, 0.02, 0.05``.

    Args:
        D: Initial deficit.
        tau: Time constant.
        L: Phase length.
        eps: Tolerance, ``>= 0``.
        w: Window of the pre-switch average, ``1 <= w <= L``.

    Returns:
        ``R_eps`` in steps; 0 means the first step is already within ``eps`` of ``a_pre``.
    """
    if not 1 <= w <= L:
        raise ValueError(f"need 1 <= w <= L, got w={w}, L={L}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    s = np.arange(L - w + 1, L + 1, dtype=np.float64)
    tail = float(np.mean(np.exp(-s / tau)))
    if D == 0:
        return 0
    x = tau * math.log(D / (D * tail + eps))
    # Clip to L: with eps = 0 and w = 1, x equals L up to rounding, and ceil must not overshoot.
    first = min(max(1, math.ceil(x - 1e-12)), L)
    return first - 1


def pre_switch_accuracy(prev_phase_acc: ArrayLike, w: int = 1) -> float:
    """``a_pre``: mean accuracy over the last ``w`` steps of the task's previous phase."""
    acc = np.asarray(prev_phase_acc, dtype=np.float64).ravel()
    if not 1 <= w <= acc.size:
        raise ValueError(f"need 1 <= w <= {acc.size}, got {w}")
    return float(np.mean(acc[-w:]))
