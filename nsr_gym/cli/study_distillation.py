"""``nsr-gym study distillation``: what distillation buys when bank entries are shared.

Argument parsing only; the ablation and its report are :mod:`nsr_gym.studies.distillation`'s.
Writes ``results/distillation/`` (``runs.csv``, ``summary.csv``, ``distillation.md``,
``distillation.png``, ``manifest.json``).
"""

from __future__ import annotations

import argparse
import sys
import time

from nsr_gym.cli._common import add_study_parser, study_kwargs
from nsr_gym.studies import distillation


def cmd_distillation(args: argparse.Namespace) -> int:
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = sorted(set(benchmarks) - set(distillation.BENCHMARKS))
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from "
              f"{', '.join(distillation.BENCHMARKS)}", file=sys.stderr)
        return 2
    try:
        weights = sorted({0.0, *(float(w) for w in args.weights.split(",") if w.strip())})
    except ValueError:
        print(f"error: --weights takes numbers, e.g. 1 or 0.3,1,3 (got {args.weights!r})",
              file=sys.stderr)
        return 2
    if len(weights) < 2 or min(weights) < 0:
        print("error: --weights needs at least one weight > 0 (0, the control, is added)",
              file=sys.stderr)
        return 2
    kw = study_kwargs(args, "distillation", seeds=list(range(5)), quick_seeds=[0])
    t0 = time.perf_counter()
    print(distillation.run_study(benchmarks, weights, quick=args.quick, **kw))
    print(f"wrote {kw['out']}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_study_parser(
        sub, "distillation", help="ablation: BWT and accuracy with and without distillation, "
                                  "entries per task or shared (results/distillation)",
        seeds="default 5", quick="short episodes, one seed")
    p.add_argument("--benchmarks", default=",".join(distillation.BENCHMARKS),
                   help=f"comma-separated, from {', '.join(distillation.BENCHMARKS)}")
    p.add_argument("--weights", default="0.3,1,3",
                   help="distillation weights to compare with 0, comma-separated (default 0.3,1,3)")
    p.set_defaults(func=cmd_distillation)
