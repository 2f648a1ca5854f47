"""What ``nsr-gym leaderboard`` computes: the suite's two tracks over every run of ``nsr-gym run``.

Reads each ``results/<benchmark>/[<backend>/][<variant>/]runs.csv`` (with its ``manifest.json``,
``leaderboard.csv`` for the agent classes, ``phases.csv``, and the per-step unit logs under
``.units/`` where they are still on disk, through the executors' checksummed
:class:`~nsr_gym.executors.FrameStore`), plus the learned controllers' evaluation episodes of
``nsr-gym study hard-track`` (``results/hard_track/``, :func:`load_hard_track_study`), and
writes

* ``results/leaderboard.csv`` / ``.md``: per track, benchmark (and non-default setting) and
  agent, the return's IQM with a 95% bootstrap CI over seeds, the normalized score's IQM and
  CI, ACC (final), online accuracy, BWT, forgetting, recovery time and MB per task; then per
  track and agent the normalized score over the track's benchmarks with a 95% *stratified*
  bootstrap CI (seeds resampled within each benchmark, as rliable does; the statistics are
  :mod:`nsr_gym.stats`'s);
* ``results/leaderboard_scores.csv``: the raw per-seed matrix (track, benchmark, seed) x agent
  of returns and normalized scores, from which every aggregate can be recomputed;
* ``results/leaderboard_aggregate.csv``: the per-track aggregate;
* ``results/leaderboard_cl_metrics.csv``: per benchmark and agent, the *standard* family of
  :mod:`nsr_gym.cl_metrics` (final average accuracy, average incremental accuracy, BWT,
  forgetting, FWT from the accuracy matrix ``R[j, i]``), for the results whose
  ``cl_metrics.csv`` ``nsr-gym run`` wrote (the per-seed matrices stay in each result's
  ``accuracy_matrix.csv``);
* ``results/leaderboard_plots/``: the figures of :mod:`nsr_gym.studies.leaderboard_plots`.

## Two tracks
*Hard*: the benchmarks of :data:`nsr_gym.envs.HARD_TRACK` (memory binds, and the similarity
rule leaves headroom). *Standard*: every other benchmark (the paper's settings).

## Normalized score
Per benchmark result and seed, ``(R - R_mem) / (R_ref - R_mem)``, where ``R_mem`` is the return
of the best memoryless agent (class M0 or M1; best by mean return on that result) on the same
seed, and ``R_ref`` the reference's (:func:`reference_agent`):

* hard track: the ``clairvoyant`` (issue 18's definition); a result without it has no scores;
* standard track: the ``oracle``, except where capacity binds (``capacity < n_tasks``, from the
  manifest's ``env_kwargs`` over the benchmark's registration): there the oracle (the bank's own
  entry for the true task) is no upper bound, and the ``clairvoyant`` is the 1 when the result
  has a clairvoyant row.

So 0 is the best memoryless agent and 1 the reference. The references (classes ``oracle`` and
``clairvoyant``: :data:`REFERENCE_CLASSES`, e.g. ``belady-retain``) read privileged
information (the task's identity, the future schedule); the tables mark them.

Two metric families share names, so the tables keep them apart: ``bwt`` / ``forgetting``
(``revisit_bwt`` / ``revisit_forgetting`` in ``leaderboard.md``) are :mod:`nsr_gym.metrics`'s,
measured when a task returns; ``std_bwt`` / ``std_forgetting`` are the standard ones
(Lopez-Paz and Ranzato; Chaudhry et al.) from the accuracy matrix.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.jsonio import JsonFileError, read_json
from nsr_gym.stats import MEMORYLESS, N_BOOT, normalized_scores, stratified_bootstrap_ci

#: The tracks, in table order.
TRACKS = ("standard", "hard")
#: The reference agents that anchor the normalized score at 1.
ORACLE, CLAIRVOYANT = "oracle", "clairvoyant"
#: Memory classes of privileged reference agents (they read the task identity or the schedule).
REFERENCE_CLASSES = ("oracle", "clairvoyant")
#: The folder (under the results root) of ``nsr-gym study hard-track``.
HARD_TRACK_STUDY = "hard_track"
#: ``source`` of a row: a run of ``nsr-gym run``, or the hard-track study's evaluation.
RUN_SOURCE, STUDY_SOURCE = "run", "hard-track study"
#: Columns of a benchmark's table in ``leaderboard.md``.
SHORT_COLUMNS = ["agent", "class", "seeds", "return_iqm", "return_ci_low", "return_ci_high",
                 "normalized_iqm", "normalized_ci_low", "normalized_ci_high", "acc", "acc_online",
                 "bwt", "forgetting", "recovery", "mb_per_task"]
#: How ``leaderboard.md`` names the revisit family's columns (the CSV keeps ``bwt``, ...).
REVISIT_NAMES = {"bwt": "revisit_bwt", "forgetting": "revisit_forgetting"}
#: runs.csv columns a table averages (``nsr_gym.metrics.summarize``'s), NaN where a source has none.
_METRICS = {"acc": "acc_final", "acc_online": "acc_online", "bwt": "bwt",
            "forgetting": "forgetting", "recovery": "recovery", "mb_per_task": "mb_per_task"}


# ----------------------------------------------------------------------------- tracks and anchors


def track_of(benchmark: str) -> str:
    """``"hard"`` for a benchmark of :data:`nsr_gym.envs.HARD_TRACK`, else ``"standard"``."""
    from nsr_gym.envs import HARD_TRACK

    return "hard" if benchmark in HARD_TRACK else "standard"


def setting_label(env_kwargs: dict[str, Any]) -> str:
    """The non-default settings of a run (its ``gym.make`` keywords but the backend), e.g.
    ``"capacity=3, retention=agent"``; ``""`` for the benchmark as registered."""
    import json

    return ", ".join(f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, dict) else v}"
                     for k, v in sorted(env_kwargs.items()) if k != "backend")


def capacity_binds(meta: dict[str, Any], phases: pd.DataFrame | None = None) -> bool:
    """Whether the bank of a run has fewer slots than the stream has tasks.

    ``capacity`` and ``n_tasks`` come from the manifest's ``env_kwargs`` over the benchmark's
    registration (``nsr_gym.BENCHMARKS``); ``n_tasks`` else from the tasks in ``phases``.
    """
    from nsr_gym.envs import BENCHMARKS, PAPER_BENCHMARKS

    registered = BENCHMARKS.get(meta["benchmark"], PAPER_BENCHMARKS.get(meta["benchmark"], {}))
    kw = {**registered, **meta["env_kwargs"]}
    n_tasks = kw.get("n_tasks")
    if n_tasks is None and phases is not None and "task_id" in phases:
        n_tasks = phases["task_id"].nunique()
    capacity = kw.get("capacity")
    return capacity is not None and n_tasks is not None and int(capacity) < int(n_tasks)


def reference_agent(track: str, binds: bool, agents: set[str]) -> str | None:
    """The agent whose return is the normalized score's 1 (module docstring); None: no score."""
    if track == "hard":
        return CLAIRVOYANT if CLAIRVOYANT in agents else None
    if binds and CLAIRVOYANT in agents:
        return CLAIRVOYANT
    return ORACLE if ORACLE in agents else None


def normalized_against(runs: pd.DataFrame, classes: dict[str, str],
                       reference: str | None) -> pd.Series:
    """Per-row ``(R - R_mem) / (R_ref - R_mem)`` of one result, ``reference`` as the 1.

    :func:`nsr_gym.stats.normalized_scores` (its best-memoryless and tie conventions), which takes
    the agent named ``oracle`` as the 1: the reference goes in under that name, and a bank
    ``oracle`` that is not the reference under another, so that it is scored like any agent.
    """
    if reference is None:
        return pd.Series(np.nan, index=runs.index)
    if reference == ORACLE:
        return normalized_scores(runs, classes)
    other = f"{ORACLE} (bank)"

    def alias(agent: str) -> str:
        return ORACLE if agent == reference else other if agent == ORACLE else agent

    return normalized_scores(runs.assign(agent=runs["agent"].map(alias)),
                             {alias(a): c for a, c in classes.items()})


# ----------------------------------------------------------------------------- reading results


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return read_json(folder / "manifest.json", max_bytes=1 << 20, what="results manifest")
    except JsonFileError:
        return None


def find_runs(root: Path) -> list[Path]:
    """Result folders of ``nsr-gym run`` under ``root`` (``quick`` runs left out).

    A folder counts when its ``manifest.json`` names one benchmark, env id and env kwargs (what
    ``nsr-gym run`` writes) and its ``runs.csv`` has one row per agent and seed; the outputs of
    other commands (studies, fits) are skipped. Depths 1 to 3: ``<benchmark>/``,
    ``<benchmark>/<backend or variant>/``, ``<benchmark>/<backend>/<variant>/``.
    """
    found = []
    for pattern in ("*/runs.csv", "*/*/runs.csv", "*/*/*/runs.csv"):
        for runs in sorted(root.glob(pattern)):
            folder = runs.parent
            if "quick" in folder.relative_to(root).parts:
                continue
            meta = _manifest(folder)
            try:
                columns = set(pd.read_csv(runs, nrows=0).columns)
            except (OSError, ValueError):
                continue
            if (meta is not None and isinstance(meta.get("benchmark"), str)
                    and isinstance(meta.get("env_id"), str)
                    and isinstance(meta.get("env_kwargs"), dict)
                    and {"agent", "seed", "episode_return"} <= columns):
                found.append(folder)
    return found


_TAG = re.compile(r"@[0-9a-f]{12}$")  # a trained controller's weights tag (``nsr-gym run``)


def load_steps(folder: Path, meta: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame | None:
    """The per-step logs of a result's ``(agent, seed)`` units, where still on disk.

    Each log is read through :class:`~nsr_gym.executors.FrameStore` (its sha256 sidecar checked
    before parsing; floats exact) and counts only when it is a complete log of that unit (the
    step columns, the unit's agent and seed) whose return is the one ``runs.csv`` reports (so a
    log kept from another run of the same configuration, e.g. a controller since retrained under
    another weights tag, is not this run's). None when no unit's log is there.
    """
    from nsr_gym.agents import STEP_COLUMNS
    from nsr_gym.executors import FrameStore, Unit
    from nsr_gym.studies.benchmark import units_dir

    units = units_dir(folder, meta["env_id"], meta["env_kwargs"])
    if not units.is_dir():
        return None
    stems: dict[tuple[str, int], list[str]] = {}
    for path in sorted(units.glob("*__seed*.csv")):
        head, _, seed = path.stem.rpartition("__seed")
        if seed.isdigit():
            stems.setdefault((_TAG.sub("", head), int(seed)), []).append(path.stem)

    def check(log: pd.DataFrame, unit: Unit) -> str | None:
        if list(log.columns) != STEP_COLUMNS:
            return "other columns"
        if not ((log["agent"] == unit.agent).all() and (log["seed"] == unit.seed).all()):
            return "another unit's rows"
        return None

    store = FrameStore(units, name=lambda u: u.setting["stem"], check=check)
    logs = []
    for agent, seed, ret in runs[["agent", "seed", "episode_return"]].itertuples(index=False):
        for stem in stems.get((agent, int(seed)), []):
            log = store.load(Unit(agent, int(seed), {"stem": stem}))
            # runs.csv keeps 6 significant digits
            if log is not None and np.isclose(log["reward"].sum(), ret, rtol=1e-5, atol=1e-9):
                logs.append(log)
                break
    return pd.concat(logs, ignore_index=True) if logs else None


def load_result(folder: Path) -> dict[str, Any]:
    """One benchmark run: manifest, runs (with ``normalized`` and ``source``), phases, agent
    classes, step logs (if on disk), its track, setting and reference."""
    meta = read_json(folder / "manifest.json", max_bytes=1 << 20, what="results manifest")
    runs = pd.read_csv(folder / "runs.csv")
    classes: dict[str, str] = {}
    if (folder / "leaderboard.csv").is_file():
        board = pd.read_csv(folder / "leaderboard.csv")
        classes = dict(zip(board["agent"], board["class"].fillna(""), strict=True))
    phases = pd.read_csv(folder / "phases.csv") if (folder / "phases.csv").is_file() else None
    cl = pd.read_csv(folder / "cl_metrics.csv") if (folder / "cl_metrics.csv").is_file() else None
    matrix = folder / "accuracy_matrix.csv"
    track, binds = track_of(meta["benchmark"]), capacity_binds(meta, phases)
    reference = reference_agent(track, binds, set(runs["agent"]))
    runs["normalized"] = normalized_against(runs, classes, reference)
    runs["source"] = RUN_SOURCE
    return {"folder": folder, "meta": meta, "benchmark": meta["benchmark"],
            "backend": meta["env_kwargs"].get("backend", "torch"), "runs": runs,
            "classes": classes, "phases": phases, "steps": load_steps(folder, meta, runs),
            "cl": cl, "matrix": pd.read_csv(matrix) if matrix.is_file() else None,
            "track": track, "setting": setting_label(meta["env_kwargs"]),
            "capacity_binds": binds, "reference": reference}


def load_hard_track_study(folder: Path) -> pd.DataFrame | None:
    """Per-seed scores of ``nsr-gym study hard-track`` (its ``runs.csv`` and ``learned.csv``).

    Every episode of the study (rules, the clairvoyant, the MaskablePPO controllers) on each
    hard id as registered, per backend, on the study's evaluation seeds; the normalized score
    is computed within each ``(benchmark, backend)`` against the study's own clairvoyant and
    best memoryless agent on those seeds (:func:`normalized_against`, the study's classes).
    None for a missing folder or a ``quick`` (smoke) study.

    Returns:
        Columns ``benchmark, backend, agent, class, seed, episode_return, acc_online,
        normalized, learned`` (``learned``: a controller's row).
    """
    from nsr_gym.studies.hard_track import CLASSES

    meta = _manifest(folder)
    if meta is None or meta.get("quick", True) or not (folder / "runs.csv").is_file():
        return None
    rules = pd.read_csv(folder / "runs.csv").assign(learned=False)
    learned = (pd.read_csv(folder / "learned.csv").assign(learned=True)
               if (folder / "learned.csv").is_file() else rules.iloc[:0])
    if len(learned):
        # One row per controller kind (``maskable-ppo@torch``), not per training seed: its
        # return on an evaluation seed is the mean over the training seeds' policies.
        learned = learned.assign(agent=learned["agent"].str.replace(r"\[\d+\]$", "",
                                                                    regex=True))
        learned = (learned.groupby(["env_id", "backend", "agent", "seed"], as_index=False,
                                   sort=False)[["episode_return", "acc_mean"]].mean()
                   .assign(learned=True))
    both = pd.concat([rules, learned], ignore_index=True)
    both["benchmark"] = both["env_id"].str.split("/").str[-1].str.removesuffix("-v0")
    classes = {**CLASSES, CLAIRVOYANT: "clairvoyant",  # the study files it as its "oracle"
               **dict.fromkeys(learned["agent"], "learned")}
    both["class"] = both["agent"].map(classes).fillna("history")
    both["normalized"] = np.nan
    for _, g in both.groupby(["benchmark", "backend"], sort=False):
        both.loc[g.index, "normalized"] = normalized_against(g, classes, CLAIRVOYANT)
    return both.rename(columns={"acc_mean": "acc_online"})[
        ["benchmark", "backend", "agent", "class", "seed", "episode_return", "acc_online",
         "normalized", "learned"]]


def study_results(study: pd.DataFrame, results: list[dict[str, Any]],
                  folder: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the hard-track study's learned controllers to ``results`` (in place) and return
    the study's own results where ``nsr-gym run`` has none.

    A hard-track run of the registered setting (``setting == ""``) on the same benchmark and
    backend gets the study's controllers as rows (``source`` = the study) on the seeds both
    evaluated: the same streams (same id, keywords and seed), so their scores are normalized
    against the run's own clairvoyant and best memoryless agent, paired per seed like every
    other row (a controller is not memoryless, so the run's own scores do not move). Seeds the
    run lacks are left out, and ``res["study_note"]`` says so; a controller the run evaluated
    itself keeps only the run's rows. Without such a run, the study's rules and controllers
    form a result of their own, normalized within the study.
    """
    out = []
    for (bench, backend), g in study.groupby(["benchmark", "backend"], sort=False):
        rows = g.drop(columns=["learned", "class"]).assign(source=STUDY_SOURCE)
        classes = dict(zip(g["agent"], g["class"], strict=False))
        run = next((r for r in results if r["benchmark"] == bench and r["backend"] == backend
                    and r["track"] == "hard" and r["setting"] == ""), None)
        if run is None:
            out.append({"folder": folder, "meta": {**meta, "benchmark": bench},
                        "benchmark": bench, "backend": backend,
                        "runs": rows.reset_index(drop=True), "classes": classes, "phases": None,
                        "steps": None, "cl": None, "matrix": None, "track": "hard",
                        "setting": "", "capacity_binds": None, "reference": CLAIRVOYANT})
            continue
        learned = rows[g["learned"] & ~g["agent"].isin(run["runs"]["agent"])]
        if learned.empty:
            continue
        seeds = set(run["runs"]["seed"])
        paired = learned[learned["seed"].isin(seeds)].drop(columns="normalized")
        if len(paired) < len(learned):
            run["study_note"] = (
                f"The {STUDY_SOURCE}'s controllers ({', '.join(learned['agent'].unique())}) "
                f"were evaluated on seeds {_seed_text(learned['seed'])}, this run on "
                f"{_seed_text(run['runs']['seed'])}: only common seeds pair with its anchors, "
                f"{len(learned) - len(paired)} of {len(learned)} of their episodes are left out "
                "(run this id with the study's seeds to pair them all).")
        if paired.empty:
            continue
        runs = pd.concat([run["runs"], paired], ignore_index=True)
        run["classes"] = {**classes, **run["classes"]}
        runs["normalized"] = normalized_against(runs, run["classes"], run["reference"])
        run["runs"] = runs
    return out


def _seed_text(seeds: pd.Series) -> str:
    s = sorted(set(int(v) for v in seeds))
    return f"{s[0]}..{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else \
        ",".join(map(str, s))


# ----------------------------------------------------------------------------- tables


def benchmark_table(res: dict[str, Any], n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per agent (and source) of one benchmark result; CIs over ``n_boot`` resamples."""
    runs, rows = res["runs"], []
    for (agent, source), g in runs.groupby(["agent", "source"], sort=False):
        ret = stratified_bootstrap_ci([g["episode_return"].to_numpy()], n_boot=n_boot)
        norm = stratified_bootstrap_ci([g["normalized"].to_numpy()], n_boot=n_boot)
        row = {"track": res["track"], "benchmark": res["benchmark"], "setting": res["setting"],
               "backend": res["backend"], "agent": agent,
               "class": res["classes"].get(agent, ""), "reference": res["reference"] or "",
               "source": source, "seeds": len(g),
               "return_iqm": ret[0], "return_ci_low": ret[1], "return_ci_high": ret[2],
               "normalized_iqm": norm[0], "normalized_ci_low": norm[1],
               "normalized_ci_high": norm[2]}
        row.update({name: g[col].mean() if col in g else np.nan for name, col in _METRICS.items()})
        rows.append(row)
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
    """Long table track, benchmark, setting, backend, source, seed, agent, return, normalized:
    the raw per-seed scores."""
    frames = []
    for res in results:
        runs = res["runs"]
        frames.append(pd.DataFrame({
            "track": res["track"], "benchmark": res["benchmark"], "setting": res["setting"],
            "backend": res["backend"], "source": runs["source"], "seed": runs["seed"],
            "agent": runs["agent"], "return": runs["episode_return"],
            "normalized": runs["normalized"]}))
    return pd.concat(frames, ignore_index=True)


def aggregate_table(scores: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per track, backend and agent: the normalized score's IQM over the track's benchmarks,
    with a 95% stratified bootstrap CI over ``n_boot`` resamples (a stratum per benchmark and
    setting)."""
    rows = []
    scores = scores.assign(track=scores["track"] if "track" in scores else "standard",
                           setting=scores["setting"] if "setting" in scores else "")
    for (track, backend, agent), g in scores.groupby(["track", "backend", "agent"], sort=False):
        strata = [s["normalized"].to_numpy() for _, s in g.groupby(["benchmark", "setting"])]
        point, lo, hi = stratified_bootstrap_ci(strata, n_boot=n_boot)
        rows.append({"track": track, "backend": backend, "agent": agent,
                     "benchmarks": g[["benchmark", "setting"]].drop_duplicates().shape[0],
                     "runs": len(g), "normalized_iqm": point, "ci_low": lo, "ci_high": hi})
    order = {t: i for i, t in enumerate(TRACKS)}
    out = pd.DataFrame(rows)
    return out.sort_values(["track", "backend", "normalized_iqm"], ascending=[True, True, False],
                           key=lambda c: c.map(order) if c.name == "track" else c,
                           ignore_index=True)


def bwt_check(table: pd.DataFrame, agent: str = "similarity") -> str:
    """How much closer to zero ``agent``'s BWT is than the memoryless agents' (the issue's 9x)."""
    mine = table[table["agent"] == agent]
    mem = table[table["class"].isin(MEMORYLESS) & table["bwt"].notna()]
    if mine.empty or mem.empty or not np.isfinite(mine["bwt"].iloc[0]):
        return ""
    own = abs(float(mine["bwt"].iloc[0]))
    closest = mem.loc[mem["bwt"].abs().idxmin()]
    ratio = abs(closest["bwt"]) / own if own > 0 else float("inf")
    best_other = table[~table["class"].isin(REFERENCE_CLASSES)
                       & (table["agent"] != agent)]["acc"].max()
    return (
        f"{agent}: |BWT| = {own:.4f}; the memoryless agent closest to zero, {closest['agent']}, "
        f"has |BWT| = {abs(closest['bwt']):.4f}: **{ratio:.1f}x** closer to zero. ACC "
        f"{float(mine['acc'].iloc[0]):.3f} vs the best other non-reference agent's "
        f"{best_other:.3f}."
    )


# ----------------------------------------------------------------------------- markdown

_TRACK_TEXT = {
    "standard": ("Standard track", "Every registered benchmark outside the hard track (the "
                 "paper's settings). Normalized: 1 = the oracle; where capacity binds "
                 "(capacity < n_tasks) and the run has a clairvoyant, 1 = the clairvoyant."),
    "hard": ("Hard track", "The benchmarks of nsr_gym.envs.HARD_TRACK: memory binds and the "
             "similarity rule leaves headroom. Normalized: 1 = the clairvoyant (it reads the "
             "whole schedule and plans allocation and retention: exact on the analytic backend "
             "where its program finishes, a planned approximation on the torch backend)."),
}


def _section(res: dict[str, Any], table: pd.DataFrame) -> list[str]:
    """One benchmark result's part of ``leaderboard.md``."""
    from nsr_gym.results import markdown_table

    src = res["meta"]
    backend = "" if res["backend"] == "torch" else f" ({res['backend']} backend)"
    setting = f" [{res['setting']}]" if res["setting"] else ""
    ref = res["reference"]
    anchor = (f"Normalized against the {ref}" + (" (capacity binds)" if res["capacity_binds"]
                                                 and ref == CLAIRVOYANT else "")
              if ref else "No normalized score: the result has no "
              + (CLAIRVOYANT if res["track"] == "hard" else "oracle or clairvoyant") + " row")
    lines = [f"### {res['benchmark']}{setting}{backend}\n",
             f"From `{src['command']}` (git {src['git_revision'][:12]}, "
             f"{src['created_utc']}), `{res['folder']}`. {anchor}.\n"]
    columns = SHORT_COLUMNS + (["source"] if table["source"].nunique() > 1 else [])
    lines += [markdown_table(table[columns].rename(columns=REVISIT_NAMES)), ""]
    if (table["source"] == STUDY_SOURCE).all():
        lines += [f"Every row from the {STUDY_SOURCE} (`nsr-gym study hard-track`; no `nsr-gym "
                  "run` of this id and backend): its evaluation seeds, normalized against its "
                  "own clairvoyant and best memoryless agent; acc_online is its mean accuracy, "
                  "the metrics it does not record are nan.", ""]
    elif (table["source"] == STUDY_SOURCE).any():
        lines += [f"Rows of source {STUDY_SOURCE!r}: the controllers of `nsr-gym study "
                  "hard-track`, evaluated on the same streams (id, keywords, seeds) as this run "
                  "and normalized against its anchors, seed by seed; acc_online is the study's "
                  "mean accuracy, the metrics it does not record are nan.", ""]
    if res.get("study_note"):
        lines += [res["study_note"], ""]
    check = bwt_check(table)
    if check:
        lines += [check, ""]
    return lines + _standard_lines(res)


def leaderboard_markdown(results: list[dict[str, Any]], tables: list[pd.DataFrame],
                         agg: pd.DataFrame, provenance: str, figures: list[str]) -> str:
    """``leaderboard.md``: per track, one section per benchmark and the track's aggregate;
    then the list of figures."""
    from nsr_gym.results import markdown_table

    lines = [
        f"# nsr-gym leaderboard\n\n{provenance}\n",
        "Two tracks: standard and hard (nsr_gym.envs.HARD_TRACK). Return: IQM over seeds (mean "
        "of the middle 50%) with a 95% bootstrap CI. Normalized: per seed, (R - "
        "R_best_memoryless) / (R_reference - R_best_memoryless), so 0 is the best memoryless "
        "agent (class M0/M1) and 1 the track's reference (below). Classes oracle and "
        "clairvoyant are privileged references (the task's identity, the future schedule); "
        "learned: trained controllers. ACC: mean accuracy at the end of each task's last visit; "
        "revisit BWT and revisit forgetting at each task's return; recovery in steps (see "
        "nsr_gym.metrics); MB per task = bank bytes / entries / 10^6. Raw per-seed scores: "
        "`leaderboard_scores.csv`. The standard family (std_acc, std_aia, std_bwt, "
        "std_forgetting, std_fwt: Lopez-Paz and Ranzato's BWT and FWT, Chaudhry et al.'s "
        "forgetting, from the accuracy matrix R[j, i]; nsr_gym.cl_metrics) follows each "
        "benchmark's table where its run recorded the matrix: `leaderboard_cl_metrics.csv`.\n",
    ]
    for track in TRACKS:
        title, text = _TRACK_TEXT[track]
        mine = [(r, t) for r, t in zip(results, tables, strict=True) if r["track"] == track]
        lines += [f"## {title}\n", f"{text}\n"]
        if not mine:
            lines += ["No result of this track under the results folder yet.\n"]
            continue
        for res, table in mine:
            lines += _section(res, table)
        lines += [f"### {title}: normalized score over its benchmarks\n",
                  "IQM over every (benchmark, seed) run of the track, 95% stratified bootstrap "
                  "CI (seeds resampled within each benchmark).\n",
                  markdown_table(agg[agg["track"] == track].drop(columns="track")), ""]
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


def load_results(root: Path) -> list[dict[str, Any]]:
    """Every result under ``root``: the runs of ``nsr-gym run`` (:func:`load_result`) and the
    hard-track study's (:func:`study_results`), standard track first."""
    results = [load_result(f) for f in find_runs(root)]
    folder = root / HARD_TRACK_STUDY
    study = load_hard_track_study(folder)
    if study is not None:
        results += study_results(study, results, folder, _manifest(folder) or {})
    return sorted(results, key=lambda r: TRACKS.index(r["track"]))


def write_leaderboard(root: str | Path, plots: bool = True, command: str | None = None,
                      n_boot: int = N_BOOT) -> tuple[str, int]:
    """Aggregate every ``nsr-gym run`` result under ``root`` into ``root/leaderboard*``.

    Args:
        root: The results folder.
        plots: Write the figures into ``root/leaderboard_plots/``.
        command: The command line recorded in the manifest (default: this process's).
        n_boot: Bootstrap resamples of every CI and band.

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
    results = load_results(root)
    if not results:
        raise FileNotFoundError(
            f"no results of `nsr-gym run` under {root}/ (looked for */runs.csv with a "
            "manifest.json); run `nsr-gym run --benchmark NAME` first")
    tables = [benchmark_table(r, n_boot) for r in results]
    board = pd.concat(tables, ignore_index=True)
    scores = score_matrix(results)
    agg = aggregate_table(scores, n_boot)
    seeds = sorted(set(scores["seed"].astype(int)))
    meta = manifest(command or command_line(), seeds, 0.0, sources=[
        {"folder": str(r["folder"]), "benchmark": r["benchmark"], "backend": r["backend"],
         "track": r["track"], "command": r["meta"].get("command"),
         "git_revision": r["meta"].get("git_revision"), "created_utc": r["meta"].get("created_utc")}
        for r in results])
    caption = f"`{meta['command']}` (git {meta['git_revision'][:12]}, {meta['created_utc']})"

    out = root / "leaderboard_plots"
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if plots:
        figures = [p for r in results for p in plot_result(r, out, caption)]
        figures += plot_performance_profiles(scores, out, caption, n_boot)
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
