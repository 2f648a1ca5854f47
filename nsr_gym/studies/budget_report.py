"""The run and report of ``nsr-gym budget``: what a bank entry costs and what a capped bank forgets.

:func:`run_study` runs the measurements of :mod:`nsr_gym.studies.budget` (the compression
sweep, the eviction study under the similarity rule, ViT-B/16-shaped entry bytes, the float16 and
per-entry-energy sweep with its ViT-B/16 bytes, and the byte-budget study) and writes
``compression_sweep.csv``, ``eviction_revisits.csv``, ``eviction_summary.csv``,
``vit_b16_entry_bytes.csv``, ``precision_sweep.csv``, ``vit_b16_float16.csv``,
``byte_budget.csv``, ``budget.png``, ``budget.md`` and ``manifest.json``.
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
              updates: int = 300, lora_ranks: Sequence[int] = (1, 2, 4, 8, 16),
              byte_budgets: Sequence[int] = (10_000, 15_000), tolerance: float = 0.01) -> str:
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
        updates: Adam updates per task in the compression and precision sweeps.
        lora_ranks: LoRA ranks of the precision sweep (and so of its ViT-B/16 rows).
        byte_budgets: ``capacity_bytes`` of the byte-budget study (on ``benchmark``, with
            ``capacity`` = its task count, so that only the bytes bind).
        tolerance: Accuracy (a fraction) float16 may cost an entry under ``"auto"``.

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
    precision = budget.precision_sweep(tasks=tasks, seeds=seeds, updates=updates,
                                       lora_ranks=lora_ranks, tolerance=tolerance)
    vit16 = budget.summarize_precision(precision, tolerance)

    def make_budget_env(capacity_bytes: int, dtype: str) -> gym.Env:
        return gym.make(env_id(benchmark), capacity_bytes=capacity_bytes, eviction="lru",
                        learner={"payload_dtype": dtype, "payload_dtype_tolerance": tolerance},
                        **env_kwargs)

    held = budget.byte_budget_study(make_budget_env, SimilarityRule, byte_budgets,
                                    ("float32", "auto"), seeds) if backend == "torch" else None
    wall = time.perf_counter() - t0

    meta = manifest(command_line(), seeds, wall, tasks=tasks, benchmark=benchmark,
                    env_kwargs=env_kwargs, capacities=capacities, lora_ranks=list(lora_ranks),
                    byte_budgets=list(byte_budgets), tolerance=tolerance)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compression_sweep.csv", sweep)
    write_csv(out / "eviction_revisits.csv", revisits)
    write_csv(out / "eviction_summary.csv", summary)
    write_csv(out / "vit_b16_entry_bytes.csv", vit)
    write_csv(out / "precision_sweep.csv", precision)
    write_csv(out / "vit_b16_float16.csv", vit16)
    if held is not None:
        write_csv(out / "byte_budget.csv", held)
    rev = meta["git_revision"][:12]
    caption = f"`{meta['command']}` (seeds {seeds}, git {rev}, {meta['created_utc']})"
    figures = _plot(sweep, summary, out, caption)
    md = _markdown(sweep, revisits, summary, vit, meta, figures, tasks=tasks,
                   benchmark=benchmark, backend=backend, updates=updates, env_kwargs=env_kwargs)
    md = md.replace("\nFigures: ", _precision_markdown(vit16, held, tasks=tasks, updates=updates,
                                                        tolerance=tolerance, benchmark=benchmark)
                    + "\nFigures: ")
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


def _precision_markdown(vit16: pd.DataFrame, held: pd.DataFrame | None, *, tasks: str,
                        updates: int, tolerance: float, benchmark: str) -> str:
    """The float16 / per-entry-energy section and the byte-budget section of ``budget.md``."""
    paper = budget.PAPER_MB_PER_TASK
    cols = ["lora_rank", "energy", "dtype", "mean_rank", "float16_share", "vit_mb",
            "vit_adapter_mb", "ratio_to_paper", "adapter_ratio_to_paper", "accuracy_loss",
            "worst_loss", "over_tolerance"]
    head = vit16[(vit16["lora_rank"] == 2) & (vit16["dtype"] == "auto")]
    verdict = "".join(
        f"- LoRA rank 2, energy {r.energy}, auto: {r.vit_mb:.4f} MB per entry (adapter "
        f"{r.vit_adapter_mb:.4f} MB, the part the paper's {paper} MB counts) at a mean accuracy "
        f"loss of {100 * r.accuracy_loss:.2f} points (worst entry {100 * r.worst_loss:.2f}); "
        f"goal 0.15 MB: adapter {'met' if r.vit_adapter_mb <= 0.15 else 'not met'}, whole entry "
        f"{'met' if r.vit_mb <= 0.15 else 'not met'}.\n" for r in head.itertuples())
    text = f"""
## float16 payloads and per-entry ranks by energy, at ViT-B/16's shape

How it is measured: torch backend, `{tasks}` tasks, one learner per LoRA rank r (`lora_rank = r`);
each task trains one subspace from fresh ({updates} Adam updates); its exact factors are
recompressed at each energy threshold (`none`: no truncation; each layer of each entry keeps the
smallest rank that holds that share of its energy, `compress_lora(energy=e)`), stored as a real
`BankEntry` with float32 or float16 factors and head (the key stays float32), loaded back, and
evaluated on the task's held-out data. `auto` is the learner's per-entry check
(`learner={{"payload_dtype": "auto"}}`): float16 where it costs at most {100 * tolerance:g} point
of held-out accuracy against the float32 payload, float32 otherwise; the check and the reported
accuracy use the same held-out data. Accuracy loss = uncompressed float32 accuracy minus the
stored entry's, mean over tasks and seeds (worst_loss: the worst entry; over_tolerance: share of
entries losing more than {100 * tolerance:g} point). MB at ViT-B/16's shape: 24 LoRA layers (q, v
of 12 blocks, d = 768) with the mean kept rank measured here, a 10-way head in the payload's dtype
and the float32 768-d key (exact for energy `none`; a projection of this learner's kept ranks
otherwise). MB = 10^6 bytes; the paper reports {paper} MB per task.

{verdict}
{markdown_table(vit16[cols], floatfmt=".4f")}
"""
    if held is None:
        return text
    table = held.groupby(["capacity_bytes", "payload_dtype"]).mean(numeric_only=True)
    table = table.drop(columns="seed").reset_index()
    return text + f"""
## A byte budget holds more tasks

`{benchmark}` (torch, similarity rule, LRU) with `capacity_bytes` set and as many slots as tasks,
so only the bytes bind; `payload_dtype` float32 against `auto`. entries: tasks held at phase ends;
entry_bytes: bytes per held entry; retained_share: revisits whose entry was held. Mean over seeds.

{markdown_table(table)}
"""
