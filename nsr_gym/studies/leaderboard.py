"""What ``nsr-gym leaderboard`` computes: one table over every benchmark run of ``nsr-gym run``.

Reads each ``results/<benchmark>/[<backend>/]runs.csv`` (with its ``manifest.json``,
``leaderboard.csv`` for the agent classes, ``phases.csv``, and the per-step unit logs under
``.units/`` where they are still on disk) and writes

* ``results/leaderboard.csv`` / ``.md``: per benchmark and agent, the return's IQM with a 95%
  bootstrap CI over seeds, the normalized score's IQM and CI, ACC (final), online accuracy, BWT,
  forgetting, recovery time and MB per task; then per agent the normalized score over all
  benchmarks with a 95% *stratified* bootstrap CI (seeds resampled within each benchmark, as
  rliable does; the statistics are :mod:`nsr_gym.stats`'s);
* ``results/leaderboard_scores.csv``: the raw per-seed matrix (benchmark, seed) x agent of
  returns and normalized scores, from which every aggregate can be recomputed;
* ``results/leaderboard_cl_metrics.csv``: per benchmark and agent, the *standard* family of
  :mod:`nsr_gym.cl_metrics` (final average accuracy, average incremental accuracy, BWT,
  forgetting, FWT from the accuracy matrix ``R[j, i]``), for the results whose
  ``cl_metrics.csv`` ``nsr-gym run`` wrote (the per-seed matrices stay in each result's
  ``accuracy_matrix.csv``);
* ``results/leaderboard_plots/``: the figures of :mod:`nsr_gym.studies.leaderboard_plots`.

Two metric families share names, so the tables keep them apart: ``bwt`` / ``forgetting``
(``revisit_bwt`` / ``revisit_forgetting`` in ``leaderboard.md``) are :mod:`nsr_gym.metrics`'s,
measured when a task returns; ``std_bwt`` / ``std_forgetting`` are the standard ones
(Lopez-Paz and Ranzato; Chaudhry et al.) from the accuracy matrix.

Normalized score, per benchmark and seed: ``(R - R_mem) / (R_oracle - R_mem)``, where ``R_mem``
is the return of the best memoryless agent (class M0 or M1; best by mean return on that
benchmark) on the same seed: 0 is the best memoryless agent, 1 the oracle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from nsr_gym.stats import MEMORYLESS, normalized_scores, stratified_bootstrap_ci

#: Columns of a benchmark's table in ``leaderboard.md``.
SHORT_COLUMNS = ["agent", "class", "seeds", "return_iqm", "return_ci_low", "return_ci_high",
                 "normalized_iqm", "normalized_ci_low", "normalized_ci_high", "acc", "acc_online",
                 "bwt", "forgetting", "recovery", "mb_per_task"]
#: How ``leaderboard.md`` names the revisit family's columns (the CSV keeps ``bwt``, ...).
REVISIT_NAMES = {"bwt": "revisit_bwt", "forgetting": "revisit_forgetting"}


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
        if (isinstance(meta.get("benchmark"), str) and isinstance(meta.get("env_id"), str)
                and isinstance(meta.get("env_kwargs"), dict)
                and {"agent", "seed", "episode_return"} <= columns):
            found.append(folder)
    return found


def load_result(folder: Path) -> dict[str, Any]:
    """One benchmark run: manifest, runs, phases, agent classes and (if on disk) step logs."""
    from nsr_gym.studies.benchmark import units_dir

    meta = json.loads((folder / "manifest.json").read_text())
    runs = pd.read_csv(folder / "runs.csv")
    classes: dict[str, str] = {}
    if (folder / "leaderboard.csv").is_file():
        board = pd.read_csv(folder / "leaderboard.csv")
        classes = dict(zip(board["agent"], board["class"].fillna(""), strict=True))
    phases = pd.read_csv(folder / "phases.csv") if (folder / "phases.csv").is_file() else None
    cl = pd.read_csv(folder / "cl_metrics.csv") if (folder / "cl_metrics.csv").is_file() else None
    matrix = folder / "accuracy_matrix.csv"
    units = units_dir(folder, meta["env_id"], meta["env_kwargs"])
    logs = [pd.read_csv(p) for p in sorted(units.glob("*__seed*.csv"))] if units.is_dir() else []
    steps = pd.concat(logs, ignore_index=True) if logs else None
    if steps is not None:
        steps = steps.merge(runs[["agent", "seed"]], on=["agent", "seed"])  # this run's units only
    return {"folder": folder, "meta": meta, "benchmark": meta["benchmark"],
            "backend": meta["env_kwargs"].get("backend", "torch"), "runs": runs,
            "classes": classes, "phases": phases, "steps": steps, "cl": cl,
            "matrix": pd.read_csv(matrix) if matrix.is_file() else None}


# ----------------------------------------------------------------------------- tables


def benchmark_table(res: dict[str, Any]) -> pd.DataFrame:
    """One row per agent of one benchmark result."""
    runs = res["runs"].copy()
    runs["normalized"] = normalized_scores(runs, res["classes"])
    rows = []
    for agent, g in runs.groupby("agent", sort=False):
        ret = stratified_bootstrap_ci([g["episode_return"].to_numpy()])
        norm = stratified_bootstrap_ci([g["normalized"].to_numpy()])
        rows.append({
            "benchmark": res["benchmark"], "backend": res["backend"], "agent": agent,
            "class": res["classes"].get(agent, ""), "seeds": len(g),
            "return_iqm": ret[0], "return_ci_low": ret[1], "return_ci_high": ret[2],
            "normalized_iqm": norm[0], "normalized_ci_low": norm[1],
            "normalized_ci_high": norm[2], "acc": g["acc_final"].mean(),
            "acc_online": g["acc_online"].mean(), "bwt": g["bwt"].mean(),
            "forgetting": g["forgetting"].mean(), "recovery": g["recovery"].mean(),
            "mb_per_task": g["mb_per_task"].mean()})
    return pd.DataFrame(rows).sort_values("return_iqm", ascending=False, ignore_index=True)


def standard_table(res: dict[str, Any]) -> pd.DataFrame | None:
    """The standard family per agent of one result (:func:`nsr_gym.cl_metrics.cl_table`), or
    ``None`` for a result written without the accuracy matrix."""
    from nsr_gym.cl_metrics import cl_table

    if res["cl"] is None:
        return None
    table = cl_table(res["cl"])
    table.insert(0, "backend", res["backend"])
    table.insert(0, "benchmark", res["benchmark"])
    return table


def score_matrix(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table benchmark, backend, seed, agent, return, normalized: the raw per-seed scores."""
    frames = []
    for res in results:
        runs = res["runs"]
        frames.append(pd.DataFrame({
            "benchmark": res["benchmark"], "backend": res["backend"], "seed": runs["seed"],
            "agent": runs["agent"], "return": runs["episode_return"],
            "normalized": normalized_scores(runs, res["classes"])}))
    return pd.concat(frames, ignore_index=True)


def aggregate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per agent and backend: normalized-score IQM over all benchmarks, stratified bootstrap CI."""
    rows = []
    for (backend, agent), g in scores.groupby(["backend", "agent"], sort=False):
        strata = [s["normalized"].to_numpy() for _, s in g.groupby("benchmark")]
        point, lo, hi = stratified_bootstrap_ci(strata)
        rows.append({"backend": backend, "agent": agent, "benchmarks": g["benchmark"].nunique(),
                     "runs": len(g), "normalized_iqm": point, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows).sort_values(["backend", "normalized_iqm"], ascending=[True, False],
                                          ignore_index=True)


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


def leaderboard_markdown(results: list[dict[str, Any]], tables: list[pd.DataFrame],
                         agg: pd.DataFrame, provenance: str, figures: list[str]) -> str:
    """``leaderboard.md``: one section per benchmark, the aggregate, the list of figures."""
    from nsr_gym.results import markdown_table

    lines = [
        f"# nsr-gym leaderboard\n\n{provenance}\n",
        "Return: IQM over seeds (mean of the middle 50%) with a 95% bootstrap CI. Normalized: "
        "per seed, (R - R_best_memoryless) / (R_oracle - R_best_memoryless), so 0 is the best "
        "memoryless agent (class M0/M1) and 1 the oracle. ACC: mean accuracy at the end of "
        "each task's last visit; revisit BWT and revisit forgetting at each task's return; "
        "recovery in steps (see nsr_gym.metrics); MB per task = bank bytes / entries / 10^6. "
        "Raw per-seed scores: `leaderboard_scores.csv`. The standard family (std_acc, std_aia, "
        "std_bwt, std_forgetting, std_fwt: Lopez-Paz and Ranzato's BWT and FWT, Chaudhry et "
        "al.'s forgetting, from the accuracy matrix R[j, i]; nsr_gym.cl_metrics) follows each "
        "benchmark's table where its run recorded the matrix: `leaderboard_cl_metrics.csv`.\n",
    ]
    for res, table in zip(results, tables, strict=True):
        src = res["meta"]
        backend = "" if res["backend"] == "torch" else f" ({res['backend']} backend)"
        lines += [f"## {res['benchmark']}{backend}\n",
                  f"From `{src['command']}` (git {src['git_revision'][:12]}, "
                  f"{src['created_utc']}), `{res['folder']}`.\n",
                  markdown_table(table[SHORT_COLUMNS].rename(columns=REVISIT_NAMES)), ""]
        check = bwt_check(table)
        if check:
            lines += [check, ""]
        lines += _standard_lines(res)
    lines += ["## All benchmarks: normalized score\n",
              "IQM over every (benchmark, seed) run, 95% stratified bootstrap CI (seeds resampled "
              "within each benchmark).\n", markdown_table(agg), ""]
    if figures:
        lines += ["## Plots\n"] + [f"- `{f}`" for f in figures] + [""]
    return "\n".join(lines)


def _standard_lines(res: dict[str, Any]) -> list[str]:
    """The standard-family table of one result in ``leaderboard.md``, or a note without it."""
    from nsr_gym.results import markdown_table

    table = standard_table(res)
    if table is None:
        return ["Standard metrics (std_*): not recorded in this result (no cl_metrics.csv; "
                "`nsr-gym run` writes it with the accuracy matrix).", ""]
    return ["Standard metrics from the accuracy matrix R[j, i] (serve: which subspace R "
            "evaluates each task with; nsr_gym.cl_metrics):\n",
            markdown_table(table.drop(columns=["benchmark", "backend"])), ""]


# ----------------------------------------------------------------------------- the command


def write_leaderboard(root: str | Path, plots: bool = True,
                      command: str | None = None) -> tuple[str, int]:
    """Aggregate every ``nsr-gym run`` result under ``root`` into ``root/leaderboard*``.

    Args:
        root: The results folder.
        plots: Write the figures into ``root/leaderboard_plots/``.
        command: The command line recorded in the manifest (default: this process's).

    Returns:
        ``(the markdown of leaderboard.md, number of figures written)``.

    Raises:
        FileNotFoundError: when ``root`` holds no result of ``nsr-gym run``.
    """
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import command_line, manifest, provenance_line, write_csv, write_json
    from nsr_gym.studies.leaderboard_plots import plot_performance_profiles, plot_result

    root = Path(root)
    t0 = time.perf_counter()
    results = [load_result(f) for f in find_runs(root)]
    if not results:
        raise FileNotFoundError(
            f"no results of `nsr-gym run` under {root}/ (looked for */runs.csv with a "
            "manifest.json); run `nsr-gym run --benchmark NAME` first")
    tables = [benchmark_table(r) for r in results]
    board = pd.concat(tables, ignore_index=True)
    scores = score_matrix(results)
    agg = aggregate_table(scores)
    seeds = sorted(set(scores["seed"].astype(int)))
    meta = manifest(command or command_line(), seeds, 0.0, sources=[
        {"folder": str(r["folder"]), "command": r["meta"]["command"],
         "git_revision": r["meta"]["git_revision"], "created_utc": r["meta"]["created_utc"]}
        for r in results])
    caption = f"`{meta['command']}` (git {meta['git_revision'][:12]}, {meta['created_utc']})"

    out = root / "leaderboard_plots"
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if plots:
        figures = [p for r in results for p in plot_result(r, out, caption)]
        figures += plot_performance_profiles(scores, out, caption)
    meta["wall_time_s"] = round(time.perf_counter() - t0, 2)

    write_csv(root / "leaderboard.csv", board)
    write_csv(root / "leaderboard_scores.csv", scores)
    write_csv(root / "leaderboard_aggregate.csv", agg)
    standard = [t for t in map(standard_table, results) if t is not None]
    if standard:
        write_csv(root / "leaderboard_cl_metrics.csv", pd.concat(standard, ignore_index=True))
    md = leaderboard_markdown(results, tables, agg, provenance_line(meta),
                              [str(p.relative_to(root)) for p in figures])
    atomic_write_text(root / "leaderboard.md", md)
    write_json(root / "leaderboard_manifest.json", meta)
    return md, len(figures)
