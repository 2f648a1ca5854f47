"""The run and report of ``nsr-gym budget``: what a bank entry costs and what a capped bank forgets.

:func:`run_study` runs the three measurements of :mod:`nsr_gym.studies.budget` (the compression
sweep, the eviction study under the similarity rule, ViT-B/16-shaped entry bytes) and writes
``compression_sweep.csv``, ``eviction_revisits.csv``, ``eviction_summary.csv``,
``vit_b16_entry_bytes.csv``, ``budget.png``, ``budget.md`` and ``manifest.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import pandas as pd

from nsr_gym.atomic import atomic_path, atomic_write_text
from nsr_gym.bank import EVICTION_POLICIES
from nsr_gym.envs import BENCHMARKS, env_id
from nsr_gym.results import (
    command_line,
    manifest,
    markdown_table,
    provenance_line,
    write_csv,
    write_json,
)
from nsr_gym.studies import budget


def run_study(out: Path, seeds: list[int], *, tasks: str = "five_domains",
              benchmark: str = "FiveDomains", backend: str = "torch",
              capacities: Sequence[int] = (2, 3, 4, 5), phase_length: int = 15, n_cycles: int = 4,
              updates: int = 300) -> str:
    """Run the budget analysis and write its files under ``out``.

    Args:
        out: Output directory (created).
        seeds: Seeds of the compression sweep and of the eviction episodes.
        tasks: Task family of the compression sweep (:mod:`nsr_gym.data`).
        benchmark: Benchmark of the eviction study.
        backend: Backend of the eviction study (``"torch"`` or ``"analytic"``).
        capacities: Bank capacities ``K`` of the eviction study; those above the benchmark's
            task count are dropped.
        phase_length: ``L`` of the eviction study.
        n_cycles: Cycles of the eviction study's stream.
        updates: Adam updates per task in the compression sweep.

    Returns:
        The markdown report (also written to ``out/budget.md``).
    """
    from nsr_gym.agents import SimilarityRule

    out = Path(out)
    t0 = time.perf_counter()
    sweep = budget.compression_sweep(tasks=tasks, seeds=seeds, updates=updates)
    n_tasks = BENCHMARKS[benchmark]["n_tasks"]
    capacities = [c for c in capacities if c <= n_tasks]
    env_kwargs = dict(backend=backend, phase_length=phase_length, n_cycles=n_cycles)

    def make_env(capacity: int, eviction: str) -> gym.Env:
        return gym.make(env_id(benchmark), capacity=capacity, eviction=eviction, **env_kwargs)

    revisits = budget.eviction_study(make_env, SimilarityRule, capacities, EVICTION_POLICIES, seeds)
    summary = budget.summarize_eviction(revisits)
    vit = budget.vit_entry_bytes()
    wall = time.perf_counter() - t0

    meta = manifest(command_line(), seeds, wall, tasks=tasks, benchmark=benchmark,
                    env_kwargs=env_kwargs, capacities=capacities)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compression_sweep.csv", sweep)
    write_csv(out / "eviction_revisits.csv", revisits)
    write_csv(out / "eviction_summary.csv", summary)
    write_csv(out / "vit_b16_entry_bytes.csv", vit)
    rev = meta["git_revision"][:12]
    caption = f"`{meta['command']}` (seeds {seeds}, git {rev}, {meta['created_utc']})"
    figures = _plot(sweep, summary, out, caption)
    md = _markdown(sweep, revisits, summary, vit, meta, figures, tasks=tasks,
                   benchmark=benchmark, backend=backend, updates=updates, env_kwargs=env_kwargs)
    atomic_write_text(out / "budget.md", md)
    write_json(out / "manifest.json", meta)
    return md


def _plot(sweep: pd.DataFrame, summary: pd.DataFrame, out: Path, caption: str) -> list[Path]:
    """Bytes per task against accuracy; recovery of retained and evicted tasks against ``K``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for kind, marker in (("rank", "o"), ("energy", "s")):
        m = sweep[sweep["kind"] == kind].groupby("value")[["bytes", "accuracy"]].mean()
        a1.plot(m["bytes"], m["accuracy"], marker=marker, label=f"{kind} budget")
        for v, r in m.iterrows():
            a1.annotate(f"{v:g}", (r["bytes"], r["accuracy"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    full = sweep[sweep["kind"] == "exact"]["accuracy"].mean()
    a1.axhline(full, color="grey", ls="--", lw=0.8, label="uncompressed")
    a1.set(xlabel="bytes per bank entry (factors + head + key)",
           ylabel="accuracy of the stored entry", title="bytes per task vs accuracy")
    a1.legend(fontsize=8)
    for rule, g in summary[summary["status"] == "retained"].groupby("eviction"):
        a2.plot(g["capacity"], g["recovery"], marker="o", label=f"{rule}: retained")
    ev = summary[summary["status"] != "retained"].groupby("capacity")["recovery"].mean()
    if len(ev):
        a2.plot(ev.index, ev.values, "k--", marker="x", label="evicted / never stored (all rules)")
    a2.set(xlabel="bank capacity K", ylabel="recovery R_eps (steps)",
           title="recovery of retained and evicted tasks")
    a2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    a2.legend(fontsize=7)
    fig.suptitle(caption, fontsize=8)
    path = out / "budget.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return [path]


def _markdown(sweep: pd.DataFrame, revisits: pd.DataFrame, summary: pd.DataFrame,
              vit: pd.DataFrame, meta: dict[str, Any], figures: list[Path], *, tasks: str,
              benchmark: str, backend: str, updates: int, env_kwargs: dict[str, Any]) -> str:
    table = (
        sweep.groupby(["kind", "value"], dropna=False)[
            ["mean_rank", "bytes", "adapter_bytes", "accuracy", "accuracy_full"]
        ]
        .mean()
        .reset_index()
        .sort_values(["kind", "value"])
    )
    table["accuracy_loss"] = table["accuracy_full"] - table["accuracy"]
    by_status = (
        revisits.groupby(["capacity", "status"])
        .agg(
            revisits=("recovery", "size"),
            recovery=("recovery", "mean"),
            zero_shot=("zero_shot", "mean"),
            bwt=("bwt", "mean"),
        )
        .reset_index()
    )
    per_rule = summary.pivot_table(
        index="capacity", columns="eviction", values="episode_return", aggfunc="first"
    ).reset_index()
    per_rule.columns = [str(c) for c in per_rule.columns]
    share = summary.pivot_table(
        index="capacity", columns="eviction", values="retained_share", aggfunc="first"
    ).reset_index()
    share.columns = [str(c) for c in share.columns]
    paper = budget.PAPER_MB_PER_TASK
    return f"""# Memory budget ({benchmark} / {tasks}, {backend} backend for eviction)

{provenance_line(meta)}

## Bytes per task vs SVD rank / energy vs accuracy

Torch backend, `{tasks}` tasks; each task trains one subspace from fresh
({updates} Adam updates), its exact factors are recompressed at each setting
(`nsr_gym.bank.compress_lora`), stored as a real `BankEntry` (bytes = `nbytes`: factors, head,
key) and loaded back. Mean over tasks and seeds.

{markdown_table(table)}

## Top-K cap and eviction rules: recovery of retained and evicted tasks

`{benchmark}` ({env_kwargs}), similarity rule; each revisit is classed by its task's entry when
it returns. Recovery: steps to within eps of the previous visit (0 = at once).

By capacity and status (all rules):

{markdown_table(by_status)}

By capacity, rule and status:

{markdown_table(summary)}

Share of revisits whose entry was retained:

{markdown_table(share)}

Episode return by capacity and rule:

{markdown_table(per_rule)}

## ViT-B/16-shaped bank entries vs the paper's {paper} MB per task

Real `BankEntry` objects: LoRA rank r on q and v of 12 blocks (d = 768, 24 layers), random factors
compressed by `compress_lora`, a 10-way head and the 768-d key, float32. MB = 10^6 bytes.

{markdown_table(vit, floatfmt=".4f")}

Figures: {", ".join(f"`{p.name}`" for p in figures)}.
"""
