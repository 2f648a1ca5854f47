"""``nsr-gym budget``: bytes per task vs rank, dtype vs accuracy; the top-K cap, eviction and a
byte budget.

Argument parsing only; the run and report are :mod:`nsr_gym.studies.budget_report`'s, the
measurements :mod:`nsr_gym.studies.budget`'s. Writes ``results/budget/``.
"""

from __future__ import annotations

import argparse
import time

from nsr_gym.cli._common import parse_ints, parse_seeds


def cmd_budget(args: argparse.Namespace) -> int:
    from nsr_gym.studies.budget_report import run_study

    t0 = time.perf_counter()
    print(run_study(args.out, args.seeds or ([0] if args.quick else [0, 1, 2]), tasks=args.tasks,
                    benchmark=args.benchmark, backend=args.backend, capacities=args.capacities,
                    phase_length=args.phase_length, n_cycles=2 if args.quick else 4,
                    updates=args.updates or (60 if args.quick else 300),
                    lora_ranks=args.lora_ranks or ([2] if args.quick else [1, 2, 4, 8, 16]),
                    byte_budgets=args.byte_budgets, tolerance=args.tolerance))
    print(f"wrote {args.out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "budget", help="bytes per task vs rank vs accuracy; top-K cap and eviction (results/budget)"
    )
    p.add_argument("--tasks", default="five_domains", help="task family of the compression sweep")
    p.add_argument("--benchmark", default="FiveDomains", help="benchmark of the eviction study")
    p.add_argument("--backend", default="torch", choices=["torch", "analytic"],
                   help="backend of the eviction study")
    p.add_argument("--capacities", type=parse_ints, default=[2, 3, 4, 5],
                   help="bank capacities K of the eviction study (default 2,3,4,5)")
    p.add_argument("--phase-length", type=int, default=15, help="L of the eviction study")
    p.add_argument("--updates", type=int, default=None,
                   help="Adam updates per task in the compression sweep (default 300, --quick 60)")
    p.add_argument("--lora-ranks", type=parse_ints, default=None,
                   help="LoRA ranks of the float16 / energy sweep (default 1,2,4,8,16; --quick 2)")
    p.add_argument("--byte-budgets", type=parse_ints, default=[10_000, 15_000],
                   help="capacity_bytes of the byte-budget study (default 10000,15000)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="accuracy (fraction) float16 may cost an entry under payload_dtype=auto")
    p.add_argument("--seeds", type=parse_seeds, default=None)
    p.add_argument("--quick", action="store_true", help="1 seed, short training, 2 cycles")
    p.add_argument("--out", default="results/budget")
    p.set_defaults(func=cmd_budget)
