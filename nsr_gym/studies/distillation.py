"""The distillation ablation of ``nsr-gym study distillation``: what distillation buys when bank
entries are shared.

The ablation of DESIGN.md's step 4 ("train the chosen entry with a distillation term that
protects the tasks it already served"). Every unit is one torch episode of one agent on one
benchmark, with distillation off (``distill_weight = 0``) or on, under one of the env's two
``reserve`` modes:

* ``owner``: an entry per task (the registered default). Entries are never shared, so a loaded
  entry's own task is all it protects; what distillation can still change is a memoryless agent
  that keeps one subspace across tasks.
* ``active``: entries are shared and updated in place: a task warm-started from another task's
  entry is written back into it. Here the term protects every task the entry served.

Each setting runs at every weight (``nsr-gym``'s default 0.3, 1, 3) against the same seeds with
distillation off. Agents: the similarity rule at its default novelty threshold, the same rule
with threshold 0 (it recalls, and so shares, far more often), and keep-current (one subspace for
everything). :func:`run_study` writes ``runs.csv`` (per seed), ``summary.csv``,
``distillation.md`` (tables with bootstrap CIs over seeds, paired per seed, and findings computed
from them), ``distillation.png`` and ``manifest.json``. Finished units are kept under
``<out>/.units/`` so an interrupted study resumes; ``executor="ray"`` runs them as Ray tasks.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

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
from nsr_gym.studies.episodes import run_episode_units

BENCHMARKS = ("FiveDomains", "PermutedDigits", "CyclicSplitDigits")
RESERVES = ("owner", "active")
#: The agents (see :func:`policies`).
AGENTS = ("similarity", "similarity-t0", "keep-current")
#: Columns compared with distillation off and on.
METRICS = ("acc_final", "acc_online", "bwt", "forgetting", "episode_return")


def policies() -> dict:
    """The agents of the study (picklable factories, for any executor)."""
    from nsr_gym.agents import KeepCurrent, SimilarityRule

    return {"similarity": SimilarityRule, "similarity-t0": functools.partial(SimilarityRule, 0.0),
            "keep-current": KeepCurrent}


def units(benchmarks: list[str], weights: list[float], seeds: list[int], quick: bool) -> list:
    from nsr_gym.envs import env_id
    from nsr_gym.executors import Unit

    short = dict(phase_length=8, n_cycles=2) if quick else {}
    return [Unit(agent, seed, {"env_id": env_id(bench), "tags": {
                "benchmark": bench, "reserve": reserve, "distill_weight": w},
                "env_kwargs": {**short, "backend": "torch", "reserve": reserve,
                               "learner": {"distill_weight": w}}})
            for bench in benchmarks for reserve in RESERVES for agent in AGENTS
            for w in weights for seed in seeds]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, reserve, agent, weight > 0): means with bootstrap CIs, and the
    paired per-seed change against the same setting with distillation off."""
    from nsr_gym.stats import mean_ci

    keys = ["benchmark", "reserve", "agent"]
    rows = []
    for key, g in runs.groupby(keys, sort=False):
        off = g[g["distill_weight"] == 0].set_index("seed")
        for w, on in g[g["distill_weight"] > 0].groupby("distill_weight"):
            on = on.set_index("seed")
            paired = on.index.intersection(off.index)
            row = dict(zip(keys, key, strict=True), distill_weight=w, seeds=len(paired),
                       entries=float(on["bank_entries"].mean()))
            for m in METRICS:
                row[f"{m}_off"] = float(off.loc[paired, m].mean())
                row[f"{m}_on"] = float(on.loc[paired, m].mean())
                delta = (on.loc[paired, m] - off.loc[paired, m]).to_numpy()
                row[f"{m}_delta"], row[f"{m}_delta_lo"], row[f"{m}_delta_hi"] = mean_ci(delta)
            rows.append(row)
    return pd.DataFrame(rows)


def _findings(summary: pd.DataFrame) -> list[str]:
    """Sentences computed from the summary (nothing typed in)."""
    lines = []
    for r in summary.itertuples():
        where = f"{r.benchmark}, {r.agent}, reserve={r.reserve}, weight {r.distill_weight:g}"
        lo, hi = r.bwt_delta_lo, r.bwt_delta_hi
        if r.seeds < 2:
            sig = "one seed, no CI"
        else:
            sig = "significant" if lo > 0 or hi < 0 else "not significant"
        if r.agent == "keep-current":
            sharing = "one subspace kept across every task"
        elif r.reserve == "active":
            sharing = f"{r.entries:.1f} entries written back in place"
        else:
            sharing = "an entry per task"
        if r.bwt_off >= 0:
            closer = "no forgetting to prevent"
        elif r.bwt_on >= 0:
            closer = "forgetting removed"
        else:
            closer = f"{r.bwt_off / r.bwt_on:.1f}x closer to zero"
        lines.append(
            f"- {where} ({sharing}): BWT {r.bwt_off:.3f} -> {r.bwt_on:.3f} ({closer}; paired "
            f"change {r.bwt_delta:+.3f} [{lo:+.3f}, {hi:+.3f}], {sig}); final accuracy "
            f"{r.acc_final_off:.3f} -> {r.acc_final_on:.3f}, online accuracy "
            f"{r.acc_online_off:.3f} -> {r.acc_online_on:.3f}.")
    return lines


def _headline(summary: pd.DataFrame) -> list[str]:
    """Two sentences: where entries are per task, and where a subspace serves several tasks."""
    per_task = summary[(summary["reserve"] == "owner") & (summary["agent"] != "keep-current")]
    shared = summary[(summary["agent"] == "keep-current")
                     | ((summary["reserve"] == "active") & (summary["bwt_off"] < -0.01))]
    lines = []
    if len(per_task):
        worst = per_task["bwt_off"].min()
        change = per_task["bwt_delta"].abs().max()
        lines.append(f"- With an entry per task (the registered default) the Bank alone keeps the "
                     f"similarity rule's BWT at {worst:.3f} or better, and distillation changes it "
                     f"by at most {change:.3f}: a per-task entry is never overwritten by another "
                     "task, so there is nothing for it to protect.")
    if not len(shared):
        return lines
    keys = ["benchmark", "reserve", "agent"]
    groups = [g.sort_values("distill_weight") for _, g in shared.groupby(keys, sort=False)]
    weights = sorted(shared["distill_weight"].unique())
    factors = shared["bwt_off"] / shared["bwt_on"].where(shared["bwt_on"] < 0)
    lines.append(f"- Where one subspace serves several tasks (shared entries updated in place, "
                 f"or keep-current), distillation brings BWT {factors.min():.1f}x to "
                 f"{factors.max():.1f}x closer to zero (BWT off {shared['bwt_off'].min():.3f} "
                 f"to {shared['bwt_off'].max():.3f}; on {shared['bwt_on'].min():.3f} to "
                 f"{shared['bwt_on'].max():.3f}) in {len(groups)} settings x {len(weights)} "
                 f"weight(s), and changes final accuracy by "
                 f"{shared['acc_final_delta'].min():+.3f} to "
                 f"{shared['acc_final_delta'].max():+.3f}.")
    if len(weights) > 1:
        monotone = sum(bool((np.diff(g["bwt_on"].to_numpy()) >= 0).all()) for g in groups)
        peaks = pd.Series([g.loc[g["acc_online_on"].idxmax(), "distill_weight"] for g in groups])
        peak, n_peak = peaks.value_counts().idxmax(), int(peaks.value_counts().max())
        lines.append(f"- Across weights {', '.join(f'{w:g}' for w in weights)}: BWT moves closer "
                     f"to zero as the weight grows in {monotone} of {len(groups)} of those "
                     f"settings, while online accuracy peaks at weight {peak:g} in {n_peak} of "
                     "them: more protection, less plasticity.")
    return lines


def _table(summary: pd.DataFrame) -> str:
    cols = {"benchmark": "benchmark", "reserve": "reserve", "agent": "agent",
            "distill_weight": "weight", "entries": "entries", "acc_final_off": "ACC off",
            "acc_final_on": "ACC on", "acc_online_off": "online off", "acc_online_on": "online on",
            "bwt_off": "BWT off", "bwt_on": "BWT on", "bwt_delta": "BWT change",
            "forgetting_off": "forgetting off", "forgetting_on": "forgetting on"}
    frame = summary[list(cols)].rename(columns=cols)
    frame["BWT change"] = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(
        summary["bwt_delta"], summary["bwt_delta_lo"], summary["bwt_delta_hi"], strict=True)]
    frame["weight"] = [f"{w:g}" for w in frame["weight"]]
    frame["entries"] = [f"{e:.1f}" for e in frame["entries"]]
    return markdown_table(frame)


def _plot(summary: pd.DataFrame, path: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = sorted(summary["distill_weight"].unique())
    benches = list(dict.fromkeys(summary["benchmark"]))
    fig, axes = plt.subplots(1, len(benches), figsize=(4.2 * len(benches), 4.2),
                             constrained_layout=True, squeeze=False)
    width = 0.8 / (len(weights) + 1)
    for ax, bench in zip(axes[0], benches, strict=True):
        b = summary[summary["benchmark"] == bench]
        first = b[b["distill_weight"] == weights[0]]
        labels = [f"{a}\n{r}" for a, r in zip(first["agent"], first["reserve"], strict=True)]
        x = np.arange(len(first))
        ax.bar(x - 0.4 + width / 2, first["bwt_off"], width, label="distillation off")
        for i, w in enumerate(weights, start=1):
            on = b[b["distill_weight"] == w]
            ax.bar(x - 0.4 + width * (i + 0.5), on["bwt_on"], width, label=f"weight {w:g}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, labels, fontsize=6, rotation=35, ha="right")
        ax.set(title=bench, ylabel="BWT (0 = no forgetting)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(caption, fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _anchor_bytes(benchmarks: list[str], anchors: int) -> dict[str, int]:
    """Bytes of the anchor inputs distillation reads per protected task, per benchmark."""
    from nsr_gym.data import make_tasks
    from nsr_gym.envs import BENCHMARKS as REGISTERED

    out = {}
    for bench in benchmarks:
        kw = REGISTERED[bench]
        task = make_tasks(kw["tasks"], kw["n_tasks"])[0]
        out[bench] = int(min(anchors, len(task.x_train)) * task.input_dim * 4)
    return out


def run_study(benchmarks: list[str], weights: list[float], seeds: list[int], out: Path, *,
              quick: bool = False, executor: str = "local", ray_address: str | None = None,
              resume: bool = True, progress: bool = True) -> str:
    """Run the ablation and write its files under ``out`` (see the module docstring).

    Args:
        benchmarks: Names from :data:`BENCHMARKS`.
        weights: Distillation weights, ``0`` (the control) among them, sorted.
        seeds: Episode seeds, the same for every setting (paired comparisons).
        out: Output directory (created).
        quick: Short episodes (``phase_length=8``, two cycles): a smoke test.
        executor: ``"local"`` or ``"ray"``; ``ray_address`` the cluster to join.
        resume: Reuse the finished units kept under ``out/.units``.
        progress: Show a progress bar.

    Returns:
        The markdown report (also written to ``out/distillation.md``).
    """
    from nsr_gym.learners.torch_learner import TorchLearnerConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs, counts = run_episode_units(units(benchmarks, weights, seeds, quick), policies(), out,
                                     "distillation", executor, ray_address, resume, progress)
    runs = runs[["benchmark", "reserve", "agent", "distill_weight", "seed", "bank_entries",
                 *METRICS, "recovery", "wall_s"]]
    summary = summarize(runs)
    n_anchors = TorchLearnerConfig().distill_anchors
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, benchmarks=benchmarks,
                    weights=weights, executor=executor, quick=bool(quick),
                    distill_anchors=n_anchors,
                    units=counts,
                    anchor_bytes_per_task=_anchor_bytes(benchmarks, n_anchors))
    write_csv(out / "runs.csv", runs)
    write_csv(out / "summary.csv", summary)
    write_json(out / "manifest.json", meta)
    provenance = provenance_line(meta)
    _plot(summary, out / "distillation.png", provenance.replace("`", ""))
    md = _markdown(summary, provenance, n_anchors, meta["anchor_bytes_per_task"])
    atomic_write_text(out / "distillation.md", md)
    return md


def _markdown(summary: pd.DataFrame, provenance: str, n_anchors: int,
              anchor_bytes: dict[str, int]) -> str:
    anchors = ", ".join(f"{b} {n / 1000:.1f} kB" for b, n in anchor_bytes.items())
    return "\n".join([
        "# Distillation ablation: BWT and accuracy with and without it",
        "",
        provenance,
        "",
        "Torch backend, registered settings of each benchmark. `reserve=owner`: an entry per "
        "task; `reserve=active`: entries shared and updated in place (a task warm-started from "
        "another's entry is written back into it). `similarity-t0` is the similarity rule with "
        "novelty threshold 0, which recalls (and so shares) more. ACC: final accuracy; online: "
        "mean accuracy over all steps; BWT and forgetting as in `nsr_gym.metrics`. `BWT change` "
        "is the paired per-seed change (on - off) with a 95% bootstrap CI over seeds.",
        "",
        _table(summary),
        "",
        "## Findings",
        "",
        *_headline(summary),
        "",
        "Per setting:",
        "",
        *_findings(summary),
        "",
        f"The term reads the first {n_anchors} training inputs of each protected task "
        f"(unlabelled, at most the whole training set): {anchors} per task beside its bank "
        "entry, which the bank's MB per task does not count.",
        "",
    ])
