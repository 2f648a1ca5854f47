"""theory/THEORY.md's verification protocol on logged phase records, for either backend.

Input: stacked *phase records*, one row per ``(agent, seed, phase)`` with at least ``agent``,
``seed``, ``phase``, ``cycle``, ``task_id``, ``visit``, ``length``, ``acc_first``, ``acc_mean``,
``acc_end``, ``return``, ``recovery``, ``censored``, ``truncation_gap`` and, optionally,
``start_action`` and the per-step accuracies ``acc_1..acc_L``
(``nsr_gym.studies.regret.phase_record`` writes them). A ``Study`` says what was run.
``analyse_records`` then does, on a strict cycle:

1. ``Delta_switch`` per seed, paired and model-free (comparator against always-fresh, summed over
   each revisit phase, averaged over revisits: theory/THEORY.md's estimate), and per cycle, against
   always-fresh and against every other observed way of missing the entry (``delta_witnesses``);
   the ratios use its OLS-slope weighting (``effective_delta``), so that a ``Delta_c`` that
   changes with the cycle is weighed as the regret slope weighs it. The exponential fit's
   ``Delta`` is reported next to it (``theory.fit``).
2. ``rho`` (keep-current's retention at revisits) and ``eps`` (the comparator's truncation gap).
3. Per agent and seed, the cumulative regret against the comparator by cycle and its OLS slope
   over cycles ``2..C``; for memoryless agents the seed-bootstrap ratio to Theorem 1's M1 bound
   ``(M - 1)(Delta - lam)`` (every memoryless rule is task-blind) and, for bank-free ones, to the
   M0 bound ``M (Delta - lam)``; one-sided verdicts (``theory.verify``) in two forms:

   * ``complete_forgetting``, theory/THEORY.md's statement (``h_bar = 0``, ``Delta`` paired against
     always-fresh). Its premise is checked with ``rho``: established when ``rho``'s upper CI limit
     is ``<= rho_max``. Where it is not, a "violated" result is kept as ``raw_verdict`` and the
     verdict is "inconclusive": a theorem is not refuted where its premise is measured false.
   * ``general`` (A2 with ``h_bar > 0``): ``Delta = Phi(h_bar) - Phi(H_c)`` measured model-free
     against the weakest observed miss. Its premises hold by construction, so it always counts.

   A bound whose whole CI lies above ``1 - tol`` holds whatever the CI's width.
4. Theorem 2: the comparator's regret against a prescient comparator at ``a*`` (known, or the
   comparator's own plateau), its slope CI; recovery times, with their convention, and the
   bank-vs-memoryless recovery ratio in two counting conventions.

Pure numpy / pandas on top of ``theory``: nothing here imports envs, agents or the CLI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.stats import mean_ci
from nsr_gym.theory.estimate import paired_delta_switch
from nsr_gym.theory.fit import AnalyticFit, delta_switch_mean, fit_analytic
from nsr_gym.theory.model import phase_deficit, recovery_time_fresh
from nsr_gym.theory.theorem1 import CyclicSetting, bank_experiences, delta_switch, regret_per_cycle
from nsr_gym.theory.verify import bootstrap_slope_ratio, regret_slope

__all__ = ["Study", "analyse_records", "curve_columns", "delta_witnesses", "effective_delta",
           "fit_records", "per_cycle_deltas"]

#: Agent names -> the names of ``theory.regret_per_cycle``'s closed forms.
CLOSED_FORMS = {"always-fresh": "always_fresh", "keep-current": "keep_current",
                "fixed-slot": "fixed_slot", "random-slot": "random_slot", "bank": "bank"}


@dataclass(frozen=True)
class Study:
    """What was run: the cyclic setting, the agents and their classes, and what is known."""

    M: int
    L: int
    C: int
    lam: float
    classes: dict[str, str]
    """Agent -> ``"M0"``, ``"M1"``, ``"history"`` or ``"oracle"``, in the order to report."""
    comparator: str = "bank"
    """theory/THEORY.md's B (``Oracle(first_visit="keep")``)."""
    a_star: tuple[float, ...] | None = None
    """Per-task asymptote when known (the analytic backend); None: the comparator's plateau."""
    closed_form: CyclicSetting | None = None
    """The theorem's exact model of the run, when there is one (noise-free expectations)."""
    recovery_eps: float = 0.02
    recovery_window: int = 5
    recovery_convention: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    """Extra setting fields copied into the verdicts (backend, family, learner)."""


def _by_seed(wide: pd.DataFrame, agent: str, seeds: list[int], values: str,
             columns: str = "phase", agg: str = "sum") -> np.ndarray:
    sub = wide[wide["agent"] == agent]
    if sub.empty:
        raise ValueError(f"no rows for agent {agent!r}")
    table = sub.pivot_table(index="seed", columns=columns, values=values, aggfunc=agg)
    return table.loc[seeds].to_numpy(dtype=np.float64)


def _ci(values: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean over seeds and its 95% bootstrap CI (:func:`nsr_gym.stats.mean_ci`), with width."""
    m, lo, hi = mean_ci(values, seed=seed)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "ci_width": hi - lo}


def curve_columns(wide: pd.DataFrame) -> list[str]:
    return sorted((c for c in wide.columns if c.startswith("acc_") and c[4:].isdigit()),
                  key=lambda c: int(c[4:]))


def _mean_where(wide: pd.DataFrame, agent: str, col: str, mask) -> float | None:
    sub = wide[(wide["agent"] == agent) & mask(wide)]
    return None if sub.empty else float(sub[col].mean())


def fit_records(wide: pd.DataFrame, M: int, L: int, comparator: str = "bank",
                kappa_source: str = "revisit") -> AnalyticFit:
    """``theory.fit.fit_analytic`` on stacked phase records (always-fresh, keep-current, the
    comparator); per-step curves when the records have them, phase summaries otherwise."""
    agents = set(wide["agent"])
    if "always-fresh" not in agents:
        raise ValueError("fitting needs always-fresh's phases (curves that start fresh)")
    fresh = wide[wide["agent"] == "always-fresh"]
    cols = curve_columns(wide)
    curves = fresh[cols].to_numpy(dtype=np.float64) if len(cols) == L else None
    summaries = (None if curves is not None
                 else (fresh["acc_first"], fresh["acc_mean"], fresh["acc_end"]))
    second = lambda w: w["visit"] == 2  # noqa: E731
    kw: dict[str, Any] = {"fresh_first": _mean_where(wide, "always-fresh", "acc_first", second)}
    if "keep-current" in agents:
        kw["keep_first_revisit"] = _mean_where(wide, "keep-current", "acc_first", second)
        kw["keep_first_first_visit"] = _mean_where(
            wide, "keep-current", "acc_first", lambda w: (w["visit"] == 1) & (w["phase"] > 0))
    if comparator in agents:
        kw["bank_first_revisit"] = _mean_where(wide, comparator, "acc_first", second)
        if "truncation_gap" in wide:
            kw["eps"] = float(wide.loc[wide["agent"] == comparator, "truncation_gap"].mean())
    return fit_analytic(curves, summaries, L=L, M=M, kappa_source=kappa_source, **kw)


def per_cycle_deltas(bank: np.ndarray, other: np.ndarray, miss: np.ndarray, M: int) -> np.ndarray:
    """Per seed and cycle, the mean over that cycle's masked phases of ``sum_phase (acc_bank -
    acc_other)``; cycle 1 (first visits) is 0.

    Args:
        bank, other: ``(n_seeds, M C)`` accuracy sums per phase.
        miss: ``(n_seeds, M C)`` or ``(M C,)`` bool: the revisit phases that count.
        M: Tasks per cycle.

    Returns:
        ``(n_seeds, C)``; a seed with no counted phase in a cycle gets that cycle's mean over the
        other seeds.
    """
    n, P = bank.shape
    mask = np.broadcast_to(miss, (n, P)).reshape(n, P // M, M)
    diff = np.where(mask, (bank - other).reshape(n, P // M, M), 0.0).sum(axis=2)
    count = mask.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, diff / np.maximum(count, 1), np.nan)
    out[:, 0] = 0.0
    finite = np.isfinite(out)
    fill = np.nanmean(np.where(finite, out, np.nan), axis=0) if finite.any() else 0.0
    return np.where(finite, out, np.broadcast_to(np.nan_to_num(fill), out.shape))


def effective_delta(per_cycle: np.ndarray) -> np.ndarray:
    """The ``Delta`` the regret slope is to be compared with: the OLS slope over cycles ``2..C``
    of ``sum_{j <= c} Delta_j``.

    The regret slope weights the per-cycle regrets of cycles ``3..C`` (OLS on a cumulative sum);
    the bound ``sum_c factor (Delta_c - lam)`` gets the same weights, so when ``Delta_c`` varies
    with the cycle (a compressing or still-learning bank, retention that grows with the cycle)
    the ratio still compares like with like. For a constant ``Delta_c`` it is that constant.
    """
    return np.asarray(regret_slope(np.cumsum(per_cycle, axis=-1)), dtype=np.float64)


def delta_witnesses(wide: pd.DataFrame, seeds: list[int], comparator: str, revisit: np.ndarray,
                    task_of_phase: np.ndarray, acc_sum: dict[str, np.ndarray], M: int,
                    ) -> dict[str, np.ndarray]:
    """Per-seed, per-cycle ``Delta_c`` against each way of *missing* the entry at a revisit seen.

    ``always-fresh`` is theory/THEORY.md's paired ``Delta_switch`` (``h_bar = 0``). Under incomplete
    forgetting (A2 with ``h_bar > 0``) a miss need not start from nothing: keep-current starts from
    the adapter last trained on the previous task, and a task-blind LOAD of another task's entry
    from that task's adapter. Each is a model-free witness of ``Phi(h_bar)``; the smallest
    ``Delta`` among them is the honest (weakest) constant of the general bound.

    Returns:
        Witness name -> ``(n_seeds, C)`` (see ``per_cycle_deltas``).
    """
    bank = acc_sum[comparator]
    out = {"always-fresh": per_cycle_deltas(bank, acc_sum["always-fresh"], revisit, M)}
    if "keep-current" in acc_sum:
        out["keep-current"] = per_cycle_deltas(bank, acc_sum["keep-current"], revisit, M)
    for a in ("random-slot", "fixed-slot"):
        if a in acc_sum and "start_action" in wide:
            start = _by_seed(wide, a, seeds, "start_action")
            # On a strict cycle with K >= M, slot k holds task k: a LOAD of another slot is a miss.
            miss = revisit[None, :] & (start >= 2) & (start - 2 != task_of_phase[None, :])
            if miss.any():
                out[f"{a} (misses)"] = per_cycle_deltas(bank, acc_sum[a], miss, M)
    return out


def _bound_entry(cum: np.ndarray, deltas: np.ndarray, M: int, lam: float, bound: str,
                 resamples: int, rng: int, tol: float, max_width: float | None) -> dict[str, Any]:
    sr = bootstrap_slope_ratio(cum, deltas, M, lam, bound, resamples, rng=rng)
    verdict = sr.verdict(tol, max_width)
    if verdict == "inconclusive" and math.isfinite(sr.ci_low) and sr.ci_low >= 1.0 - tol:
        verdict = "holds"  # the whole interval is above the bound: its width cannot matter
    return {"verdict": verdict, **asdict(sr)}


def _worst(verdicts: list[str]) -> str:
    return ("violated" if "violated" in verdicts else
            "inconclusive" if "inconclusive" in verdicts or not verdicts else "holds")


def analyse_records(wide: pd.DataFrame, study: Study, seeds: list[int], resamples: int = 2000,
                    tol: float = 0.05, max_width: float | None = 0.5, rho_max: float = 0.1,
                    ) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """The verification protocol on stacked phase records.

    See the module docstring for the protocol.

    Returns:
        ``(verdicts, per-agent cycle tables, per-seed table)``.
    """
    M, L, C, lam = study.M, study.L, study.C, study.lam
    comparator = study.comparator
    agents = [a for a in study.classes if a in set(wide["agent"])]
    for needed in (comparator, "always-fresh"):
        if needed not in agents:
            raise ValueError(f"the regret analysis needs agent {needed!r}")
    n = len(seeds)
    ref = wide[(wide["agent"] == comparator) & (wide["seed"] == seeds[0])].sort_values("phase")
    revisit = ref["visit"].to_numpy() > 1
    task_of_phase = ref["task_id"].to_numpy()

    # ---- Delta_switch (paired, per miss witness; the exponential fit's), rho, eps
    with_sum = wide.assign(acc_sum=wide["acc_mean"] * wide["length"])
    acc_sum = {a: _by_seed(with_sum, a, seeds, "acc_sum") for a in agents}
    d = _deltas(wide, study, seeds, revisit, task_of_phase, acc_sum)
    rho = _rho(wide, agents, seeds, revisit, d["fit"])
    rho_ci = _ci(rho) if rho is not None else None
    premise = rho_ci is not None and rho_ci["ci_high"] <= rho_max
    eps = _by_seed(wide, comparator, seeds, "truncation_gap").mean(axis=1)

    # ---- per-cycle returns and regrets; a* for Theorem 2
    a_star, a_star_source = _a_star(wide, study, seeds, task_of_phase)
    per_agent, cum_vs_bank, cum_vs_prescient = _regret_tables(wide, study, seeds, agents,
                                                              acc_sum, a_star)
    per_seed = pd.DataFrame({"seed": seeds, "delta_paired": d["paired"],
                             "delta_slope": d["deltas"], "delta_general": d["deltas_general"],
                             "eps": eps})
    if rho is not None:
        per_seed["rho"] = rho

    # ---- Theorem 1: memoryless agents against the bounds, in both forms
    policies: dict[str, Any] = {}
    rng = 0
    for a in agents:
        cls = study.classes[a]
        slopes = np.asarray(regret_slope(cum_vs_bank[a]), dtype=np.float64).reshape(n)
        per_seed[f"slope_{a}"] = slopes
        entry: dict[str, Any] = {"class": cls, "slope_vs_bank": _ci(slopes)}
        if cls in ("M0", "M1"):
            entry["bounds"] = {}
            for bound in (("M1", "M0") if cls == "M0" else ("M1",)):
                rng += 1
                entry["bounds"][bound] = _bound_forms(
                    cum_vs_bank[a], d, study, a, bound, premise, rho_ci,
                    dict(resamples=resamples, rng=rng, tol=tol, max_width=max_width))
            entry["verdict"] = _worst([b["verdict"] for b in entry["bounds"].values()])
        elif a == comparator:
            entry["note"] = "the comparator B: regret 0 by definition; see theorem2_bank"
        else:
            s = entry["slope_vs_bank"]
            entry["note"] = ("not memoryless: no lower bound applies; its slope against the bank "
                             "is reported")
            entry["slope_ci_contains_0"] = bool(s["ci_low"] <= 0 <= s["ci_high"])
        policies[a] = entry

    # ---- Theorem 2: the bank against a prescient comparator at a*
    bank_slopes = np.asarray(regret_slope(cum_vs_prescient[comparator]),
                             dtype=np.float64).reshape(n)
    per_seed["slope_bank_vs_prescient"] = bank_slopes
    t2 = _theorem2(study, d["fit"], a_star, a_star_source, bank_slopes,
                   cum_vs_prescient[comparator])

    # ---- recovery times
    recovery = _recovery(wide, study, seeds, agents)

    overall = _worst([p["verdict"] for p in policies.values() if "verdict" in p])
    verdicts = {
        "overall": overall,
        "violations": [a for a, p in policies.items() if p.get("verdict") == "violated"],
        "setting": {**study.report, "M": M, "L": L, "C": C, "lambda": lam, "n_seeds": n,
                    "comparator": f"{comparator} = Oracle(first_visit='keep'), THEORY.md's B"
                    if comparator == "bank" else comparator},
        "protocol": _protocol_text(resamples, tol, max_width, rho_max),
        "premise_complete_forgetting": premise,
        "delta_switch": _delta_report(d, study),
        "rho": rho_ci,
        "eps": _ci(eps),
        "fit_diagnostics": {**d["fit"].estimates, **d["fit"].diagnostics},
        "policies": policies,
        "theorem2_bank": t2,
        "recovery": recovery,
    }
    return verdicts, per_agent, per_seed


# ----------------------------------------------------------------------------- its sections
def _deltas(wide: pd.DataFrame, study: Study, seeds: list[int], revisit: np.ndarray,
            task_of_phase: np.ndarray, acc_sum: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every ``Delta_switch`` reading: ``paired`` ``(n,)``, the per-witness slope-weighted ones,
    ``deltas`` (against always-fresh) and ``deltas_general`` (the weakest witness) ``(n,)``, and
    the exponential fit's (``fit``, ``delta_fit``, ``delta_fit_eff``)."""
    M, L, C, comparator = study.M, study.L, study.C, study.comparator
    paired = np.asarray(paired_delta_switch(acc_sum[comparator], acc_sum["always-fresh"],
                                            np.arange(M * C), revisit), dtype=np.float64)
    witnesses = {k: effective_delta(v) for k, v in
                 delta_witnesses(wide, seeds, comparator, revisit, task_of_phase, acc_sum,
                                 M).items()}
    h_bar_witness = min(witnesses, key=lambda k: float(np.mean(witnesses[k])))
    fit = fit_records(wide, M, L, comparator)
    H = np.array([sum(fit.kappa ** j * L for j in range(1, c)) for c in range(1, C + 1)])
    delta_fit_cycles = phase_deficit(0.0, L, fit.curve) - np.asarray(phase_deficit(H, L, fit.curve))
    delta_fit_cycles[0] = 0.0
    return {"paired": paired, "witnesses": witnesses, "deltas": witnesses["always-fresh"],
            "h_bar_witness": h_bar_witness, "deltas_general": witnesses[h_bar_witness],
            "fit": fit, "delta_fit": delta_switch_mean(fit.curve, L, C, fit.kappa),
            "delta_fit_eff": float(effective_delta(delta_fit_cycles))}


def _rho(wide: pd.DataFrame, agents: list[str], seeds: list[int], revisit: np.ndarray,
         fit: AnalyticFit) -> np.ndarray | None:
    """``(n,)`` keep-current's retention at revisits (A2), or None without keep-current."""
    if "keep-current" not in agents:
        return None
    keep0 = _by_seed(wide, "keep-current", seeds, "acc_first")[:, revisit].mean(axis=1)
    a0 = _by_seed(wide, "always-fresh", seeds, "acc_first")[:, revisit].mean(axis=1)
    return (keep0 - a0) / (min(fit.a_star, 1.0) - a0)


def _a_star(wide: pd.DataFrame, study: Study, seeds: list[int], task_of_phase: np.ndarray
            ) -> tuple[np.ndarray, str]:
    """``(a*, where it came from)``: ``(n, M C)`` per phase, known or the comparator's plateau."""
    M, L, C, n = study.M, study.L, study.C, len(seeds)
    if study.a_star is not None:
        a_star = np.broadcast_to(np.asarray(study.a_star, dtype=np.float64), (M,))[task_of_phase]
        return np.broadcast_to(a_star, (n, M * C)), "known a* (the analytic config)"
    # The bank's own plateau: mean accuracy of the last 5 steps of each task's final visit.
    cols = curve_columns(wide)[-min(5, L):]
    last = wide[(wide["agent"] == study.comparator) & (wide["phase"] >= M * (C - 1))]
    has_curves = len(cols) > 0 and bool(np.isfinite(last[cols].to_numpy(dtype=float)).all())
    level = last[cols].mean(axis=1) if has_curves else last["acc_end"]
    plateau = last.assign(p=level).pivot_table(
        index="seed", columns="task_id", values="p").loc[seeds].to_numpy()
    source = ("the bank's plateau: mean of the last 5 steps of each task's final visit"
              if has_curves else "the bank's plateau: last accuracy of each task's final visit")
    return plateau[:, task_of_phase], source


def _regret_tables(wide: pd.DataFrame, study: Study, seeds: list[int], agents: list[str],
                   acc_sum: dict[str, np.ndarray], a_star: np.ndarray
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray],
                              dict[str, np.ndarray]]:
    """Per agent: its cycle table, and ``(n, C)`` cumulative regrets against the comparator and
    against a prescient comparator at ``a*``."""
    M, L, C, n = study.M, study.L, study.C, len(seeds)
    returns = {a: _by_seed(wide, a, seeds, "return", columns="cycle") for a in agents}
    cycles = np.arange(1, C + 1)
    per_agent: dict[str, pd.DataFrame] = {}
    cum_vs_bank: dict[str, np.ndarray] = {}
    cum_vs_prescient: dict[str, np.ndarray] = {}
    for a in agents:
        regret = returns[study.comparator] - returns[a]
        pres = (L * a_star - acc_sum[a]).reshape(n, C, M).sum(axis=2)
        cum_vs_bank[a], cum_vs_prescient[a] = np.cumsum(regret, 1), np.cumsum(pres, 1)
        per_agent[a] = pd.DataFrame({
            "seed": np.repeat(seeds, C), "cycle": np.tile(cycles, n),
            "return": returns[a].ravel(), "regret_vs_bank": regret.ravel(),
            "cum_regret_vs_bank": cum_vs_bank[a].ravel(), "regret_vs_prescient": pres.ravel(),
            "cum_regret_vs_prescient": cum_vs_prescient[a].ravel()})
    return per_agent, cum_vs_bank, cum_vs_prescient


def _expected_ratio(study: Study, agent: str, factor: int) -> float | None:
    """The noise-free ratio of the closed form, when the study has one for ``agent``."""
    cf, C, lam = study.closed_form, study.C, study.lam
    if cf is None or agent not in CLOSED_FORMS or (cf.gamma and agent == "random-slot"):
        return None
    r = regret_per_cycle(cf, CLOSED_FORMS[agent])
    d = float(effective_delta(np.array([0.0] + [delta_switch(cf, c) for c in range(2, C + 1)])))
    return float(regret_slope(np.cumsum(r)) / (factor * (d - lam))) if d > lam else None


def _bound_forms(cum: np.ndarray, d: dict[str, Any], study: Study, agent: str, bound: str,
                 premise: bool, rho_ci: dict[str, float] | None, boot: dict[str, Any]
                 ) -> dict[str, Any]:
    """One bound (``"M1"`` or ``"M0"``) of one memoryless agent, in both forms, plus the ratio
    with the fit's ``Delta``; ``boot`` holds ``resamples``, ``rng``, ``tol``, ``max_width``."""
    M, lam, n = study.M, study.lam, cum.shape[0]
    args = (boot["resamples"], boot["rng"], boot["tol"], boot["max_width"])
    e = _bound_entry(cum, d["deltas"], M, lam, bound, *args)
    e["bound_per_cycle"] = f"{'M - 1' if bound == 'M1' else 'M'} x (Delta - lambda)"
    e["expected_ratio"] = _expected_ratio(study, agent, M - 1 if bound == "M1" else M)
    e["premise_complete_forgetting"] = premise
    if not premise and e["verdict"] == "violated":
        e["raw_verdict"], e["verdict"] = "violated", "inconclusive"
        e["reason"] = (f"premise A2 (complete forgetting) not established: rho = "
                       f"{rho_ci['mean']:.3f} [{rho_ci['ci_low']:.3f}, {rho_ci['ci_high']:.3f}]"
                       if rho_ci else "rho not measured (no keep-current)")
    g = _bound_entry(cum, d["deltas_general"], M, lam, bound, *args)
    g["h_bar_witness"] = d["h_bar_witness"]
    out = {"complete_forgetting": e, "general": g,
           "verdict": _worst([e["verdict"], g["verdict"]]),
           "ratio": e["ratio"], "ci_low": e["ci_low"], "ci_high": e["ci_high"]}
    out["with_fit_delta"] = _bound_entry(cum, np.full(n, d["delta_fit_eff"]), M, lam, bound,
                                         *args)
    return out


def _theorem2(study: Study, fit: AnalyticFit, a_star: np.ndarray, a_star_source: str,
              bank_slopes: np.ndarray, cum_vs_prescient: np.ndarray) -> dict[str, Any]:
    """The comparator's regret against a prescient one at ``a*``: slope, total, bounds."""
    M, L, cf = study.M, study.L, study.closed_form
    t2: dict[str, Any] = {
        "a_star_source": a_star_source,
        "a_star_mean": float(np.mean(a_star)),
        "slope": _ci(bank_slopes),
        "cum_regret_at_C": _ci(cum_vs_prescient[:, -1]),
        "bound_kappa1_fit": float(M * phase_deficit(0.0, L, fit.curve) / (1 - fit.curve.q**L)),
    }
    t2["slope_ci_contains_0"] = bool(t2["slope"]["ci_low"] <= 0 <= t2["slope"]["ci_high"])
    if cf is not None:
        phi_b = M * np.asarray(cf.phi(bank_experiences(cf)))
        t2["closed_form_slope"] = float(regret_slope(np.cumsum(phi_b)))
        t2["closed_form_cum_at_C"] = float(np.sum(phi_b))
        t2["closed_form_bound_kappa1"] = float(M * cf.phi(0.0) / (1 - cf.curve.q**L))
    return t2


def _recovery(wide: pd.DataFrame, study: Study, seeds: list[int], agents: list[str]
              ) -> dict[str, Any]:
    """Recovery times per agent (with the noise-free model's where it has one) and the
    bank-vs-memoryless ratios in two counting conventions."""
    comparator = study.comparator
    rev = wide[(wide["visit"] > 1) & wide["seed"].isin(seeds)]
    recovery: dict[str, Any] = {"convention": study.recovery_convention, "per_agent": {}}
    for a in agents:
        r = rev[rev["agent"] == a]
        per = r.groupby("seed")["recovery"].mean().reindex(seeds).to_numpy()
        recovery["per_agent"][a] = {**_ci(per), "censored_rate": float(r["censored"].mean())}
        model = _noise_free_recovery(study, a)
        if model is not None:
            recovery["per_agent"][a]["model_noise_free"] = model
    bank_r = recovery["per_agent"][comparator]["mean"]
    recovery["bank_vs_memoryless"] = {
        "conventions": {"R": "ratio of mean R_eps (memoryless / bank); null when the bank's is 0",
                        "R_plus_1": "ratio of mean (R_eps + 1): steps until within eps, counting "
                                    "the first step as 1 (memoryless / bank)"},
        **{a: {"R": (recovery["per_agent"][a]["mean"] / bank_r) if bank_r > 0 else None,
               "R_plus_1": (recovery["per_agent"][a]["mean"] + 1) / (bank_r + 1)}
           for a in agents if study.classes[a] in ("M0", "M1")}}
    return recovery


def _noise_free_recovery(study: Study, agent: str) -> int | None:
    """The closed form's recovery time of ``agent``, where the model gives one."""
    cf, L = study.closed_form, study.L
    if cf is None:
        return None
    if agent == study.comparator and cf.kappa == 1.0:
        return 0  # the bank restores its entry whole: immediate recovery
    if agent == "always-fresh" or (agent == "keep-current" and cf.gamma == 0):
        return recovery_time_fresh(cf.curve.D, cf.curve.tau, L, study.recovery_eps,
                                   w=min(study.recovery_window, L))
    return None


def _protocol_text(resamples: int, tol: float, max_width: float | None, rho_max: float
                   ) -> dict[str, str]:
    """The ``protocol`` block of the verdicts: how each number was obtained, in words."""
    return {"slope": "OLS of cumulative regret against the cycle over cycles 2..C, per seed",
            "ratio": "mean slope / (factor x (Delta - lambda)); factor M - 1 (M1), M (M0)",
            "ci": f"seed bootstrap, {resamples} resamples, 95% percentile, Delta "
                  "re-estimated in each resample",
            "violated": f"ci_high < 1 - tol (tol = {tol})",
            "inconclusive": f"ci_width > {max_width} or undefined",
            "forms": "complete_forgetting: Delta against always-fresh (h_bar = 0), counted "
                     f"only when rho's CI is below {rho_max}; general: Delta against the "
                     "weakest observed miss (h_bar > 0)"}


def _delta_report(d: dict[str, Any], study: Study) -> dict[str, Any]:
    """The ``delta_switch`` block of the verdicts: every reading with its CI over seeds."""
    cf, C, fit = study.closed_form, study.C, d["fit"]
    return {
        "paired": _ci(d["paired"]),
        "slope_weighted": _ci(d["deltas"]),
        "general": {**_ci(d["deltas_general"]), "h_bar_witness": d["h_bar_witness"]},
        "witnesses_slope_weighted": {k: float(np.mean(v)) for k, v in d["witnesses"].items()},
        "exp_fit": {"delta": d["delta_fit"], "delta_slope_weighted": d["delta_fit_eff"],
                    "a_star": fit.a_star, "D": fit.D, "tau": fit.tau, "kappa": fit.kappa,
                    **fit.curve_fit},
        "closed_form": (float(np.mean([delta_switch(cf, c) for c in range(2, C + 1)]))
                        if cf is not None else None),
        "definition": "paired: mean over revisits of sum_phase (acc_bank - acc_always_fresh) "
                      "(THEORY.md); slope_weighted: OLS slope over cycles 2..C of the "
                      "cumulative per-cycle Delta_c, the weights the regret slope gives "
                      "(the ratios use it); general: the same against the weakest miss",
    }
