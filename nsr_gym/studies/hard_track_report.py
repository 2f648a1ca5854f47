"""Tables, findings and the training-curve plot of ``nsr-gym study hard-track``
(:mod:`nsr_gym.studies.hard_track` runs the units).

A rule's statistics are over evaluation seeds (the independent unit): the normalized score per
seed is ``(R - R_mem) / (R_clairvoyant - R_mem)`` (:func:`nsr_gym.stats.normalized_scores`,
``R_mem`` the memoryless agent with the best mean return), its mean with a 95% percentile
bootstrap CI (:func:`nsr_gym.stats.mean_ci`). A learned controller's are over (training seed,
evaluation seed) pairs: each trained policy on each evaluation seed is one value, paired with
the rule's return on the same stream (same id, backend and seed), and the CI resamples those
pairs (:func:`~nsr_gym.stats.mean_ci` over the ``train seeds x eval seeds`` values). The
transfer gap pairs the torch-trained and the analytic-trained policy of the same training
seed on the same evaluation seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.atomic import atomic_write_text
from nsr_gym.results import markdown_table, provenance_line, write_csv, write_json
from nsr_gym.stats import mean_ci, normalized_scores
from nsr_gym.studies.hard_track import ALGO, ALGOS, BACKENDS, CLASSES, RETENTION_RULES, algo_of

#: The bar of issue 18: the similarity rule's normalized score on every hard id is at most this.
HEADROOM_BAR = 0.7
_GROUP = ["backend", "env_id"]
#: A learned controller's rows: (env id, algorithm, trained on, evaluated on).
_LEARNED = ["env_id", "algo", "train_backend", "backend"]
#: The verdict when a paired difference's CI is above 0, below it, or spans it.
BEATS, LOSES, TIES = ("beats the similarity rule significantly",
                      "loses to the similarity rule significantly",
                      "ties the similarity rule (CI spans 0)")


def _name(env_id: str) -> str:
    return env_id.split("/")[-1].removesuffix("-v0")


def _with_algo(learned: pd.DataFrame) -> pd.DataFrame:
    """``learned`` with an ``algo`` column, read off each row's agent name where missing."""
    return learned if "algo" in learned else learned.assign(algo=learned["agent"].map(algo_of))


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


def _order(train_backend: str, backend: str) -> int:
    """Row order within an id: analytic->analytic, analytic->torch, torch->torch,
    torch->analytic (each training backend's own backend first)."""
    rank = {b: i for i, b in enumerate(BACKENDS)}
    return 2 * rank.get(train_backend, len(rank)) + (backend != train_backend)


def _verdict(lo: float, hi: float) -> str:
    return BEATS if lo > 0 else LOSES if hi < 0 else TIES


def learned_table(runs: pd.DataFrame, learned: pd.DataFrame) -> pd.DataFrame:
    """Per (env id, training backend, evaluation backend): the learned controllers against the
    similarity rule and the best retention rule on the evaluation backend, paired per
    (training seed, evaluation seed), with 95% CIs over those pairs, and the verdict.

    The best retention rule is the one of :data:`~nsr_gym.studies.hard_track.RETENTION_RULES`
    with the best mean return there (``belady-retain`` is a privileged reference, not a rule,
    and is not among them)."""
    rows = []
    for (eid, algo, train_backend, backend), g in _with_algo(learned).groupby(_LEARNED,
                                                                          sort=False):
        ref = runs[(runs["backend"] == backend) & (runs["env_id"] == eid)]
        ret = ref.pivot_table(index="seed", columns="agent", values="episode_return")
        g = g[g["seed"].isin(ret.index)]
        seeds = g["seed"].to_numpy()
        mine = g["episode_return"].to_numpy(dtype=float)
        low, span = bounds(ref)
        best = max(RETENTION_RULES, key=lambda a: ret[a].mean())
        score, s_lo, s_hi = mean_ci((mine - low.loc[seeds].to_numpy())
                                    / span.loc[seeds].to_numpy())
        row: dict[str, Any] = {"benchmark": _name(eid), "algo": algo,
                               "trained_on": train_backend,
                               "evaluated_on": backend,
                               "train_seeds": int(g["train_seed"].nunique()),
                               "eval_seeds": int(g["seed"].nunique()), "pairs": len(g),
                               "return": float(mine.mean()), "normalized": score,
                               "ci_low": s_lo, "ci_high": s_hi, "best_retention_rule": best}
        for label, other in (("vs_similarity", "similarity"), ("vs_best_retention", best)):
            d, lo, hi = mean_ci(mine - ret.loc[seeds, other].to_numpy())
            row.update({label: d, f"{label}_low": lo, f"{label}_high": hi})
        row["verdict"] = _verdict(row["vs_similarity_low"], row["vs_similarity_high"])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ids = list(dict.fromkeys(table["benchmark"]))
    rank = {a: i for i, a in enumerate(ALGOS)}
    key = [ids.index(b) * 100 + rank.get(a, len(rank)) * 10 + _order(t, e) for b, a, t, e in
           zip(table["benchmark"], table["algo"], table["trained_on"], table["evaluated_on"],
               strict=True)]
    return table.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def transfer_table(learned: pd.DataFrame) -> pd.DataFrame:
    """Per (env id, algorithm, evaluation backend), where both training backends ran: the
    transfer gap,
    torch-trained minus analytic-trained return, paired by (training seed, evaluation seed),
    mean with a 95% CI over the pairs. On the torch backend a positive gap is what training on
    the real learner gains over training on its analytic model."""
    rows = []
    for (eid, algo, backend), g in _with_algo(learned).groupby(["env_id", "algo", "backend"],
                                                               sort=False):
        ret = g.pivot_table(index=["train_seed", "seed"], columns="train_backend",
                            values="episode_return")
        if not {"analytic", "torch"} <= set(ret.columns):
            continue
        ret = ret.dropna(subset=["analytic", "torch"])
        gap, lo, hi = mean_ci((ret["torch"] - ret["analytic"]).to_numpy())
        rows.append({"benchmark": _name(eid), "algo": algo, "evaluated_on": backend,
                     "train_seeds": int(ret.index.get_level_values(0).nunique()),
                     "pairs": len(ret), "torch_trained": float(ret["torch"].mean()),
                     "analytic_trained": float(ret["analytic"].mean()), "gap": gap,
                     "gap_low": lo, "gap_high": hi})
    return pd.DataFrame(rows)


def curve_table(trained: list[dict[str, Any]], n_bins: int = 20) -> pd.DataFrame:
    """Training episodes binned by env steps: per (env id, algorithm, training backend, training
    seed, bin) the mean return of the episodes that ended in the bin (all training envs
    pooled)."""
    rows = []
    for run in trained:
        curve = pd.DataFrame(run["curve"])
        if curve.empty:
            continue
        edges = np.linspace(0, curve["end_step"].max(), n_bins + 1)
        curve["bin"] = np.clip(np.searchsorted(edges, curve["end_step"], side="left"), 1, n_bins)
        for b, c in curve.groupby("bin"):
            rows.append({"env_id": run["env_id"], "algo": run["algo"],
                         "train_backend": run["train_backend"],
                         "train_seed": run["train_seed"], "step": int(edges[b]),
                         "return": float(c["return"].mean()), "episodes": len(c)})
    return pd.DataFrame(rows)


def eval_curve_table(trained: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``EvalCallback`` evaluations of every run (``config.json``'s ``evaluations``): per
    (env id, algorithm, training backend, training seed, step) the deterministic return of one
    episode on the training backend (eval env seed ``train_seed + 10_000``)."""
    return pd.DataFrame(
        [{"env_id": run["env_id"], "algo": run["algo"],
          "train_backend": run["train_backend"], "train_seed": run["train_seed"],
          "step": e["step"], "return": e["return"]}
         for run in trained for e in run.get("evals", [])],
        columns=["env_id", "algo", "train_backend", "train_seed", "step", "return"])


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


def headline(table: pd.DataFrame) -> tuple[str, str]:
    """The (trained on, evaluated on) pair the issue's verdict is about: torch->torch where a
    torch-trained controller exists (learned on the real learner), else analytic->analytic."""
    pairs = set(zip(table["trained_on"], table["evaluated_on"], strict=True))
    return ("torch", "torch") if ("torch", "torch") in pairs else ("analytic", "analytic")


def learned_findings(table: pd.DataFrame, transfer: pd.DataFrame) -> list[str]:
    """Per row: the verdict against the similarity rule and the best retention rule; per id
    the transfer gap; then the overall verdict (issue 18: beats the similarity rule
    significantly on at least two hard ids)."""
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
        lines.append(f"- {r.benchmark}, trained on {r.trained_on}, evaluated on "
                     f"{r.evaluated_on}: {r.algo} ({r.train_seeds} training x {r.eval_seeds} "
                     f"evaluation seeds) scores {_ci(r.normalized, r.ci_low, r.ci_high)}; it "
                     + "; it ".join(verdicts) + ".")
    for r in transfer.itertuples(index=False):
        lines.append(f"- {r.benchmark}, {r.algo}, evaluated on {r.evaluated_on}: torch-trained "
                     "minus "
                     f"analytic-trained {_ci(r.gap, r.gap_low, r.gap_high, '+.2f')} "
                     f"({r.pairs} pairs).")
    for (a, t, e), g in table.groupby(["algo", "trained_on", "evaluated_on"], sort=False):
        wins = g.loc[g["vs_similarity_low"] > 0, "benchmark"].tolist()
        lines.append(f"- {a}, trained on {t}, evaluated on {e}: beats the similarity rule "
                     f"significantly on {len(wins)} of {len(g)} hard ids"
                     + (f" ({', '.join(wins)})" if wins else "") + ".")
    algos = [a for a in ALGOS if a in set(table["algo"])]
    lines += ["", *(overall_verdict(table, a) for a in algos)]
    return lines


def overall_verdict(table: pd.DataFrame, algo: str = ALGO) -> str:
    """The issue's verdict in one sentence, on ``algo``'s :func:`headline` rows (the issue's is
    :data:`~nsr_gym.studies.hard_track.ALGO`'s)."""
    table = table[table["algo"] == algo]
    t, e = headline(table)
    g = table[(table["trained_on"] == t) & (table["evaluated_on"] == e)]
    wins = int((g["vs_similarity_low"] > 0).sum())
    met = "met" if wins >= 2 else "NOT met"
    return (f"**Verdict: the {algo} controller trained and evaluated on the {t} backend beats "
            f"the similarity rule significantly (95% CI above 0) on {wins} of {len(g)} hard "
            f"ids; the issue's goal (at least 2) is {met}.**")


def _fmt_headroom(table: pd.DataFrame) -> pd.DataFrame:
    t = table.drop(columns=["ci_low", "ci_high"]).copy()
    t["normalized"] = [_ci(v, lo, hi) for v, lo, hi in
                       zip(table["normalized"], table["ci_low"], table["ci_high"], strict=True)]
    return t


def _fmt_learned(table: pd.DataFrame) -> pd.DataFrame:
    t = table[["benchmark", "algo", "trained_on", "evaluated_on", "train_seeds", "eval_seeds",
               "return"]].copy()
    t["normalized"] = [_ci(v, lo, hi) for v, lo, hi in
                       zip(table["normalized"], table["ci_low"], table["ci_high"], strict=True)]
    for label in ("vs_similarity", "vs_best_retention"):
        t[label] = [_ci(v, lo, hi, "+.2f") for v, lo, hi in zip(
            table[label], table[f"{label}_low"], table[f"{label}_high"], strict=True)]
    t["best_retention_rule"] = table["best_retention_rule"]
    t["verdict"] = table["verdict"]
    return t


def _fmt_transfer(table: pd.DataFrame) -> pd.DataFrame:
    t = table[["benchmark", "algo", "evaluated_on", "train_seeds", "pairs", "torch_trained",
               "analytic_trained"]].copy()
    t["gap"] = [_ci(v, lo, hi, "+.2f") for v, lo, hi in
                zip(table["gap"], table["gap_low"], table["gap_high"], strict=True)]
    return t


def plot_curves(evals: pd.DataFrame, headroom: pd.DataFrame, path: Path,
                footer: str) -> None:
    """Evaluation return against env steps, one panel per (algorithm and training backend, hard
    id): the
    mean over training seeds of the ``EvalCallback`` returns, a band of its 95% bootstrap CI
    over training seeds, and, on the training backend, the means of the similarity rule, the
    best retention rule and the clairvoyant on the evaluation seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(dict.fromkeys(evals["env_id"]))
    kinds = [(a, b) for a in ALGOS for b in BACKENDS
             if ((evals["algo"] == a) & (evals["train_backend"] == b)).any()]
    fig, axes = plt.subplots(len(kinds), len(ids), figsize=(5.0 * len(ids), 3.6 * len(kinds)),
                             squeeze=False)
    for row, (algo, backend) in zip(axes, kinds, strict=True):
        for ax, eid in zip(row, ids, strict=True):
            sel = evals[(evals["env_id"] == eid) & (evals["train_backend"] == backend)
                        & (evals["algo"] == algo)]
            c = sel.pivot_table(index="step", columns="train_seed", values="return")
            stats = np.array([mean_ci(v) for v in c.to_numpy()]).reshape(-1, 3)
            ax.plot(c.index, stats[:, 0], color="C0", marker=".",
                    label=f"{algo} (mean of {c.shape[1]} seeds)")
            ax.fill_between(c.index, stats[:, 1], stats[:, 2], color="C0", alpha=0.25,
                            label="95% CI over seeds")
            ref = headroom[(headroom["backend"] == backend)
                           & (headroom["benchmark"] == _name(eid))].set_index("agent")["return"]
            best = ref.loc[list(RETENTION_RULES)].idxmax()
            for agent, color, ls in (("clairvoyant", "k", ":"), ("similarity", "C3", "--"),
                                     (best, "C2", "-.")):
                ax.axhline(ref[agent], color=color, ls=ls, lw=1.2, label=f"{agent} (eval seeds)")
            ax.set_title(f"{_name(eid)}\n{algo}, trained on {backend}", fontsize=9)
            ax.set(xlabel="env steps",
                   ylabel=f"evaluation return ({backend})")
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
                "On a task-free id (`task_free=True`: no env retention) every rule runs with "
                "`retention=\"agent\"`: `similarity` is then `lru-retain` (the similarity rule "
                "writing the subspace it leaves at each shift it detects, by the default LRU "
                "eviction) and the memoryless rules write nothing. "
                "planned_exactly: "
                "episodes the clairvoyant's program finished (else its Belady heuristic, a lower "
                "bound of the optimum); on torch it plans on `AnalyticConfig()`'s model, an "
                "approximation.", "", "## Headroom", "", markdown_table(_fmt_headroom(headroom)),
                "", *headroom_findings(headroom), ""]
    if len(learned):
        learned = _with_algo(learned)
        table = learned_table(runs, learned)
        transfer = transfer_table(learned)
        curves, evals = curve_table(trained), eval_curve_table(trained)
        write_csv(out / "learned.csv", learned)
        write_csv(out / "learned_summary.csv", table)
        write_csv(out / "transfer.csv", transfer)
        write_csv(out / "training_curves.csv", curves)
        write_csv(out / "eval_curves.csv", evals)
        tr = meta["units"]["train"]
        footer = (f"{meta['command']} | eval seeds {meta['seeds']} | training seeds "
                  f"{tr['seeds']} | git {meta['git_revision'][:12]}")
        if len(evals):
            plot_curves(evals, headroom, out / "training_curves.png", footer)
        algos = " and ".join(f"`{a}`" for a in tr["algos"])
        sections += ["## Learned controllers", "",
                     f"{algos} trained on the {' and the '.join(tr['backends'])} backend of "
                     f"each id as registered, {tr['steps']:,} steps per training seed, "
                     f"{len(tr['seeds'])} training seeds, through the batched vector env "
                     f"({tr['n_envs']} envs; `nsr_gym.agents.train`, default "
                     "hyperparameters); the final policy evaluated deterministically on the "
                     "evaluation seeds, which no training run reset to, on both backends "
                     "(trained_on != evaluated_on: transfer). normalized and vs_*: over "
                     "(training seed, evaluation seed) pairs, each policy's return minus the "
                     "rule's on the same stream, mean with a 95% bootstrap CI over the pairs. "
                     "best_retention_rule: the best of "
                     f"{', '.join(RETENTION_RULES)} by mean return on the evaluation backend. "
                     f"Training curves (`training_curves.png`): the {tr['n_evals']} "
                     "`EvalCallback` evaluations per run (one episode on the training backend, "
                     "eval env seed `train_seed + 10000`), mean over training seeds with a 95% "
                     "CI band.", "", markdown_table(_fmt_learned(table)), ""]
        if len(transfer):
            sections += ["### Transfer gap", "",
                         "torch-trained minus analytic-trained return, paired by (training "
                         "seed, evaluation seed), 95% bootstrap CI over the pairs.", "",
                         markdown_table(_fmt_transfer(transfer)), ""]
        sections += ["### Verdicts", "", *learned_findings(table, transfer), ""]
    write_json(out / "manifest.json", meta)
    md = "\n".join(sections)
    atomic_write_text(out / "hard_track.md", md)
    return md
