"""``nsr-gym budget``: memory budget analysis into ``results/budget/`` (see ``nsr_gym.budget``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from nsr_gym.cli._common import markdown_table, parse_seeds


def _plot(sweep: pd.DataFrame, summary: pd.DataFrame, out: Path, caption: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for kind, marker in (("rank", "o"), ("energy", "s")):
        m = sweep[sweep["kind"] == kind].groupby("value")[["bytes", "accuracy"]].mean()
        a1.plot(m["bytes"], m["accuracy"], marker=marker, label=f"{kind} budget")
        for v, r in m.iterrows():
            a1.annotate(
                f"{v:g}",
                (r["bytes"], r["accuracy"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
    full = sweep[sweep["kind"] == "exact"]["accuracy"].mean()
    a1.axhline(full, color="grey", ls="--", lw=0.8, label="uncompressed")
    a1.set(
        xlabel="bytes per bank entry (factors + head + key)",
        ylabel="accuracy of the stored entry",
        title="bytes per task vs accuracy",
    )
    a1.legend(fontsize=8)
    for rule, g in summary[summary["status"] == "retained"].groupby("eviction"):
        a2.plot(g["capacity"], g["recovery"], marker="o", label=f"{rule}: retained")
    ev = summary[summary["status"] != "retained"].groupby("capacity")["recovery"].mean()
    if len(ev):
        a2.plot(ev.index, ev.values, "k--", marker="x", label="evicted / never stored (all rules)")
    a2.set(
        xlabel="bank capacity K",
        ylabel="recovery R_eps (steps)",
        title="recovery of retained and evicted tasks",
    )
    a2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    a2.legend(fontsize=7)
    fig.suptitle(caption, fontsize=8)
    path = out / "budget.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def cmd_budget(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import nsr_gym
    from agents import SimilarityRule
    from nsr_gym import budget
    from nsr_gym.bank import EVICTION_POLICIES
    from nsr_gym.results import (
        atomic_write_text,
        command_line,
        manifest,
        provenance_line,
        write_csv,
        write_json,
    )

    out = Path(args.out)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    t0 = time.perf_counter()
    updates = args.updates or (60 if args.quick else 300)
    sweep = budget.compression_sweep(tasks=args.tasks, seeds=seeds, updates=updates)
    n_tasks = nsr_gym.BENCHMARKS[args.benchmark]["n_tasks"]
    capacities = [c for c in args.capacities if c <= n_tasks]
    env_kwargs = dict(
        backend=args.backend, phase_length=args.phase_length, n_cycles=2 if args.quick else 4
    )

    def make_env(capacity: int, eviction: str):
        return gym.make(
            nsr_gym.env_id(args.benchmark), capacity=capacity, eviction=eviction, **env_kwargs
        )

    revisits = budget.eviction_study(make_env, SimilarityRule, capacities, EVICTION_POLICIES, seeds)
    summary = budget.summarize_eviction(revisits)
    vit = budget.vit_entry_bytes()
    wall = time.perf_counter() - t0

    meta = manifest(
        command_line(),
        seeds,
        wall,
        tasks=args.tasks,
        benchmark=args.benchmark,
        env_kwargs=env_kwargs,
        capacities=capacities,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compression_sweep.csv", sweep)
    write_csv(out / "eviction_revisits.csv", revisits)
    write_csv(out / "eviction_summary.csv", summary)
    write_csv(out / "vit_b16_entry_bytes.csv", vit)
    rev = meta["git_revision"][:12]
    caption = f"`{meta['command']}` (seeds {seeds}, git {rev}, {meta['created_utc']})"
    figures = _plot(sweep, summary, out, caption)

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
    md = f"""# Memory budget ({args.benchmark} / {args.tasks}, {args.backend} backend for eviction)

{provenance_line(meta)}

## Bytes per task vs SVD rank / energy vs accuracy

Torch backend, `{args.tasks}` tasks; each task trains one subspace from fresh
({updates} Adam updates), its exact factors are recompressed at each setting
(`nsr_gym.bank.compress_lora`), stored as a real `BankEntry` (bytes = `nbytes`: factors, head,
key) and loaded back. Mean over tasks and seeds.

{markdown_table(table)}

## Top-K cap and eviction rules: recovery of retained and evicted tasks

`{args.benchmark}` ({env_kwargs}), similarity rule; each revisit is classed by its task's entry when
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
    atomic_write_text(out / "budget.md", md)
    write_json(out / "manifest.json", meta)
    print(md)
    print(f"wrote {out}/ in {wall:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "budget", help="bytes per task vs rank vs accuracy; top-K cap and eviction (results/budget)"
    )
    p.add_argument("--tasks", default="five_domains", help="task family of the compression sweep")
    p.add_argument("--benchmark", default="FiveDomains", help="benchmark of the eviction study")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "analytic"],
        help="backend of the eviction study",
    )
    p.add_argument(
        "--capacities", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3, 4, 5]
    )
    p.add_argument("--phase-length", type=int, default=15, help="L of the eviction study")
    p.add_argument(
        "--updates",
        type=int,
        default=None,
        help="Adam updates per task in the compression sweep (default 300, --quick 60)",
    )
    p.add_argument("--seeds", type=parse_seeds, default=None)
    p.add_argument("--quick", action="store_true", help="1 seed, short training, 2 cycles")
    p.add_argument("--out", default="results/budget")
    p.set_defaults(func=cmd_budget)
