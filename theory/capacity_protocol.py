"""Theorem 3 (capacity) checked on logged phase records, with the protocol of Theorem 1.

Input: stacked *phase records* (``nsr_gym.studies.regret.phase_record``'s columns plus ``hit``,
1 where the phase's first action loaded an entry of the phase's own task), one row per
``(agent, seed, phase)``, for a strict cycle of ``M`` tasks with a bank of ``K < M`` slots, and
for the comparator ``B_inf`` (theory/THEORY.md's Bank oracle with an unbounded bank, ``K >= M``)
on the same seeds. :func:`analyse_capacity` then does:

1. ``Delta_switch`` per seed, paired and model-free against ``B_inf``: against always-fresh
   (complete forgetting, ``h_bar = 0``) and against the weakest observed miss (always-fresh or
   keep-current: A2 with ``h_bar > 0``), per cycle and OLS-slope weighted
   (``theory.protocol.effective_delta``), as Theorem 1's protocol does.
2. ``rho`` (keep-current's retention at revisits): Theorem 3 assumes complete forgetting; its
   premise counts as established when ``rho``'s upper CI limit is ``<= rho_max``.
3. Per agent and seed, the cumulative regret against ``B_inf`` by cycle and its OLS slope over
   cycles ``2..C``; seed-bootstrap ratios (``Delta`` re-estimated in every resample) to

   * ``T3``, Theorem 3 (ii), for *every* policy: ``(M - K)(Delta - lam)`` per cycle;
   * ``M1``, Theorem 1', for memoryless agents: ``(M - 1)(Delta - lam)`` (a task-blind choice
     hits at most one task per cycle in expectation, with any number of slots);
   * ``M0``, for bank-free agents and wherever Theorem 3 (iv) says an agent pays that rate:
     ``M (Delta - lam)``.

   Lower bounds get the one-sided verdict of ``theory.verify`` (violated only when the upper CI
   limit is below ``1 - tol``; inconclusive when the CI is wider than ``max_width``), in both
   forms (``complete_forgetting``: a "violated" where the premise is not established becomes
   "inconclusive" with the ``raw_verdict`` kept; ``general``: always counts).
4. Attainment, where the theorem claims it (``CapacityStudy.claims``: pinning at ``T3``, LRU and
   FIFO at ``M0``, keep-current at ``M0``, the clairvoyant at ``T3``):
   ``theory.verify.attainment_verdict`` on the complete-forgetting ratio: "tight" or "not tight"
   (only where the premise is established; "inconclusive" otherwise).
5. Theorem 3 (i): hits per revisit cycle, and whether any seed's cycle exceeds ``K``.

Where the run is exactly the theorem's model (``closed_form``: the analytic backend with
``gamma = 0``, no transfer), every ratio is reported next to its noise-free closed form.

Pure numpy / pandas on top of ``theory``: nothing here imports envs, agents or the CLI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.stats import mean_ci
from nsr_gym.theory.capacity import capacity_lower_bound, capacity_regret_per_cycle
from nsr_gym.theory.estimate import paired_delta_switch
from nsr_gym.theory.protocol import effective_delta, per_cycle_deltas
from nsr_gym.theory.theorem1 import CyclicSetting, delta_switch, regret_per_cycle
from nsr_gym.theory.verify import attainment_verdict, bootstrap_slope_ratio, regret_slope

__all__ = ["BOUNDS", "CapacityStudy", "analyse_capacity", "expected_regret"]

#: Bound name -> what its factor is, in words.
BOUNDS = {"T3": "M - K", "M1": "M - 1", "M0": "M"}


@dataclass(frozen=True)
class CapacityStudy:
    """What was run: the strict cycle, the bank size and rule, the agents and the claims."""

    M: int
    L: int
    C: int
    K: int
    lam: float
    rule: str
    """``theory.capacity.RETENTION_RULES`` name of the bank's retention."""
    classes: dict[str, str]
    """Agent -> ``"M0"``, ``"M1"``, ``"history"``, ``"oracle"`` or ``"clairvoyant"``."""
    comparator: str = "bank-inf"
    """``B_inf``: ``Oracle(first_visit="keep")`` with ``K >= M``."""
    claims: dict[str, str] = field(default_factory=dict)
    """Agent -> the bound (``T3``, ``M0``) the theorem says it attains."""
    expected: dict[str, str] = field(default_factory=dict)
    """Agent -> its closed form: ``"capacity"`` (the oracle allocation under ``rule``),
    ``"bound"`` (the optimum, Theorem 3 (iii)) or a ``theory.regret_per_cycle`` name."""
    a_star: float | None = None
    """Asymptote when known (the analytic backend); None: ``B_inf``'s plateau."""
    closed_form: CyclicSetting | None = None
    """The theorem's exact model of the run, when there is one."""
    report: dict[str, Any] = field(default_factory=dict)
    """Extra setting fields copied into the verdicts."""


def _ci(values: np.ndarray) -> dict[str, float]:
    m, lo, hi = mean_ci(values, seed=0)
    return {"mean": m, "ci_low": lo, "ci_high": hi, "ci_width": hi - lo}


def _by_seed(wide: pd.DataFrame, agent: str, seeds: list[int], values: str,
             columns: str = "phase") -> np.ndarray:
    sub = wide[wide["agent"] == agent]
    if sub.empty:
        raise ValueError(f"no rows for agent {agent!r}")
    table = sub.pivot_table(index="seed", columns=columns, values=values, aggfunc="sum")
    return table.loc[seeds].to_numpy(dtype=np.float64)


def expected_regret(study: CapacityStudy, agent: str) -> np.ndarray | None:
    """``(C,)`` noise-free regret against ``B_inf`` per cycle, where the closed forms give it."""
    cf, form = study.closed_form, study.expected.get(agent)
    if cf is None or form is None:
        return None
    if form == "capacity":
        return capacity_regret_per_cycle(cf, study.K, study.rule, "keep")
    if form == "bound":  # the optimum: pinning with keep-on-miss attains the per-cycle bound
        return capacity_regret_per_cycle(cf, study.K, "pin", "keep")
    return regret_per_cycle(cf, form)


def _expected_ratio(study: CapacityStudy, agent: str, factor: int) -> float | None:
    r, cf = expected_regret(study, agent), study.closed_form
    if r is None or cf is None:
        return None
    d = float(effective_delta(np.array([0.0] + [delta_switch(cf, c)
                                                for c in range(2, study.C + 1)])))
    return float(regret_slope(np.cumsum(r)) / (factor * (d - study.lam))) if d > study.lam \
        else None


def _ratio(cum: np.ndarray, deltas: np.ndarray, study: CapacityStudy, factor: int, rng: int,
           boot: dict[str, Any]) -> dict[str, Any]:
    sr = bootstrap_slope_ratio(cum, deltas, study.M, study.lam, "M0", boot["resamples"],
                               rng=rng, factor=factor)
    verdict = sr.verdict(boot["tol"], boot["max_width"])
    if verdict == "inconclusive" and math.isfinite(sr.ci_low) and sr.ci_low >= 1 - boot["tol"]:
        verdict = "holds"  # the whole interval is above the bound: its width cannot matter
    return {"verdict": verdict, **asdict(sr)}


def _bound(cum: np.ndarray, d: dict[str, Any], study: CapacityStudy, agent: str, bound: str,
           rng: int, boot: dict[str, Any]) -> dict[str, Any]:
    """One bound of one agent in both forms, with the closed form's ratio."""
    factor = {"T3": study.M - study.K, "M1": study.M - 1, "M0": study.M}[bound]
    e = _ratio(cum, d["fresh"], study, factor, rng, boot)
    e["expected_ratio"] = _expected_ratio(study, agent, factor)
    if not d["premise"] and e["verdict"] == "violated":
        e["raw_verdict"], e["verdict"] = "violated", "inconclusive"
        e["reason"] = "premise (complete forgetting) not established: " + d["rho_text"]
    g = _ratio(cum, d["general"], study, factor, rng, boot)
    g["h_bar_witness"] = d["h_bar_witness"]
    worst = "violated" if "violated" in (e["verdict"], g["verdict"]) else (
        "inconclusive" if "inconclusive" in (e["verdict"], g["verdict"]) else "holds")
    return {"bound_per_cycle": f"{BOUNDS[bound]} x (Delta - lambda)", "verdict": worst,
            "ratio": e["ratio"], "ci_low": e["ci_low"], "ci_high": e["ci_high"],
            "complete_forgetting": e, "general": g}


def _deltas(acc_sum: dict[str, np.ndarray], study: CapacityStudy, seeds: list[int],
            revisit: np.ndarray) -> dict[str, Any]:
    """Paired and per-witness slope-weighted ``Delta`` ``(n,)`` against ``B_inf``."""
    M, C, comp = study.M, study.C, study.comparator
    paired = np.asarray(paired_delta_switch(acc_sum[comp], acc_sum["always-fresh"],
                                            np.arange(M * C), revisit), dtype=np.float64)
    witnesses = {a: np.asarray(effective_delta(per_cycle_deltas(acc_sum[comp], acc_sum[a],
                                                                revisit, M)), dtype=np.float64)
                 for a in ("always-fresh", "keep-current") if a in acc_sum}
    weakest = min(witnesses, key=lambda k: float(np.mean(witnesses[k])))
    return {"paired": paired, "fresh": witnesses["always-fresh"], "general": witnesses[weakest],
            "h_bar_witness": weakest, "witnesses": witnesses}


def _rho(wide: pd.DataFrame, study: CapacityStudy, seeds: list[int], revisit: np.ndarray,
         rho_max: float) -> tuple[dict[str, float] | None, bool, str]:
    """``(rho CI, premise established, text)``; rho from keep-current's first revisit steps."""
    if "keep-current" not in set(wide["agent"]):
        return None, False, "rho not measured (no keep-current)"
    keep0 = _by_seed(wide, "keep-current", seeds, "acc_first")[:, revisit].mean(axis=1)
    a0 = _by_seed(wide, "always-fresh", seeds, "acc_first")[:, revisit].mean(axis=1)
    if study.a_star is not None:
        top = min(study.a_star, 1.0)
    else:  # B_inf's plateau: its last accuracies in the final cycle
        last = wide[(wide["agent"] == study.comparator)
                    & (wide["phase"] >= study.M * (study.C - 1))]
        top = float(last["acc_end"].mean())
    rho = _ci((keep0 - a0) / (top - a0))
    text = f"rho = {rho['mean']:.3f} [{rho['ci_low']:.3f}, {rho['ci_high']:.3f}]"
    return rho, bool(rho["ci_high"] <= rho_max), text


def _claim(study: CapacityStudy, agent: str, bounds: dict[str, Any], premise: bool, tol: float,
           max_width: float | None) -> dict[str, Any] | None:
    bound = study.claims.get(agent)
    if bound is None or bound not in bounds:
        return None
    e = bounds[bound]["complete_forgetting"]
    out = {"bound": bound, "ratio": e["ratio"], "ci_low": e["ci_low"], "ci_high": e["ci_high"],
           "expected_ratio": e["expected_ratio"]}
    raw = attainment_verdict(e["ci_low"], e["ci_high"], tol, max_width)
    out["attainment"] = raw if premise else "inconclusive"
    if not premise:
        out["raw_attainment"] = raw
        out["reason"] = "the theorem's premise (complete forgetting) is not established"
    return out


def _hits(wide: pd.DataFrame, study: CapacityStudy, seeds: list[int], agent: str
          ) -> dict[str, Any] | None:
    if "hit" not in wide:
        return None
    per_cycle = _by_seed(wide, agent, seeds, "hit", columns="cycle")[:, 1:]
    return {**_ci(per_cycle.mean(axis=1)), "max": float(per_cycle.max()),
            "exceeds_K": bool(per_cycle.max() > study.K)}


def _verdict(entry: dict[str, Any]) -> str:
    v = [b["verdict"] for b in entry["bounds"].values()]
    worst = "violated" if "violated" in v else ("inconclusive" if "inconclusive" in v
                                                else "holds")
    claim = entry.get("claim")
    if worst == "holds" and claim is not None and claim["attainment"] == "tight":
        return "tight"
    if worst == "holds" and claim is not None and claim["attainment"] == "not tight":
        return "not tight"
    return worst


def analyse_capacity(wide: pd.DataFrame, study: CapacityStudy, seeds: list[int],
                     resamples: int = 2000, tol: float = 0.05, max_width: float | None = 0.5,
                     rho_max: float = 0.1) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Theorem 3's protocol on stacked phase records (module docstring).

    Returns:
        ``(verdicts, per-agent cycle tables)``; each table has ``seed, cycle, return,
        regret_vs_bank_inf, cum_regret_vs_bank_inf`` (and ``hits`` with a ``hit`` column).
    """
    C, comp = study.C, study.comparator
    agents = [a for a in study.classes if a in set(wide["agent"])]
    for needed in (comp, "always-fresh"):
        if needed not in agents:
            raise ValueError(f"the capacity analysis needs agent {needed!r}")
    n = len(seeds)
    ref = wide[(wide["agent"] == comp) & (wide["seed"] == seeds[0])].sort_values("phase")
    revisit = ref["visit"].to_numpy() > 1
    acc_sum = {a: _by_seed(wide.assign(s=wide["acc_mean"] * wide["length"]), a, seeds, "s")
               for a in agents}
    d = _deltas(acc_sum, study, seeds, revisit)
    rho, premise, rho_text = _rho(wide, study, seeds, revisit, rho_max)
    d.update(premise=premise, rho_text=rho_text)
    returns = {a: _by_seed(wide, a, seeds, "return", columns="cycle") for a in agents}
    boot = {"resamples": resamples, "tol": tol, "max_width": max_width}
    policies: dict[str, Any] = {}
    tables: dict[str, pd.DataFrame] = {}
    for i, a in enumerate(agents):
        regret = returns[comp] - returns[a]
        cum = np.cumsum(regret, axis=1)
        table = pd.DataFrame({"seed": np.repeat(seeds, C), "cycle": np.tile(np.arange(1, C + 1), n),
                              "return": returns[a].ravel(), "regret_vs_bank_inf": regret.ravel(),
                              "cum_regret_vs_bank_inf": cum.ravel()})
        if "hit" in wide:
            table["hits"] = _by_seed(wide, a, seeds, "hit", columns="cycle").ravel()
        tables[a] = table
        cls = study.classes[a]
        entry: dict[str, Any] = {"class": cls,
                                 "slope_vs_bank_inf": _ci(np.asarray(regret_slope(cum))),
                                 "hits_per_revisit_cycle": _hits(wide, study, seeds, a)}
        if a == comp:
            entry["note"] = "the comparator B_inf: regret 0 by definition"
            policies[a] = entry
            continue
        names = ["T3"] + (["M1"] if cls in ("M0", "M1") else []) + (
            ["M0"] if cls == "M0" or study.claims.get(a) == "M0" else [])
        entry["bounds"] = {b: _bound(cum, d, study, a, b, 10 * i + j + 1, boot)
                           for j, b in enumerate(names)}
        entry["claim"] = _claim(study, a, entry["bounds"], premise, tol, max_width)
        entry["verdict"] = _verdict(entry)
        policies[a] = entry
    return _verdicts(study, seeds, d, rho, policies, resamples, tol, max_width, rho_max), tables


def _verdicts(study: CapacityStudy, seeds: list[int], d: dict[str, Any],
              rho: dict[str, float] | None, policies: dict[str, Any], resamples: int,
              tol: float, max_width: float | None, rho_max: float) -> dict[str, Any]:
    """The verdicts document of :func:`analyse_capacity`."""
    verdicts = [p["verdict"] for p in policies.values() if "verdict" in p]
    hits_exceed = [a for a, p in policies.items()
                   if (p.get("hits_per_revisit_cycle") or {}).get("exceeds_K")
                   and a != study.comparator]
    bad = [a for a, p in policies.items() if p.get("verdict") in ("violated", "not tight")]
    overall = ("violated" if bad or hits_exceed else
               "inconclusive" if "inconclusive" in verdicts or not verdicts else "holds")
    cf = study.closed_form
    out: dict[str, Any] = {
        "overall": overall,
        "violations": [a for a, p in policies.items() if p.get("verdict") == "violated"],
        "not_tight": [a for a, p in policies.items() if p.get("verdict") == "not tight"],
        "hits_exceed_K": hits_exceed,
        "setting": {**study.report, "M": study.M, "L": study.L, "C": study.C, "K": study.K,
                    "lambda": study.lam, "retention_rule": study.rule, "n_seeds": len(seeds),
                    "comparator": f"{study.comparator} = Oracle(first_visit='keep') with an "
                                  "unbounded bank (K >= M), theory/THEORY.md's B_inf"},
        "protocol": {
            "slope": "OLS of cumulative regret against B_inf over cycles 2..C, per seed",
            "ratio": "mean slope / (factor x (Delta - lambda)); factor M - K (T3), M - 1 (M1), "
                     "M (M0)",
            "ci": f"seed bootstrap, {resamples} resamples, 95% percentile, Delta re-estimated "
                  "in each resample",
            "violated": f"ci_high < 1 - tol (tol = {tol})",
            "inconclusive": f"ci_width > {max_width} or undefined",
            "tight": f"the ratio's CI reaches into [1 - tol, 1 + tol]; 'not tight' when it lies "
                     f"wholly outside; only counted where rho's CI is below {rho_max}",
            "forms": "complete_forgetting: Delta against always-fresh (h_bar = 0); general: "
                     "Delta against the weakest observed miss (h_bar > 0)"},
        "premise_complete_forgetting": d["premise"],
        "rho": rho,
        "delta_switch": {"paired": _ci(d["paired"]), "slope_weighted": _ci(d["fresh"]),
                         "general": {**_ci(d["general"]), "h_bar_witness": d["h_bar_witness"]},
                         "closed_form": (float(np.mean([delta_switch(cf, c)
                                                        for c in range(2, study.C + 1)]))
                                         if cf is not None else None)},
        "policies": policies,
    }
    if cf is not None:
        b = capacity_lower_bound(cf, study.K)
        out["closed_form_bound"] = {"exact": b.exact, "simplified": b.simplified}
    return out
