"""The capacity study's tables, findings and files (see :mod:`nsr_gym.studies.capacity`).

* :func:`summarize`: per ``(backend, setting, agent)``, the return with a 95% bootstrap CI, hits
  per cycle against Belady-with-bypass's bound, and the regret against the clairvoyant and
  against the unbounded Bank ``B_inf``, both paired per seed with 95% CIs.
* :func:`clairvoyant_table`: per ``(backend, setting)``, whether the clairvoyant's plan is exact,
  how far its planned return is from the one it got, and how often and by how much any agent
  beats it.
* :func:`theorem3_table`: on the strict cycle, Theorem 3's closed-form regrets against ``B_inf``
  (:mod:`nsr_gym.theory.capacity`) beside the measured ones, and where the assumptions fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.atomic import atomic_write_text
from nsr_gym.results import (
    command_line,
    manifest,
    markdown_table,
    provenance_line,
    write_csv,
    write_json,
)
from nsr_gym.stats import mean_ci

#: A return above the clairvoyant's by more than this counts as beating it.
BEAT_TOL = 1e-9
#: Study agent -> the Theorem 3 retention rule of its closed form (fresh on a miss). The similarity
#: rule's allocation FRESHes (or warm-starts from another task's entry, worth the same with no
#: transfer) on a miss and at the very first step; it loads the own entry on a hit.
CLOSED_FORMS = {"pin": "pin", "similarity+reject": "pin", "lru-retain": "lru",
                "similarity+lru": "lru", "similarity+fifo": "fifo", "lfu-retain": "lfu",
                "similarity+lfu": "lfu"}
_KEYS = ["backend", "setting"]


def _paired(g: pd.DataFrame, ref: pd.Series, column: str = "episode_return") -> np.ndarray:
    """``ref - g[column]`` on the seeds both have, ``(n,)``."""
    a = g.set_index("seed")[column]
    seeds = a.index.intersection(ref.index)
    return (ref.loc[seeds] - a.loc[seeds]).to_numpy(dtype=np.float64)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per ``(backend, setting, agent)`` (``B_inf`` excluded), by return within each
    setting: the return, ``hits_per_cycle`` and Belady-with-bypass's ``belady_bound`` (means
    over seeds), the regret against the clairvoyant and against ``B_inf`` (paired per seed),
    each with a 95% bootstrap CI, and ``beats``: the seeds whose return beats the clairvoyant's."""
    rows = []
    for (backend, setting), g in runs.groupby(_KEYS, sort=False):
        ref = g[g["agent"] == "clairvoyant"].set_index("seed")["episode_return"]
        bank = g[g["agent"] == "bank-inf"].set_index("seed")["episode_return"]
        block = []
        for agent, a in g[g["agent"] != "bank-inf"].groupby("agent", sort=False):
            ret, lo, hi = mean_ci(a["episode_return"].to_numpy())
            regret = _paired(a, ref)
            r, r_lo, r_hi = mean_ci(regret)
            b, b_lo, b_hi = mean_ci(_paired(a, bank))
            block.append({
                "backend": backend, "setting": setting, "agent": agent, "seeds": len(a),
                "return": ret, "return_lo": lo, "return_hi": hi,
                "hits_per_cycle": float(a["hits_per_cycle"].mean()),
                "belady_bound": float(a["belady_per_cycle"].mean()),
                "regret": r, "regret_lo": r_lo, "regret_hi": r_hi,
                "beats": int((regret < -BEAT_TOL).sum()),
                "regret_bank_inf": b, "regret_bank_inf_lo": b_lo, "regret_bank_inf_hi": b_hi})
        rows += sorted(block, key=lambda row: -row["return"])
    return pd.DataFrame(rows)


def clairvoyant_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ``(backend, setting)``: the share of seeds whose plan is exact, the method,
    ``max_plan_gap`` (``max |planned return - return got|``), and the ``(agent, seed)`` pairs
    that beat the clairvoyant's return: ``beaten`` of ``pairs``, the largest margin and its
    agent (``by``), and the mean margin of those that beat it."""
    rows = []
    for (backend, setting), g in runs.groupby(_KEYS, sort=False):
        cv = g[g["agent"] == "clairvoyant"].set_index("seed")
        others = g[~g["agent"].isin(["clairvoyant", "bank-inf"])]
        margin = (others["episode_return"] - others["seed"].map(cv["episode_return"])).to_numpy()
        beat = margin > BEAT_TOL
        top = int(np.argmax(margin))
        rows.append({
            "backend": backend, "setting": setting, "seeds": len(cv),
            "plan_exact": float(cv["plan_exact"].astype(bool).mean()),
            "method": "/".join(sorted(set(cv["plan_method"]))),
            "max_plan_gap": float(np.max(np.abs(cv["plan_value"] - cv["episode_return"]))),
            "beaten": int(beat.sum()), "pairs": len(margin), "max_margin": float(margin[top]),
            "by": str(others["agent"].iloc[top]) if beat.any() else "",
            "mean_margin_of_beats": float(margin[beat].mean()) if beat.any() else 0.0})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Theorem 3
def theorem3_table(runs: pd.DataFrame, settings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Closed-form regret against ``B_inf`` and hits per cycle beside the measured ones, on the
    strict-cycle settings (:func:`nsr_gym.studies.capacity.closed_form_setting`).

    Rows: the agents of :data:`CLOSED_FORMS` (regret ``B_inf - (capacity_return(s, K, rule,
    "fresh") - lam)``: the similarity rule also FRESHes at the very first step; hits
    ``capacity_hit_pattern``; LFU has no closed-form return, only the cache view's hits), the
    clairvoyant beside Theorem 3 (ii)'s lower bound (which pinning with keep-on-miss attains,
    so the optimum equals it when ``Delta_min >= lam``) and (i)'s ``K`` hits per revisit cycle,
    and ``bank-inf``'s return beside ``bank_inf_return``. ``max_abs_diff`` is over seeds.
    """
    from nsr_gym.studies.capacity import closed_form_setting
    from nsr_gym.theory.capacity import (
        bank_inf_return,
        capacity_hit_pattern,
        capacity_lower_bound,
        capacity_return,
        hits_per_cycle,
    )

    rows = []
    for (backend, name), g in runs.groupby(_KEYS, sort=False):
        s, reasons = closed_form_setting(backend, settings[name])
        if s is None:
            continue
        K, M, C = int(settings[name]["capacity"]), s.M, s.C
        b_inf = float(bank_inf_return(s).sum())
        bank = g[g["agent"] == "bank-inf"].set_index("seed")["episode_return"]
        theory: dict[str, tuple[str, float, float]] = {}
        for agent, rule in CLOSED_FORMS.items():
            if rule == "lfu":  # the cache view only: no closed-form return
                theory[agent] = ("lfu: cache view's hits", float("nan"),
                                 hits_per_cycle("lfu", M, K) * (C - 1) / C)
            else:
                theory[agent] = (f"{rule}, fresh on a miss",
                                 b_inf - (capacity_return(s, K, rule, "fresh") - s.lam),
                                 float(capacity_hit_pattern(rule, M, K, C).sum()) / C)
        theory["clairvoyant"] = ("bounds (i), (ii)", capacity_lower_bound(s, K).exact,
                                 min(K, M) * (C - 1) / C)
        theory["bank-inf"] = ("B_inf's return", b_inf, M * (C - 1) / C)
        for agent, (form, want, hits) in theory.items():
            a = g[g["agent"] == agent]
            measured = (a["episode_return"].to_numpy() if agent == "bank-inf"
                        else _paired(a, bank))
            rows.append({"backend": backend, "setting": name, "agent": agent,
                         "closed_form": form, "measured": float(measured.mean()),
                         "theory": want, "max_abs_diff": float(np.max(np.abs(measured - want))),
                         "hits_per_cycle": float(a["hits_per_cycle"].mean()),
                         "hits_theory": hits, "assumptions": "; ".join(reasons) or "hold"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- findings
def _ci(row: pd.Series, col: str) -> str:
    return f"{row[col]:.2f} [{row[col + '_lo']:.2f}, {row[col + '_hi']:.2f}]"


def _backend_findings(backend: str, g: pd.DataFrame) -> list[str]:
    """Two bullets of one backend: regrets against the clairvoyant, and hits per cycle."""
    blocks = list(g.groupby("setting", sort=False))
    best = "; ".join(f"{name} {b[b['agent'] != 'clairvoyant'].iloc[0]['agent']} "
                     f"{_ci(b[b['agent'] != 'clairvoyant'].iloc[0], 'regret')}"
                     for name, b in blocks)

    def per_setting(agent: str, fmt) -> str:
        return " / ".join(fmt(b.set_index("agent").loc[agent]) for _, b in blocks)

    names = " / ".join(name for name, _ in blocks)
    regret = lambda r: _ci(r, "regret")  # noqa: E731
    hits = lambda r: f"{r['hits_per_cycle']:.2f}"  # noqa: E731
    bound = lambda r: f"{r['belady_bound']:.2f}"  # noqa: E731
    return [
        f"- {backend}: regret against the clairvoyant (paired per seed, 95% CI) of the best "
        f"other agent: {best}. Over {names}: similarity+lru {per_setting('similarity+lru', regret)}"
        f"; keep-current {per_setting('keep-current', regret)}.",
        f"- {backend}, hits per cycle over {names}: pin {per_setting('pin', hits)}, "
        f"similarity+lru {per_setting('similarity+lru', hits)}, similarity+lfu "
        f"{per_setting('similarity+lfu', hits)}, the clairvoyant "
        f"{per_setting('clairvoyant', hits)}; Belady-with-bypass's bound "
        f"{per_setting('clairvoyant', bound)}."]
def _theorem_findings(theorem: pd.DataFrame) -> list[str]:
    hold = theorem[(theorem["assumptions"] == "hold") & theorem["theory"].notna()]
    lfu = theorem[(theorem["assumptions"] == "hold") & theorem["theory"].isna()]
    off = theorem[(theorem["assumptions"] != "hold") & theorem["theory"].notna()
                  & (theorem["agent"] != "clairvoyant")]  # the clairvoyant's is a bound
    lines = []
    if len(hold):
        hits_gap = float((hold["hits_per_cycle"] - hold["hits_theory"]).abs().max())
        lines.append(
            f"- Theorem 3, analytic strict cycle: the closed-form regrets against B_inf (pinning, "
            f"LRU, FIFO; the lower bound, which the clairvoyant attains; B_inf's return) match "
            f"the measured ones to {hold['max_abs_diff'].max():.1e} on every seed ({len(hold)} "
            f"rows), and hits per cycle to {hits_gap:.2f}. LFU is the exception: the cache view "
            f"predicts {lfu['hits_theory'].max():.2f} hits per cycle, the env gives "
            f"{lfu['hits_per_cycle'].min():.2f} to {lfu['hits_per_cycle'].max():.2f}, because the "
            f"similarity rule's warm starts from other tasks' entries are loads, which LFU "
            f"counts as uses.")
    if len(off):
        worst = off.loc[off["max_abs_diff"].idxmax()]
        lines.append(
            f"- Where the assumptions fail ({'; '.join(sorted(set(off['assumptions'])))}), the "
            f"closed forms miss by up to {worst['max_abs_diff']:.1f} ({worst['agent']}, "
            f"{worst['backend']}, {worst['setting']}).")
    return lines


def findings(summary: pd.DataFrame, clair: pd.DataFrame, theorem: pd.DataFrame) -> list[str]:
    """The findings bullets; every number comes from the three tables."""
    lines = [line for backend, g in summary.groupby("backend", sort=False)
             for line in _backend_findings(backend, g)]
    lines += _theorem_findings(theorem)
    for backend, g in clair.groupby("backend", sort=False):
        exact = float((g["plan_exact"] * g["seeds"]).sum())
        lines.append(
            f"- The clairvoyant on {backend}: plan exact on {exact:.0f} of {g['seeds'].sum()} "
            f"(setting, seed) episodes (max |planned - got| {g['max_plan_gap'].max():.1e}); "
            f"other agents beat it in {g['beaten'].sum()} of {g['pairs'].sum()} (agent, seed) "
            f"pairs" + _beats(g) + ".")
    return lines


def _beats(g: pd.DataFrame) -> str:
    hit = g[g["beaten"] > 0]
    if hit.empty:
        return f", the closest within {-g['max_margin'].max():.2f} of it"
    return ": " + "; ".join(
        f"{r.setting} {r.beaten}/{r.pairs}, by up to {r.max_margin:.1f} ({r.by}), "
        f"{r.mean_margin_of_beats:.1f} on average" for r in hit.itertuples())


# ----------------------------------------------------------------------------- files
def _fmt_ci(frame: pd.DataFrame, *cols: str) -> pd.DataFrame:
    out = frame.copy()
    for col in cols:
        out[col] = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(
            frame[col], frame[col + "_lo"], frame[col + "_hi"], strict=True)]
        out = out.drop(columns=[col + "_lo", col + "_hi"])
    return out


def write_report(runs: pd.DataFrame, settings: dict[str, dict[str, Any]], out: Path,
                 seeds: list[int], torch_seeds: int, counts: dict[str, Any], wall: float,
                 executor: str) -> str:
    """Write ``runs.csv`` (floats exact), ``summary.csv``, ``clairvoyant.csv``,
    ``theorem3.csv``, ``manifest.json`` and ``capacity.md`` under ``out``; return the markdown."""
    from nsr_gym.studies.capacity import AGENTS

    summary, clair = summarize(runs), clairvoyant_table(runs)
    theorem = theorem3_table(runs, settings)
    meta = manifest(command_line(), seeds, wall, torch_seeds=seeds[:torch_seeds],
                    settings=settings, agents={a: dict(spec=s, kwargs=k, env=e)
                                               for a, (s, k, e) in AGENTS.items()},
                    executor=executor, units=counts)
    write_csv(out / "runs.csv", runs, float_format="%.17g")
    write_csv(out / "summary.csv", summary)
    write_csv(out / "clairvoyant.csv", clair)
    write_csv(out / "theorem3.csv", theorem, float_format="%.12g")
    write_json(out / "manifest.json", meta)
    md = _markdown(summary, clair, theorem, provenance_line(meta), seeds[:torch_seeds],
                   settings)
    atomic_write_text(out / "capacity.md", md)
    return md


def _markdown(summary: pd.DataFrame, clair: pd.DataFrame, theorem: pd.DataFrame,
              provenance: str, torch_seeds: list[int], settings: dict[str, dict[str, Any]]
              ) -> str:
    table = _fmt_ci(summary, "return", "regret", "regret_bank_inf")
    listed = "; ".join(f"`{name}`: {s['benchmark']}, " + ", ".join(
        f"{k} = {v}" for k, v in s.items() if k != "benchmark") for name, s in settings.items())
    th = theorem.copy()
    th["max_abs_diff"] = [f"{d:.1e}" for d in theorem["max_abs_diff"]]
    return "\n".join([
        "# Memory that binds: retention against the clairvoyant", "", provenance,
        f"The torch backend runs seeds {','.join(map(str, torch_seeds))}.", "",
        f"Split-Digits, M = 5 tasks, lambda = 0.05, the benchmarks' L = 30 unless a setting "
        f"says otherwise. Settings: {listed} (CyclicSplitDigits: a strict cycle; "
        "RecurringSplitDigits: a seeded random recurrence). `similarity+E`: the similarity "
        "rule with the env's eviction E (retention='env'); `pin`, `lfu-retain`, `lru-retain`: "
        "retention rules (retention='agent'); `clairvoyant`: plans allocation and retention "
        "on the whole schedule (retention='agent'). Return: mean over seeds, 95% bootstrap "
        "CI. regret: the clairvoyant's return minus the agent's, paired per seed (CI); beats: "
        "seeds on which the agent's return exceeds the clairvoyant's by more than 1e-9. "
        "regret_bank_inf: against B_inf (the oracle with one slot per task, keeping at first "
        "visits). hits_per_cycle: revisit phases whose first step loads the task's own entry "
        "(a LOAD of slot k that, after the step's retention write, holds an entry of the "
        "phase's task: k = oracle_info()['next_task_slot'] before the step, or the slot the step "
        "wrote the pending entry into when that entry is the task's), per M phases; belady_bound: "
        "Belady's MIN with bypass on the same schedule and K, the most any policy can hit.", "",
        markdown_table(table, floatfmt=".2f"), "",
        "## The clairvoyant", "",
        "plan_exact: share of seeds whose plan is the proven optimum over all action sequences "
        "(analytic backend; on torch it plans on AnalyticConfig()'s model). max_plan_gap: "
        "largest |planned return - return got|. beaten / pairs: (agent, seed) pairs whose "
        "return exceeds the clairvoyant's on the same seed.", "",
        markdown_table(clair, floatfmt=".3g"), "",
        "## Theorem 3 beside the measurements (strict cycle)", "",
        "Regret against B_inf (for bank-inf: its return), mean over seeds; theory: "
        "nsr_gym.theory.capacity's closed form on the analytic model (AnalyticConfig()); "
        "max_abs_diff over seeds.", "",
        markdown_table(th, floatfmt=".4f"), "",
        "## Findings", "",
        *findings(summary, clair, theorem), "",
    ])
