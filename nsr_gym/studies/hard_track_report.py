"""Tables, findings and the training-curve plot of ``nsr-gym study hard-track``
(:mod:`nsr_gym.studies.hard_track` runs the units).

Every statistic is over evaluation seeds (the independent unit): the normalized score per seed
is ``(R - R_mem) / (R_clairvoyant - R_mem)`` (:func:`nsr_gym.stats.normalized_scores`, ``R_mem``
the memoryless agent with the best mean return), its mean with a 95% percentile bootstrap CI
(:func:`nsr_gym.stats.mean_ci`); a paired difference is the per-seed difference of returns on
the same streams, the learned controller's return being the mean over its training seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.atomic import atomic_write_text
from nsr_gym.results import markdown_table, provenance_line, write_csv, write_json
from nsr_gym.stats import mean_ci, normalized_scores
from nsr_gym.studies.hard_track import ALGO, CLASSES, RETENTION_RULES

#: The bar of issue 18: the similarity rule's normalized score on every hard id is at most this.
HEADROOM_BAR = 0.7
_GROUP = ["backend", "env_id"]


def _name(env_id: str) -> str:
    return env_id.split("/")[-1].removesuffix("-v0")


def bounds(rules: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per seed of one (backend, env id): the best memoryless agent's return (the 0) and the
    clairvoyant's minus it (the span; NaN where they tie), as in ``normalized_scores``."""
    ret = rules.pivot_table(index="seed", columns="agent", values="episode_return")
    best_mem = max((a for a in ret if CLASSES.get(a) == "M0"), key=lambda a: ret[a].mean())
    span = ret["clairvoyant"] - ret[best_mem]
    return ret[best_mem], span.where(span.abs() > 1e-9)


def add_normalized(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``normalized`` column, per (backend, env id), the clairvoyant as the 1
    (:func:`nsr_gym.stats.normalized_scores`)."""
    parts = []
    for _, g in runs.groupby(_GROUP, sort=False):
        ref = g.assign(agent=g["agent"].replace({"clairvoyant": "oracle"}))
        parts.append(g.assign(normalized=normalized_scores(ref, {**CLASSES, "oracle": "oracle"})))
    return pd.concat(parts, ignore_index=True)


def headroom_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, env id, agent): seeds, mean return, normalized score and its CI, and for
    the clairvoyant the share of episodes it planned exactly."""
    rows = []
    for (backend, eid, agent), g in runs.groupby([*_GROUP, "agent"], sort=False):
        score, lo, hi = mean_ci(g["normalized"].to_numpy())
        exact = g["plan_exact"].dropna()
        rows.append({"backend": backend, "benchmark": _name(eid), "agent": agent,
                     "seeds": len(g), "return": float(g["episode_return"].mean()),
                     "normalized": score, "ci_low": lo, "ci_high": hi,
                     "planned_exactly": float(exact.astype(float).mean()) if len(exact) else
                     np.nan})
    return pd.DataFrame(rows)


def learned_table(runs: pd.DataFrame, learned: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, env id): the learned controllers (mean over training seeds, per evaluation
    seed) against the similarity rule and the best retention rule, paired, with 95% CIs."""
    rows = []
    for (backend, eid), g in learned.groupby(_GROUP, sort=False):
        ref = runs[(runs["backend"] == backend) & (runs["env_id"] == eid)]
        ret = ref.pivot_table(index="seed", columns="agent", values="episode_return")
        mine = g.groupby("seed")["episode_return"].mean()
        seeds = mine.index.intersection(ret.index)
        mine, ret = mine.loc[seeds], ret.loc[seeds]
        low, span = bounds(ref)
        best = max(RETENTION_RULES, key=lambda a: ret[a].mean())
        score, s_lo, s_hi = mean_ci(((mine - low.loc[seeds]) / span.loc[seeds]).to_numpy())
        row: dict[str, Any] = {"backend": backend, "benchmark": _name(eid),
                               "train_seeds": int(g["train_seed"].nunique()),
                               "eval_seeds": len(seeds), "return": float(mine.mean()),
                               "normalized": score, "ci_low": s_lo, "ci_high": s_hi,
                               "best_retention_rule": best}
        for label, other in (("vs_similarity", "similarity"), ("vs_best_retention", best)):
            d, lo, hi = mean_ci((mine - ret[other]).to_numpy())
            row.update({label: d, f"{label}_low": lo, f"{label}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def curve_table(trained: list[dict[str, Any]], n_bins: int = 20) -> pd.DataFrame:
    """Training episodes binned by env steps: per (env id, training seed, bin) the mean return
    of the episodes that ended in the bin (all training envs pooled)."""
    rows = []
    for run in trained:
        curve = pd.DataFrame(run["curve"])
        if curve.empty:
            continue
        edges = np.linspace(0, curve["end_step"].max(), n_bins + 1)
        curve["bin"] = np.clip(np.searchsorted(edges, curve["end_step"], side="left"), 1, n_bins)
        for b, c in curve.groupby("bin"):
            rows.append({"env_id": run["env_id"], "train_seed": run["train_seed"],
                         "step": int(edges[b]), "return": float(c["return"].mean()),
                         "episodes": len(c)})
    return pd.DataFrame(rows)


def _ci(v: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def headroom_findings(table: pd.DataFrame) -> list[str]:
    """One line per (backend, id): the similarity rule's score against the bar, and the best
    retention rule's."""
    lines = []
    for (backend, name), g in table.groupby(["backend", "benchmark"], sort=False):
        g = g.set_index("agent")
        sim = g.loc["similarity"]
        best = g.loc[list(RETENTION_RULES), "normalized"].idxmax()
        verdict = "within" if sim["normalized"] <= HEADROOM_BAR else "ABOVE"
        exact = g.loc["clairvoyant", "planned_exactly"]
        above = g.index[g["normalized"] > 1.0].tolist()
        caveat = (f"; {', '.join(above)} beat(s) the clairvoyant's plan, which is no upper "
                  "bound here" if above else "")
        lines.append(
            f"- {name}, {backend}: the similarity rule scores "
            f"{_ci(sim['normalized'], sim['ci_low'], sim['ci_high'])}, {verdict} the bar of "
            f"{HEADROOM_BAR}; the best retention rule ({best}) "
            f"{g.loc[best, 'normalized']:.3f}; the clairvoyant planned exactly in "
            f"{exact:.0%} of episodes{caveat}.")
    return lines


def learned_findings(table: pd.DataFrame) -> list[str]:
    """Per (backend, id): does the learned controller beat the similarity rule (and the best
    retention rule) significantly; then a count over the analytic hard ids."""
    lines = []
    for r in table.itertuples(index=False):
        verdicts = []
        for label, other in (("vs_similarity", "the similarity rule"),
                             ("vs_best_retention", f"the best retention rule "
                                                   f"({r.best_retention_rule})")):
            d, lo, hi = (getattr(r, label), getattr(r, f"{label}_low"),
                         getattr(r, f"{label}_high"))
            word = "beats" if lo > 0 else "loses to" if hi < 0 else "ties (CI spans 0)"
            verdicts.append(f"{word} {other} by {_ci(d, lo, hi, '+.2f')}")
        lines.append(f"- {r.benchmark}, {r.backend}: {ALGO} ({r.train_seeds} training seeds) "
                     f"scores {_ci(r.normalized, r.ci_low, r.ci_high)}; it "
                     + "; it ".join(verdicts) + ".")
    analytic = table[table["backend"] == "analytic"]
    wins = int((analytic["vs_similarity_low"] > 0).sum())
    lines.append(f"- On the analytic backend the learned controller beats the similarity rule "
                 f"significantly on {wins} of {len(analytic)} hard ids (the issue's goal: 2).")
    return lines


def _fmt_headroom(table: pd.DataFrame) -> pd.DataFrame:
    t = table.drop(columns=["ci_low", "ci_high"]).copy()
    t["normalized"] = [_ci(v, lo, hi) for v, lo, hi in
                       zip(table["normalized"], table["ci_low"], table["ci_high"], strict=True)]
    return t


def _fmt_learned(table: pd.DataFrame) -> pd.DataFrame:
    t = table[["backend", "benchmark", "train_seeds", "eval_seeds", "return"]].copy()
    t["normalized"] = [_ci(v, lo, hi) for v, lo, hi in
                       zip(table["normalized"], table["ci_low"], table["ci_high"], strict=True)]
    for label in ("vs_similarity", "vs_best_retention"):
        t[label] = [_ci(v, lo, hi, "+.2f") for v, lo, hi in zip(
            table[label], table[f"{label}_low"], table[f"{label}_high"], strict=True)]
    t["best_retention_rule"] = table["best_retention_rule"]
    return t


def plot_curves(curves: pd.DataFrame, headroom: pd.DataFrame, path: Path,
                footer: str) -> None:
    """Training return against env steps per hard id: mean over training seeds, a min-max band,
    and the analytic means of the similarity rule, the best retention rule and the
    clairvoyant on the evaluation seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(dict.fromkeys(curves["env_id"]))
    fig, axes = plt.subplots(1, len(ids), figsize=(5.0 * len(ids), 3.8), squeeze=False)
    for ax, eid in zip(axes[0], ids, strict=True):
        c = curves[curves["env_id"] == eid].pivot_table(index="step", columns="train_seed",
                                                        values="return")
        ax.plot(c.index, c.mean(1), color="C0", label=f"{ALGO} (mean of {c.shape[1]} seeds)")
        ax.fill_between(c.index, c.min(1), c.max(1), color="C0", alpha=0.25, label="min-max")
        ref = headroom[(headroom["backend"] == "analytic")
                       & (headroom["benchmark"] == _name(eid))].set_index("agent")["return"]
        best = ref.loc[list(RETENTION_RULES)].idxmax()
        for agent, color, ls in (("clairvoyant", "k", ":"), ("similarity", "C3", "--"),
                                 (best, "C2", "-.")):
            ax.axhline(ref[agent], color=color, ls=ls, lw=1.2, label=f"{agent} (eval seeds)")
        ax.set(title=_name(eid), xlabel="env steps", ylabel="episode return (training)")
        ax.legend(fontsize=7)
    fig.text(0.01, 0.005, footer, fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, runs: pd.DataFrame, learned: pd.DataFrame,
                 trained: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Write every file of the study under ``out`` and return ``hard_track.md``'s text."""
    runs = add_normalized(runs)
    headroom = headroom_table(runs)
    write_csv(out / "runs.csv", runs)
    write_csv(out / "scores.csv", headroom)
    sections = ["# The hard track: headroom of the similarity rule, and learned controllers", "",
                provenance_line(meta), "",
                "normalized: 0 = the best memoryless agent, 1 = the clairvoyant, per seed, mean "
                "with a 95% bootstrap CI over seeds. `similarity` runs with the env's default "
                "retention (`retention=\"env\"`, `eviction=\"lru\"`); `pin`, `lfu-retain`, "
                "`lru-retain` with `retention=\"agent\"`, `clairvoyant` on the id as registered. "
                "planned_exactly: "
                "episodes the clairvoyant's program finished (else its Belady heuristic, a lower "
                "bound of the optimum); on torch it plans on `AnalyticConfig()`'s model, an "
                "approximation.", "", "## Headroom", "", markdown_table(_fmt_headroom(headroom)),
                "", *headroom_findings(headroom), ""]
    if len(learned):
        table = learned_table(runs, learned)
        curves = curve_table(trained)
        write_csv(out / "learned.csv", learned)
        write_csv(out / "learned_summary.csv", table)
        write_csv(out / "training_curves.csv", curves)
        footer = (f"{meta['command']} | eval seeds {meta['seeds']} | training seeds "
                  f"{meta['units']['train']['seeds']} | git {meta['git_revision'][:12]}")
        plot_curves(curves, headroom, out / "training_curves.png", footer)
        steps = meta["units"]["train"]["steps"]
        sections += ["## Learned controllers", "",
                     f"`{ALGO}` trained on the analytic backend of each id as registered, "
                     f"{steps:,} steps per training seed (`nsr_gym.agents.train`, default "
                     "hyperparameters), the final policy evaluated deterministically on the "
                     "evaluation seeds, which no training run reset to; the torch rows are the "
                     "same policies on the torch backend (transfer, no torch training). "
                     "vs_*: paired difference in return (mean over training seeds minus the "
                     "rule), 95% bootstrap CI over evaluation seeds. Training curves: "
                     "`training_curves.png`.", "", markdown_table(_fmt_learned(table)), "",
                     *learned_findings(table), ""]
    write_json(out / "manifest.json", meta)
    md = "\n".join(sections)
    atomic_write_text(out / "hard_track.md", md)
    return md
