"""``nsr-gym leaderboard``: one table over every benchmark run written by ``nsr-gym run``.

Reads each ``results/<benchmark>/[<backend>/]runs.csv`` (with its ``manifest.json``,
``leaderboard.csv`` for the agent classes, ``phases.csv``, and the per-step unit logs under
``.units/`` where they are still on disk) and writes

* ``results/leaderboard.csv`` / ``.md``: per benchmark and agent, the return's IQM with a 95%
  bootstrap CI over seeds, the normalized score's IQM and CI, ACC (final), online accuracy, BWT,
  forgetting, recovery time and MB per task; then per agent the normalized score over all
  benchmarks with a 95% *stratified* bootstrap CI (seeds resampled within each benchmark, as
  rliable does);
* ``results/leaderboard_scores.csv``: the raw per-seed matrix (benchmark, seed) x agent of
  returns and normalized scores, from which every aggregate can be recomputed;
* ``results/leaderboard_plots/``: accuracy-matrix heat maps (from ``phases.csv``), accuracy
  around task switches, and bank memory against tasks seen (from the step logs; the curves are
  also written as CSV next to the figures).

Normalized score, per benchmark and seed: ``(R - R_mem) / (R_oracle - R_mem)``, where ``R_mem``
is the return of the best memoryless agent (class M0 or M1; best by mean return on that
benchmark) on the same seed: 0 is the best memoryless agent, 1 the oracle.
"""

from __future__ import annotations

import warnings

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nsr_gym.cli._common import config_hash, markdown_table

MEMORYLESS = ("M0", "M1")
#: Agents shown in the per-agent figures (when present), in this order.
PLOT_AGENTS = ("similarity", "oracle", "keep-current", "always-fresh", "random-slot")
N_BOOT = 2000


# ----------------------------------------------------------------------------- statistics


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    from scipy.stats import trim_mean

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(trim_mean(values, 0.25)) if values.size else float("nan")


def stratified_bootstrap_ci(
    strata: list[np.ndarray], stat=iqm, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``stat`` of the pooled values and its percentile CI, resampling *within* each stratum.

    Args:
        strata: One array of per-seed values per stratum (benchmark); one stratum is the plain
            bootstrap over seeds.
    """
    strata = [np.asarray(s, dtype=float)[np.isfinite(s)] for s in strata]
    strata = [s for s in strata if s.size]
    if not strata:
        return float("nan"), float("nan"), float("nan")
    point = stat(np.concatenate(strata))
    rng = np.random.default_rng(seed)
    boots = np.array(
        [
            stat(np.concatenate([s[rng.integers(0, s.size, s.size)] for s in strata]))
            for _ in range(n_boot)
        ]
    )
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def normalized_scores(runs: pd.DataFrame, classes: dict[str, str]) -> pd.Series:
    """Per-row normalized score of one benchmark's ``runs`` (0 = best memoryless, 1 = oracle)."""
    mem = [a for a in runs["agent"].unique() if classes.get(a) in MEMORYLESS]
    if "oracle" not in set(runs["agent"]) or not mem:
        return pd.Series(np.nan, index=runs.index)
    by_agent = runs.groupby("agent")["episode_return"].mean()
    best_mem = by_agent[mem].idxmax()
    per_seed = runs.pivot_table(index="seed", columns="agent", values="episode_return")
    low, high = runs["seed"].map(per_seed[best_mem]), runs["seed"].map(per_seed["oracle"])
    span = (high - low).where((high - low).abs() > 1e-9)
    return (runs["episode_return"] - low) / span


# ----------------------------------------------------------------------------- reading results


def find_runs(root: Path) -> list[Path]:
    """Result folders of ``nsr-gym run`` under ``root`` (``quick`` runs left out).

    A folder counts when its ``manifest.json`` names one benchmark, env id and env kwargs (what
    ``nsr-gym run`` writes) and its ``runs.csv`` has one row per agent and seed; the outputs of
    other commands (studies, fits) are skipped.
    """
    found = []
    for runs in sorted(root.glob("*/runs.csv")) + sorted(root.glob("*/*/runs.csv")):
        folder = runs.parent
        if "quick" in folder.relative_to(root).parts or not (folder / "manifest.json").is_file():
            continue
        try:
            meta = json.loads((folder / "manifest.json").read_text())
            columns = set(pd.read_csv(runs, nrows=0).columns)
        except (OSError, ValueError):
            continue
        if (
            isinstance(meta.get("benchmark"), str)
            and isinstance(meta.get("env_id"), str)
            and isinstance(meta.get("env_kwargs"), dict)
            and {"agent", "seed", "episode_return"} <= columns
        ):
            found.append(folder)
    return found


def load_result(folder: Path) -> dict:
    """One benchmark run: manifest, runs, phases, agent classes and (if on disk) step logs."""
    meta = json.loads((folder / "manifest.json").read_text())
    runs = pd.read_csv(folder / "runs.csv")
    classes: dict[str, str] = {}
    if (folder / "leaderboard.csv").is_file():
        board = pd.read_csv(folder / "leaderboard.csv")
        classes = dict(zip(board["agent"], board["class"].fillna(""), strict=True))
    phases = pd.read_csv(folder / "phases.csv") if (folder / "phases.csv").is_file() else None
    units = folder / ".units" / config_hash({"env": meta["env_id"], **meta["env_kwargs"]})
    logs = [pd.read_csv(p) for p in sorted(units.glob("*__seed*.csv"))] if units.is_dir() else []
    steps = pd.concat(logs, ignore_index=True) if logs else None
    if steps is not None:
        steps = steps.merge(runs[["agent", "seed"]], on=["agent", "seed"])  # this run's units only
    backend = meta["env_kwargs"].get("backend", "torch")
    return {
        "folder": folder,
        "meta": meta,
        "benchmark": meta["benchmark"],
        "backend": backend,
        "runs": runs,
        "classes": classes,
        "phases": phases,
        "steps": steps,
    }


# ----------------------------------------------------------------------------- tables


def benchmark_table(res: dict) -> pd.DataFrame:
    """One row per agent of one benchmark result."""
    runs = res["runs"].copy()
    runs["normalized"] = normalized_scores(runs, res["classes"])
    rows = []
    for agent, g in runs.groupby("agent", sort=False):
        ret = stratified_bootstrap_ci([g["episode_return"].to_numpy()])
        norm = stratified_bootstrap_ci([g["normalized"].to_numpy()])
        rows.append(
            {
                "benchmark": res["benchmark"],
                "backend": res["backend"],
                "agent": agent,
                "class": res["classes"].get(agent, ""),
                "seeds": len(g),
                "return_iqm": ret[0],
                "return_ci_low": ret[1],
                "return_ci_high": ret[2],
                "normalized_iqm": norm[0],
                "normalized_ci_low": norm[1],
                "normalized_ci_high": norm[2],
                "acc": g["acc_final"].mean(),
                "acc_online": g["acc_online"].mean(),
                "bwt": g["bwt"].mean(),
                "forgetting": g["forgetting"].mean(),
                "recovery": g["recovery"].mean(),
                "mb_per_task": g["mb_per_task"].mean(),
            }
        )
    return pd.DataFrame(rows).sort_values("return_iqm", ascending=False, ignore_index=True)


def score_matrix(results: list[dict]) -> pd.DataFrame:
    """Long table benchmark, backend, seed, agent, return, normalized: the raw per-seed scores."""
    frames = []
    for res in results:
        runs = res["runs"]
        frames.append(
            pd.DataFrame(
                {
                    "benchmark": res["benchmark"],
                    "backend": res["backend"],
                    "seed": runs["seed"],
                    "agent": runs["agent"],
                    "return": runs["episode_return"],
                    "normalized": normalized_scores(runs, res["classes"]),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def aggregate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per agent and backend: normalized-score IQM over all benchmarks, stratified bootstrap CI."""
    rows = []
    for (backend, agent), g in scores.groupby(["backend", "agent"], sort=False):
        strata = [s["normalized"].to_numpy() for _, s in g.groupby("benchmark")]
        point, lo, hi = stratified_bootstrap_ci(strata)
        rows.append(
            {
                "backend": backend,
                "agent": agent,
                "benchmarks": g["benchmark"].nunique(),
                "runs": len(g),
                "normalized_iqm": point,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(rows).sort_values(
        ["backend", "normalized_iqm"], ascending=[True, False], ignore_index=True
    )


def bwt_check(table: pd.DataFrame, agent: str = "similarity") -> str:
    """How much closer to zero ``agent``'s BWT is than the memoryless agents' (the issue's 9x)."""
    mine = table[table["agent"] == agent]
    mem = table[table["class"].isin(MEMORYLESS)]
    if mine.empty or mem.empty:
        return ""
    own = abs(float(mine["bwt"].iloc[0]))
    closest = mem.loc[mem["bwt"].abs().idxmin()]
    ratio = abs(closest["bwt"]) / own if own > 0 else float("inf")
    best_other = table[(table["class"] != "oracle") & (table["agent"] != agent)]["acc"].max()
    return (
        f"{agent}: |BWT| = {own:.4f}; the memoryless agent closest to zero, {closest['agent']}, "
        f"has |BWT| = {abs(closest['bwt']):.4f}: **{ratio:.1f}x** closer to zero. ACC "
        f"{float(mine['acc'].iloc[0]):.3f} vs the best other non-oracle agent's {best_other:.3f}."
    )


# ----------------------------------------------------------------------------- curves and plots


def switch_curves(steps: pd.DataFrame, before: int = 5) -> pd.DataFrame:
    """Mean accuracy on the *returning* task by step offset around each revisit's first step.

    Offsets ``-before .. -1`` are the last steps of that task's previous visit; ``0 .. L - 1`` the
    revisit (offset 0 is the zero-shot accuracy, after the allocation and before any update).
    """
    rows = []
    for (agent, _seed), g in steps.groupby(["agent", "seed"], sort=False):
        g = g.sort_values("t")
        for (task, visit), v in g[g["visit"] > 1].groupby(["task_id", "visit"]):
            prev = g[(g["task_id"] == task) & (g["visit"] == visit - 1)]["accuracy"].to_numpy()
            cur = v.sort_values("step_in_phase")
            curve = np.concatenate(
                [prev[-before:], [cur["zero_shot_accuracy"].iloc[0]], cur["accuracy"].to_numpy()]
            )
            offsets = np.arange(-min(before, len(prev)), len(cur) + 1)
            rows += [
                {"agent": agent, "offset": int(o), "accuracy": float(a)}
                for o, a in zip(offsets, curve, strict=True)
            ]
    out = pd.DataFrame(rows)
    return out.groupby(["agent", "offset"], as_index=False)["accuracy"].mean() if len(out) else out


def memory_curves(steps: pd.DataFrame) -> pd.DataFrame:
    """Mean bank MB at each phase end against the number of distinct tasks seen so far."""
    rows = []
    for (agent, _seed), g in steps.groupby(["agent", "seed"], sort=False):
        g = g.sort_values("t")
        seen = (~g["task_id"].duplicated()).cumsum()
        ends = g.groupby("phase").tail(1).index
        rows += [
            {
                "agent": agent,
                "tasks_seen": int(seen[i]),
                "phase": int(g.at[i, "phase"]),
                "bank_mb": float(g.at[i, "bank_bytes"]) / 1e6,
            }
            for i in ends
        ]
    out = pd.DataFrame(rows)
    return out.groupby(["agent", "phase"], as_index=False).mean() if len(out) else out


def _agents_to_plot(agents) -> list[str]:
    present = list(dict.fromkeys(agents))
    return [a for a in PLOT_AGENTS if a in present] or present[:5]


def plot_result(res: dict, out: Path, caption: str) -> list[Path]:
    """The three figures of one benchmark result; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nsr_gym.metrics import accuracy_matrix

    name = f"{res['benchmark']}" + ("" if res["backend"] == "torch" else f"-{res['backend']}")
    written = []
    phases = res["phases"]
    if phases is not None:
        agents = _agents_to_plot(phases["agent"])
        fig, axes = plt.subplots(
            2,
            len(agents),
            figsize=(2.8 * len(agents) + 1, 6),
            squeeze=False,
            constrained_layout=True,
        )
        for j, agent in enumerate(agents):
            p = phases[phases["agent"] == agent]
            for i, (value, label) in enumerate(
                (("acc_end", "end of visit"), ("zero_shot", "arrival, no update"))
            ):
                mats = [accuracy_matrix(g, value) for _, g in p.groupby("seed")]
                # Recurring schedules give each seed its own number of visits: pad with NaN.
                shape = tuple(max(m.shape[k] for m in mats) for k in (0, 1))
                padded = np.full((len(mats), *shape), np.nan)
                for k, m in enumerate(mats):
                    padded[k, : m.shape[0], : m.shape[1]] = m
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mat = np.nanmean(padded, axis=0)
                ax = axes[i, j]
                im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
                ax.set_title(f"{agent}: {label}", fontsize=9)
                ax.set_xlabel("task")
                ax.set_ylabel("visit")
                ax.set_yticks(range(mat.shape[0]), [str(v + 1) for v in range(mat.shape[0])])
        fig.colorbar(im, ax=axes, shrink=0.7, label="accuracy (mean over seeds)")
        fig.suptitle(f"{name}: accuracy matrix A[visit, task]\n{caption}", fontsize=9)
        written.append(out / f"{name}_accuracy_matrix.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    steps = res["steps"]
    if steps is not None:
        curves = switch_curves(steps)
        mem = memory_curves(steps)
        from nsr_gym.results import write_csv

        write_csv(out / f"{name}_switch_curves.csv", curves)
        write_csv(out / f"{name}_memory_curves.csv", mem)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
        for agent in _agents_to_plot(curves["agent"]):
            c = curves[curves["agent"] == agent]
            a1.plot(c["offset"], c["accuracy"], marker=".", label=agent)
            m = mem[mem["agent"] == agent]
            a2.plot(m["phase"] + 1, m["bank_mb"], marker=".", label=agent)
        a1.axvline(-0.5, color="grey", lw=0.8, ls="--")
        a1.set(
            xlabel="steps from the task's return (negative: end of its previous visit)",
            ylabel="accuracy on the returning task",
            title="accuracy around task switches",
        )
        a2.set(xlabel="phases seen", ylabel="bank MB (10^6 bytes)", title="bank memory")
        a2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        mean_seen = mem.groupby("phase")["tasks_seen"].mean()
        top = a2.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
        top.set_xticks(mean_seen.index + 1, [f"{s:.0f}" for s in mean_seen])
        top.set_xlabel("distinct tasks seen", fontsize=8)
        a1.legend(fontsize=8)
        fig.suptitle(f"{name}\n{caption}", fontsize=9)
        written.append(out / f"{name}_switches_memory.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- command


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from nsr_gym.results import (
        atomic_write_text,
        command_line,
        manifest,
        provenance_line,
        write_csv,
    )

    root = Path(args.results)
    t0 = time.perf_counter()
    results = [load_result(f) for f in find_runs(root)]
    if not results:
        print(
            f"error: no results of `nsr-gym run` under {root}/ (looked for */runs.csv with a "
            "manifest.json); run `nsr-gym run --benchmark NAME` first",
            file=sys.stderr,
        )
        return 2
    tables = [benchmark_table(r) for r in results]
    board = pd.concat(tables, ignore_index=True)
    scores = score_matrix(results)
    agg = aggregate_table(scores)
    seeds = sorted(set(scores["seed"].astype(int)))
    meta = manifest(
        command_line(),
        seeds,
        0.0,
        sources=[
            {
                "folder": str(r["folder"]),
                "command": r["meta"]["command"],
                "git_revision": r["meta"]["git_revision"],
                "created_utc": r["meta"]["created_utc"],
            }
            for r in results
        ],
    )
    caption = f"`{meta['command']}` (git {meta['git_revision'][:12]}, {meta['created_utc']})"

    plots = root / "leaderboard_plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures = [] if args.no_plots else [p for r in results for p in plot_result(r, plots, caption)]
    meta["wall_time_s"] = round(time.perf_counter() - t0, 2)

    write_csv(root / "leaderboard.csv", board)
    write_csv(root / "leaderboard_scores.csv", scores)
    write_csv(root / "leaderboard_aggregate.csv", agg)
    lines = [
        f"# nsr-gym leaderboard\n\n{provenance_line(meta)}\n",
        "Return: IQM over seeds (mean of the middle 50%) with a 95% bootstrap CI. Normalized: "
        "per seed, (R - R_best_memoryless) / (R_oracle - R_best_memoryless), so 0 is the best "
        "memoryless agent (class M0/M1) and 1 the oracle. ACC: mean accuracy at the end of "
        "each task's last visit; BWT and forgetting at each task's return; recovery in steps "
        "(see nsr_gym.metrics); MB per task = bank bytes / entries / 10^6. Raw per-seed "
        "scores: `leaderboard_scores.csv`.\n",
    ]
    short = [
        "agent",
        "class",
        "seeds",
        "return_iqm",
        "return_ci_low",
        "return_ci_high",
        "normalized_iqm",
        "normalized_ci_low",
        "normalized_ci_high",
        "acc",
        "acc_online",
        "bwt",
        "forgetting",
        "recovery",
        "mb_per_task",
    ]
    for res, table in zip(results, tables, strict=True):
        src = res["meta"]
        title = res["benchmark"] + (
            "" if res["backend"] == "torch" else f" ({res['backend']} backend)"
        )
        lines += [
            f"## {title}\n",
            f"From `{src['command']}` (git {src['git_revision'][:12]}, "
            f"{src['created_utc']}), `{res['folder']}`.\n",
            markdown_table(table[short]),
            "",
        ]
        check = bwt_check(table)
        if check:
            lines += [check, ""]
    lines += [
        "## All benchmarks: normalized score\n",
        "IQM over every (benchmark, seed) run, 95% stratified bootstrap CI (seeds resampled "
        "within each benchmark).\n",
        markdown_table(agg),
        "",
    ]
    if figures:
        lines += ["## Plots\n"] + [f"- `{p.relative_to(root)}`" for p in figures] + [""]
    atomic_write_text(root / "leaderboard.md", "\n".join(lines))
    from nsr_gym.results import write_json

    write_json(root / "leaderboard_manifest.json", meta)
    print("\n".join(lines))
    print(f"wrote {root}/leaderboard.md, .csv, leaderboard_scores.csv and {len(figures)} figure(s)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard", help="aggregate every results/<benchmark>/ into results/leaderboard.md"
    )
    p.add_argument("--results", default="results", help="folder holding the benchmark results")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_leaderboard)
