"""Fitting the analytic learner (A1-A3) to logged learning curves, usually the torch backend's.

What is estimated, and from which policy's phases (all accuracies are measured after the step's
update, so the ``s``-th step of a phase that starts from experience ``H`` scores ``g(H + s)``):

* ``a*, D, tau`` (A1) from phases that start fresh (always-fresh's): from per-step accuracies
  with ``theory.estimate.fit_exponential``, or, when only per-phase summaries are logged (first,
  mean and last accuracy of each phase, the columns of ``phases.csv``), with
  ``fit_curve_from_summaries``: in the model those three moments identify the three parameters.
* ``gamma`` (A2) and ``transfer`` from keep-current's first step at revisits and at first visits.
  Without transfer the model starts revisit ``c`` from ``G x_{c-1}`` (``G = gamma^{(M-1) L}``,
  ``x_1 = L``), so inverting ``g`` gives ``G`` (the parametric face of ``rho``,
  ``theory.estimate.forgetting_ratio``). An adapter trained on *other* tasks that already beats a
  fresh one at a task's first visit is generic transfer; ``forgetting_and_transfer`` then fits
  both to the two starts (``keep_current_starts``).
* ``kappa`` (A3) from the truncation gap ``eps`` measured at store time: ``g(kappa h) = g(h) -
  eps`` with ``h = L``, the experience at the end of a fresh phase. ``kappa_from_revisit`` gives
  the alternative reading from the comparator's first step at a revisit (what a Bank recall
  actually restores), which also absorbs whatever a reload loses besides truncation (on the torch
  backend: Adam's state, the re-drawn padding of truncated ranks).
* ``eval_samples`` from the step-to-step scatter within phases, read as binomial noise
  (``fit_eval_samples_within``; from the scatter of first-step accuracies when only summaries are
  logged). It sets the analytic backend's noise level (and so its confidence intervals and its
  recovery times), not its expected regrets. Run-to-run differences (a faster or slower phase)
  are not evaluation noise and the model has no parameter for them.

What the analytic model cannot express is reported, not hidden: the fit's ``r2`` and the
``diagnostics`` (for example keep-current's advantage at *first* visits, which is cross-task
transfer, and the comparator's revisit start against the model's).

Pure numpy / scipy: nothing here imports envs, agents or the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from nsr_gym.theory.estimate import ExpFit, fit_exponential
from nsr_gym.theory.model import ExpCurve, bank_experience, phase_deficit

__all__ = [
    "AnalyticFit",
    "cap_asymptote",
    "delta_switch_mean",
    "experience_of",
    "fit_analytic",
    "fit_curve_from_summaries",
    "fit_eval_samples",
    "fit_eval_samples_within",
    "forgetting_and_transfer",
    "gamma_from_keep_start",
    "keep_current_starts",
    "kappa_from_revisit",
    "kappa_from_truncation_gap",
]


def _summary_basis(tau: float, L: int) -> np.ndarray:
    """``D``-coefficients of a fresh phase's (first, mean, last) accuracy.

    Returns:
        ``(3,)``: ``q``, the mean of ``q^s`` over ``s = 1..L``, and ``q^L``.
    """
    q = math.exp(-1.0 / tau)
    return np.array([q, q * (1.0 - q**L) / (L * (1.0 - q)), q**L])


def fit_curve_from_summaries(
    acc_first: ArrayLike, acc_mean: ArrayLike, acc_end: ArrayLike, L: int
) -> ExpFit:
    """Fit ``g(h) = a* - D exp(-h / tau)`` to per-phase summaries of fresh phases of length ``L``.

    Each phase gives three observations: ``acc_first = a* - D q``, ``acc_mean = a* - D q (1 -
    q^L) / (L (1 - q))`` and ``acc_end = a* - D q^L``. For fixed ``tau`` that is linear in
    ``(a*, D)``; a log grid over ``tau`` gives the start, ``scipy.optimize.least_squares`` refines.

    Args:
        acc_first, acc_mean, acc_end: ``(n,)`` accuracies of ``n`` fresh phases.
        L: Phase length (``>= 2``).

    Returns:
        ``ExpFit``; ``r2`` and ``rmse`` are over the ``3 n`` summary values.
    """
    if L < 2:
        raise ValueError("fitting from phase summaries needs L >= 2")
    y = np.stack([np.asarray(a, dtype=np.float64).ravel()
                  for a in (acc_first, acc_mean, acc_end)], 1)
    if y.size == 0:
        raise ValueError("no phases to fit")
    kind = np.tile(np.arange(3), y.shape[0])
    yy = y.ravel()

    def design(tau: float) -> np.ndarray:
        return np.column_stack([np.ones_like(yy), -_summary_basis(tau, L)[kind]])

    best: tuple[float, np.ndarray, float] | None = None
    for tau0 in np.geomspace(0.05, 20.0 * L, 60):
        X = design(tau0)
        coef, *_ = np.linalg.lstsq(X, yy, rcond=None)
        sse = float(np.sum((X @ coef - yy) ** 2))
        if best is None or sse < best[0]:
            best = (sse, coef, float(tau0))
    assert best is not None
    _, coef, tau0 = best

    def resid(p: np.ndarray) -> np.ndarray:
        return design(math.exp(p[2])) @ p[:2] - yy

    sol = least_squares(resid, x0=[coef[0], coef[1], math.log(tau0)], method="lm")
    a_star, D, tau = float(sol.x[0]), float(sol.x[1]), float(math.exp(sol.x[2]))
    r = resid(sol.x)
    sst = float(np.sum((yy - yy.mean()) ** 2))
    sse = float(np.sum(r**2))
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    return ExpFit(a_star, D, tau, r2, math.sqrt(sse / yy.size), int(yy.size))


def cap_asymptote(fit: ExpFit, steps: ArrayLike, acc: ArrayLike, cap: float = 1.0) -> ExpFit:
    """Refit ``(D, tau)`` with ``a* = cap`` when the free fit's asymptote exceeds ``cap``.

    An accuracy asymptote above 1 is an extrapolation artefact of curves that have not flattened
    (or are not exponential); the analytic backend needs ``a* <= 1``.
    """
    if fit.a_star <= cap:
        return fit
    s = np.asarray(steps, dtype=np.float64).ravel()
    y = np.asarray(acc, dtype=np.float64).ravel()

    def resid(p: np.ndarray) -> np.ndarray:
        return cap - p[0] * np.exp(-s / math.exp(p[1])) - y

    sol = least_squares(resid, x0=[max(fit.D, 1e-3), math.log(fit.tau)], method="lm")
    r = resid(sol.x)
    sst = float(np.sum((y - y.mean()) ** 2))
    sse = float(np.sum(r**2))
    return ExpFit(cap, float(sol.x[0]), float(math.exp(sol.x[1])),
                  1.0 - sse / sst if sst > 0 else 1.0, math.sqrt(sse / y.size), int(y.size))


def experience_of(acc: ArrayLike, curve: ExpCurve) -> np.ndarray | float:
    """``g^{-1}(acc)``: the experience at which the curve scores ``acc``.

    Clipped to ``[0, inf]``: at or below ``a* - D`` it is 0, at or above ``a*`` it is ``inf``.
    """
    a = np.asarray(acc, dtype=np.float64)
    gap = (curve.a_star - a) / curve.D if curve.D > 0 else np.zeros_like(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(gap <= 0, np.inf, -curve.tau * np.log(np.clip(gap, 1e-300, None)))
    h = np.maximum(h, 0.0)
    return float(h) if h.ndim == 0 else h


def kappa_from_truncation_gap(curve: ExpCurve, eps: float, h: float) -> float:
    """``kappa`` with ``g(kappa h) = g(h) - eps``: A3 read from the truncation gap at store time.

    Args:
        curve: The fitted curve.
        eps: Mean truncation gap (accuracy lost by compressing, at store time). ``eps <= 0``
            gives ``kappa = 1``.
        h: Experience when the entry is stored (``L`` for a phase that started fresh).
    """
    if eps <= 0 or h <= 0:
        return 1.0
    h_kept = float(experience_of(float(curve.acc(h)) - eps, curve))
    return float(np.clip(h_kept / h, 1e-3, 1.0))


def kappa_from_revisit(curve: ExpCurve, acc_first_revisit: float, L: int) -> float:
    """``kappa`` from the comparator's first step at its second visit: ``g(kappa L + 1)``.

    B's first visit trains ``L`` steps from no experience of the task; at the revisit it loads
    ``kappa L`` and the first step scores ``g(kappa L + 1)``.
    """
    h = float(experience_of(acc_first_revisit, curve))
    return float(np.clip((h - 1.0) / L, 1e-3, 1.0))


def gamma_from_keep_start(curve: ExpCurve, acc_keep_first: float, M: int, L: int
                          ) -> tuple[float, float]:
    """``(gamma, G)`` from keep-current's mean first-step accuracy at its second visits.

    In the model keep-current starts revisit 2 from ``G L`` with ``G = gamma^{(M-1) L}`` and its
    first step scores ``g(G L + 1)``; ``G = (g^{-1}(acc) - 1) / L`` clipped to ``[0, 1]``.
    """
    h = float(experience_of(acc_keep_first, curve))
    G = float(np.clip((h - 1.0) / L, 0.0, 1.0))
    G = 0.0 if G < 1e-9 else G  # rounding noise of the inversion, not retained experience
    gamma = G ** (1.0 / ((M - 1) * L)) if G > 0 else 0.0
    return float(gamma), G


def keep_current_starts(gamma: float, transfer: float, M: int, L: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Keep-current's experience of each task at its first-visit and second-visit starts.

    The analytic learner's update on task ``j``: every other ``h_i <- gamma h_i + transfer``,
    ``h_j <- h_j + 1``. From ``h = 0``, ``n`` updates on other tasks leave ``gamma^n h0 +
    transfer (1 - gamma^n) / (1 - gamma)``.

    Returns:
        ``(h_first, h_revisit)``: ``(M - 1,)`` for tasks ``1..M-1`` (task 0's first visit starts
        from nothing) and ``(M,)`` for tasks ``0..M-1``.
    """
    def grown(n: np.ndarray) -> np.ndarray:
        n = np.asarray(n, dtype=np.float64)
        if gamma >= 1.0:
            return transfer * n
        return transfer * (1.0 - gamma**n) / (1.0 - gamma)

    m = np.arange(M)
    h_first = grown(m * L)
    away = (M - 1) * L
    h_rev = gamma**away * (h_first + L) + grown(np.full(M, away))
    return h_first[1:], h_rev


def forgetting_and_transfer(curve: ExpCurve, acc_keep_first_visit: float | None,
                            acc_keep_revisit: float, M: int, L: int) -> tuple[float, float]:
    """``(gamma, transfer)`` matching keep-current's mean first-step accuracy at first visits
    (tasks ``1..M-1``) and at second visits, in the analytic model (``keep_current_starts``).

    Without a first-visit advantage over a fresh start (or without the first-visit figure) the
    transfer is 0 and ``gamma`` comes from the revisit alone (``gamma_from_keep_start``).
    """
    gamma0, _ = gamma_from_keep_start(curve, acc_keep_revisit, M, L)
    if acc_keep_first_visit is None or acc_keep_first_visit <= float(curve.acc(1.0)):
        return gamma0, 0.0

    def loss(g: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = np.empty(np.broadcast(g, t).shape)
        for idx, (gi, ti) in enumerate(zip(np.ravel(np.broadcast_to(g, out.shape)),
                                           np.ravel(np.broadcast_to(t, out.shape)), strict=True)):
            hf, hr = keep_current_starts(float(gi), float(ti), M, L)
            e1 = float(np.mean(curve.acc(hf + 1.0))) - acc_keep_first_visit
            e2 = float(np.mean(curve.acc(hr + 1.0))) - acc_keep_revisit
            out.flat[idx] = e1 * e1 + e2 * e2
        return out

    g_grid = 1.0 - np.geomspace(1e-4, 1.0, 60)  # dense near 1, where retention lives
    t_grid = np.concatenate([[0.0], np.geomspace(1e-4, 2.0, 60)])
    G, T = np.meshgrid(g_grid, t_grid, indexing="ij")
    vals = loss(G, T)
    i, j = np.unravel_index(int(np.argmin(vals)), vals.shape)
    sol = least_squares(
        lambda p: np.array([math.sqrt(float(loss(np.array(p[0]), np.array(p[1]))))]),
        x0=[G[i, j], T[i, j]], bounds=([0.0, 0.0], [1.0 - 1e-9, 10.0]))
    g_best, t_best = (float(v) for v in sol.x)
    if float(loss(np.array(g_best), np.array(t_best))) > float(vals[i, j]):
        g_best, t_best = float(G[i, j]), float(T[i, j])
    return g_best, t_best


def delta_switch_mean(curve: ExpCurve, L: int, C: int, kappa: float) -> float:
    """Mean over revisits ``c = 2..C`` of ``Delta_c = Phi(0) - Phi(H_c)``.

    The parametric counterpart of ``theory.estimate.paired_delta_switch`` (which averages the
    same quantity over the logged revisits).
    """
    if C < 2:
        raise ValueError("Delta_switch needs a revisit (C >= 2)")
    H = np.array([bank_experience(c, L, kappa) for c in range(2, C + 1)])
    return float(np.mean(phase_deficit(0.0, L, curve) - np.asarray(phase_deficit(H, L, curve))))


def fit_eval_samples(acc: ArrayLike, predicted: ArrayLike, lo: int = 10, hi: int = 100_000) -> int:
    """Binomial sample size whose variance matches the residual scatter: ``mean p(1-p) / mse``."""
    a = np.asarray(acc, dtype=np.float64).ravel()
    p = np.clip(np.asarray(predicted, dtype=np.float64).ravel(), 0.0, 1.0)
    mse = float(np.mean((a - p) ** 2))
    if mse <= 0:
        return hi
    return int(np.clip(round(float(np.mean(p * (1 - p))) / mse), lo, hi))


def fit_eval_samples_within(curves: ArrayLike, predicted: ArrayLike, lo: int = 10,
                            hi: int = 100_000) -> int:
    """Binomial sample size of the *step-to-step* scatter within phases.

    Differences of consecutive residuals cancel whatever a whole phase shares (a faster or slower
    run, a better or worse start), which is not evaluation noise; for independent noise of
    variance ``v`` they have variance ``2 v``. Hence ``n = mean p(1-p) / (mean(diff^2) / 2)``.

    Args:
        curves: ``(n_phases, L)`` accuracies.
        predicted: ``(L,)`` or ``(n_phases, L)`` model accuracies.
    """
    resid = np.asarray(curves, dtype=np.float64) - np.asarray(predicted, dtype=np.float64)
    p = np.clip(np.broadcast_to(np.asarray(predicted, dtype=np.float64), resid.shape), 0.0, 1.0)
    v = float(np.mean(np.diff(resid, axis=1) ** 2)) / 2.0
    if v <= 0:
        return hi
    return int(np.clip(round(float(np.mean(p * (1 - p))) / v), lo, hi))


@dataclass(frozen=True)
class AnalyticFit:
    """The analytic learner fitted to logs: parameters, how well they fit, and what they miss."""

    a_star: float
    D: float
    tau: float
    gamma: float
    kappa: float
    eval_samples: int
    curve_fit: dict[str, Any]
    """Goodness of the A1 fit: ``r2``, ``rmse``, ``n``, the source (``steps``, ``summaries``)."""
    estimates: dict[str, Any]
    """The measured quantities the parameters came from (``eps``, ``rho``, ``G``, ...)."""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    """Effects the model has no parameter for, with their size."""
    transfer: float = 0.0
    """Experience every other task gains per update (generic transfer of a trained adapter)."""

    def config(self) -> dict[str, Any]:
        """Keyword overrides for ``AnalyticConfig`` (``learner=`` of the env)."""
        return {
            "a_star": round(min(self.a_star, 1.0), 6),
            "D": round(max(min(self.D, min(self.a_star, 1.0)), 0.0), 6),
            "tau": round(self.tau, 6),
            "gamma": round(self.gamma, 6),
            "kappa": round(self.kappa, 6),
            "transfer": round(self.transfer, 6),
            "eval_samples": int(self.eval_samples),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def curve(self) -> ExpCurve:
        return ExpCurve(self.a_star, max(self.D, 0.0), self.tau)


def fit_analytic(
    fresh_curves: np.ndarray | None,
    fresh_summaries: Sequence[ArrayLike] | None,
    L: int,
    M: int,
    keep_first_revisit: float | None = None,
    keep_first_first_visit: float | None = None,
    fresh_first: float | None = None,
    eps: float | None = None,
    bank_first_revisit: float | None = None,
    kappa_source: str = "revisit",
) -> AnalyticFit:
    """Fit every analytic parameter from the measured quantities.

    Args:
        fresh_curves: ``(n_phases, L)`` per-step accuracies of phases that start fresh, or None.
        fresh_summaries: ``(acc_first, acc_mean, acc_end)`` arrays of those phases, used when
            ``fresh_curves`` is None.
        L: Phase length.
        M: Number of tasks.
        keep_first_revisit: Keep-current's mean first-step accuracy at second visits (for gamma).
        keep_first_first_visit: Keep-current's mean first-step accuracy at first visits of tasks
            other than the first (transfer diagnostic).
        fresh_first: Always-fresh's mean first-step accuracy (the ``a0`` of rho).
        eps: Mean truncation gap at store time (for kappa).
        bank_first_revisit: The comparator's mean first-step accuracy at second visits.
        kappa_source: ``"revisit"`` (default): the effective ``kappa`` that makes the model's
            bank restore what the logged bank restored at its first revisit step (it also absorbs
            a first visit that learned slower than a fresh start, which is what regret depends
            on); ``"truncation"``: A3 read from the truncation gap ``eps`` alone. Both are
            reported; the other one goes to ``estimates``.
    """
    if kappa_source not in ("revisit", "truncation"):
        raise ValueError(f"kappa_source must be 'revisit' or 'truncation', got {kappa_source!r}")
    ef, source, n_eval = _fit_fresh(fresh_curves, fresh_summaries, L)
    curve = ef.curve
    estimates: dict[str, float] = {}
    gamma, transfer = 0.0, 0.0
    if keep_first_revisit is not None:
        gamma, transfer = forgetting_and_transfer(curve, keep_first_first_visit,
                                                  keep_first_revisit, M, L)
        estimates.update(keep_first_revisit=keep_first_revisit,
                         G=gamma ** ((M - 1) * L) if gamma > 0 else 0.0)
        if keep_first_first_visit is not None:
            estimates["keep_first_first_visit"] = keep_first_first_visit
        a0 = fresh_first if fresh_first is not None else float(curve.acc(1.0))
        if curve.a_star != a0:
            estimates["rho"] = (keep_first_revisit - a0) / (curve.a_star - a0)
    kappa = _fit_kappa(curve, L, eps, bank_first_revisit, kappa_source, estimates)
    diagnostics = _fit_diagnostics(curve, L, M, kappa, gamma, transfer, keep_first_revisit,
                                   keep_first_first_visit, fresh_first, bank_first_revisit)
    return AnalyticFit(
        a_star=ef.a_star, D=ef.D, tau=ef.tau, gamma=gamma, kappa=kappa, eval_samples=n_eval,
        transfer=transfer,
        curve_fit={"r2": ef.r2, "rmse": ef.rmse, "n": ef.n, "source": source},
        estimates=estimates, diagnostics=diagnostics,
    )


def _fit_fresh(fresh_curves: np.ndarray | None, fresh_summaries: Sequence[ArrayLike] | None,
               L: int) -> tuple[ExpFit, str, int]:
    """A1 from fresh phases: ``(fit, source, eval_samples)``; per-step curves when logged, else
    the per-phase summaries (see :func:`fit_analytic`)."""
    if fresh_curves is not None:
        acc = np.asarray(fresh_curves, dtype=np.float64)
        steps = np.broadcast_to(np.arange(1, acc.shape[1] + 1, dtype=np.float64), acc.shape)
        ef = cap_asymptote(fit_exponential(steps.ravel(), acc.ravel()), steps, acc)
        fitted = np.asarray(ef.curve.acc(np.arange(1, acc.shape[1] + 1)))
        return ef, "steps", fit_eval_samples_within(acc, fitted)
    if fresh_summaries is not None:
        ef = fit_curve_from_summaries(*fresh_summaries, L=L)
        if ef.a_star > 1.0:  # refit the mean curve those summaries describe, with a* = 1
            s_grid = np.arange(1, L + 1, dtype=np.float64)
            ef = cap_asymptote(ef, s_grid, np.asarray(ef.curve.acc(s_grid)))
        # A phase's first accuracy is one step's: its scatter is the per-step noise.
        first = fresh_summaries[0]
        n_eval = fit_eval_samples(first, np.full(len(first), float(ef.curve.acc(1.0))))
        return ef, "summaries", n_eval
    raise ValueError("need fresh_curves or fresh_summaries")


def _fit_kappa(curve: ExpCurve, L: int, eps: float | None, bank_first_revisit: float | None,
               kappa_source: str, estimates: dict[str, Any]) -> float:
    """A3's ``kappa`` from the source asked for (else the other one, else 1); records both
    readings and the one used in ``estimates`` (in place, after the A2 entries)."""
    kappas: dict[str, float] = {}
    if eps is not None:
        kappas["truncation"] = kappa_from_truncation_gap(curve, eps, float(L))
        estimates["eps"] = eps
    if bank_first_revisit is not None:
        kappas["revisit"] = kappa_from_revisit(curve, bank_first_revisit, L)
        estimates["bank_first_revisit"] = bank_first_revisit
    kappa = kappas.get(kappa_source, kappas.get("truncation", kappas.get("revisit", 1.0)))
    estimates.update({f"kappa_from_{k}": v for k, v in kappas.items()})
    estimates["kappa_used"] = kappa_source if kappa_source in kappas else next(iter(kappas), "none")
    return kappa


def _fit_diagnostics(curve: ExpCurve, L: int, M: int, kappa: float, gamma: float,
                     transfer: float, keep_first_revisit: float | None,
                     keep_first_first_visit: float | None, fresh_first: float | None,
                     bank_first_revisit: float | None) -> dict[str, Any]:
    """What the fitted model misses: logged first-step accuracies against the model's."""
    diagnostics: dict[str, Any] = {}
    if bank_first_revisit is not None:
        diagnostics["bank_first_revisit_model"] = float(curve.acc(kappa * L + 1.0))
        diagnostics["bank_first_revisit_gap"] = (bank_first_revisit
                                                 - float(curve.acc(kappa * L + 1.0)))
    if keep_first_first_visit is not None:
        # Without transfer the model gives a task never trained g(1) whatever the adapter.
        diagnostics["keep_first_visit_advantage"] = keep_first_first_visit - float(curve.acc(1.0))
        if keep_first_revisit is not None:
            hf, hr = keep_current_starts(gamma, transfer, M, L)
            diagnostics["keep_first_visit_model"] = float(np.mean(curve.acc(hf + 1.0)))
            diagnostics["keep_revisit_model"] = float(np.mean(curve.acc(hr + 1.0)))
    if fresh_first is not None:
        diagnostics["fresh_first_minus_model"] = fresh_first - float(curve.acc(1.0))
    return diagnostics
