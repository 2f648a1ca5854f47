"""Estimating the theorem's constants from logged learning curves (either backend).

* ``paired_delta_switch``: model-free ``Delta_switch`` from B and always-fresh run on the same
  seeds (same data order), so that the difference cancels most of the noise.
* ``fit_exponential``: parametric ``(a*, D, tau)`` from first-visit curves, with goodness of fit;
  the fit is a check on assumption A1, so always report it.
* ``forgetting_ratio``: ``rho``, how much of a task keep-current still has at a revisit
  (assumption A2: the theorem bites only when ``rho`` is near 0).
* ``truncation_gap``: ``eps``, the accuracy SVD truncation costs at store time (assumption A3).

Inputs are numpy arrays (or anything ``np.asarray`` takes, such as pandas columns); nothing here
knows about envs or agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import curve_fit

from nsr_gym.theory.model import ExpCurve

__all__ = [
    "ExpFit",
    "fit_exponential",
    "forgetting_ratio",
    "paired_delta_switch",
    "truncation_gap",
]


def paired_delta_switch(
    acc_bank: ArrayLike, acc_fresh: ArrayLike, phase_of_step: ArrayLike, is_revisit: ArrayLike
) -> float | np.ndarray:
    """Model-free ``Delta_switch``: mean over revisit phases of ``sum_phase (acc_B - acc_fresh)``.

    In the exponential model with complete forgetting this is the mean of ``Delta_c =
    Phi(0) - Phi(H_c)`` over the revisits, exactly (tested). Accuracies only: switching costs
    are not part of ``Delta``; the bounds subtract ``lam`` themselves.

    Args:
        acc_bank: Accuracy per step under B, shape ``(T,)`` or ``(n_seeds, T)``.
        acc_fresh: Accuracy per step under always-fresh, same shape and same seeds.
        phase_of_step: Phase index of each step, ``(T,)`` (shared by all seeds) or the acc shape.
        is_revisit: Whether each step belongs to a revisit phase; same shape rules. Must be
            constant within a phase.

    Returns:
        A float for 1-D input, an array ``(n_seeds,)`` for 2-D input (one estimate per seed,
        which is what the seed bootstrap resamples).

    Raises:
        ValueError: on shape mismatch, no revisit phase, or a phase flagged inconsistently.
    """
    a_b = np.asarray(acc_bank, dtype=np.float64)
    a_f = np.asarray(acc_fresh, dtype=np.float64)
    if a_b.shape != a_f.shape or a_b.ndim not in (1, 2):
        raise ValueError(f"acc_bank {a_b.shape} and acc_fresh {a_f.shape} must match, 1-D or 2-D")
    one_d = a_b.ndim == 1
    diff = np.atleast_2d(a_b - a_f)
    phase = np.broadcast_to(np.asarray(phase_of_step), diff.shape)
    revisit = np.broadcast_to(np.asarray(is_revisit, dtype=bool), diff.shape)
    out = np.empty(diff.shape[0])
    for i in range(diff.shape[0]):
        ph, rv = phase[i], revisit[i]
        codes, inv = np.unique(ph, return_inverse=True)
        n_rev = np.bincount(inv, weights=rv.astype(np.float64), minlength=codes.size)
        n_all = np.bincount(inv, minlength=codes.size)
        if np.any((n_rev > 0) & (n_rev < n_all)):
            raise ValueError("is_revisit must be constant within each phase")
        keep = n_rev > 0
        if not np.any(keep):
            raise ValueError("no revisit phase: Delta_switch needs at least one revisit")
        sums = np.bincount(inv, weights=diff[i], minlength=codes.size)
        out[i] = float(np.mean(sums[keep]))
    return float(out[0]) if one_d else out


@dataclass(frozen=True)
class ExpFit:
    """Result of ``fit_exponential``."""

    a_star: float
    D: float
    tau: float
    r2: float
    """Coefficient of determination of the fit."""
    rmse: float
    """Root mean squared residual, in accuracy units."""
    n: int
    """Number of points fitted."""

    @property
    def curve(self) -> ExpCurve:
        """The fitted curve (``D`` clipped at 0, as A1 requires)."""
        return ExpCurve(self.a_star, max(self.D, 0.0), self.tau)


def _model(s: np.ndarray, a_star: float, D: float, tau: float) -> np.ndarray:
    return a_star - D * np.exp(-s / tau)


def fit_exponential(steps: ArrayLike, acc: ArrayLike) -> ExpFit:
    """Fit ``acc = a* - D exp(-s / tau)`` by nonlinear least squares (``scipy.optimize.curve_fit``).

    Several first-visit curves may be pooled: pass their steps and accuracies concatenated.
    For a fixed ``tau`` the model is linear in ``(a*, D)``, so the starting point is the best of a
    log-spaced grid of ``tau`` with ``(a*, D)`` solved exactly; ``curve_fit`` then refines all
    three with ``tau > 0``. That makes the fit robust to poor curves without user-supplied
    guesses.

    Args:
        steps: Experience (step within the phase, counted as the env does, from 1), ``(n,)``.
        acc: Accuracies, ``(n,)``.

    Returns:
        ``ExpFit`` with the parameters and the goodness of fit (``R^2``, RMSE). A low ``R^2``
        means A1 is a poor description of the learner: report it next to any ``Delta`` from the
        fitted curve.
    """
    s = np.asarray(steps, dtype=np.float64).ravel()
    y = np.asarray(acc, dtype=np.float64).ravel()
    if s.shape != y.shape or s.size < 3:
        raise ValueError("need matching steps and acc with at least 3 points")
    span = max(float(np.ptp(s)), 1.0)
    best: tuple[float, tuple[float, float, float]] | None = None
    for tau0 in np.geomspace(0.05 * span, 20.0 * span, 40):
        X = np.column_stack([np.ones_like(s), -np.exp(-s / tau0)])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(np.sum((X @ coef - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, (float(coef[0]), float(coef[1]), float(tau0)))
    assert best is not None
    p0 = best[1]
    try:
        bounds = ([-np.inf, -np.inf, 1e-6], [np.inf, np.inf, np.inf])
        popt, _ = curve_fit(_model, s, y, p0=p0, bounds=bounds, maxfev=20000)
        params = (float(popt[0]), float(popt[1]), float(popt[2]))
    except RuntimeError:
        params = p0  # no convergence: the grid optimum is still a least-squares point in tau
    resid = y - _model(s, *params)
    sse = float(np.sum(resid**2))
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)
    return ExpFit(params[0], params[1], params[2], r2, math.sqrt(sse / y.size), int(y.size))


def forgetting_ratio(acc_keep_start: ArrayLike, a0: float, a_star: float) -> float | np.ndarray:
    """``rho = (acc_keep(start of revisit) - a0) / (a* - a0)``.

    ``acc_keep_start`` is keep-current's accuracy at the first step of a revisit, ``a0`` the
    accuracy at the first step from a fresh adapter (the same counting convention: after one
    update), ``a*`` the asymptote. ``rho = 0``: complete forgetting, the theorem's case;
    ``rho = 1``: nothing forgotten, and keep-current is as good as the Bank.

    In the model, keep-current restarts revisit ``c`` from ``G x_{c-1}`` with
    ``G = gamma^{(M-1) L}``; with ``a0 = g(1)`` that gives exactly ``rho = 1 - q^{G x_{c-1}}``.
    """
    if a_star == a0:
        raise ValueError("a_star == a0: the curve has no range to normalize by")
    out = (np.asarray(acc_keep_start, dtype=np.float64) - a0) / (a_star - a0)
    return float(out) if out.ndim == 0 else out


def truncation_gap(acc_full: ArrayLike, acc_compressed: ArrayLike) -> float | np.ndarray:
    """``eps = acc(theta) - acc(compressed theta)``, measured at store time, elementwise.

    In the model a stored entry keeps ``kappa h``; the accuracy loss at recall is then
    ``D e^{-h/tau} (e^{(1-kappa) h / tau} - 1)``. A recall that starts ``eps`` lower costs
    ``eps q (1 - q^L) / (1 - q)`` extra if the gap heals like a deficit and up to ``L eps`` if
    it persists through the phase (theory/THEORY.md's range).
    """
    out = np.asarray(acc_full, dtype=np.float64) - np.asarray(acc_compressed, dtype=np.float64)
    return float(out) if out.ndim == 0 else out
