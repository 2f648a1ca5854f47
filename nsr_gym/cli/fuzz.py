"""``nsr-gym fuzz``: argument parsing for :mod:`nsr_gym.studies.fuzz` (writes ``results/fuzz/``)."""

from __future__ import annotations

import argparse


def cmd_fuzz(args: argparse.Namespace) -> int:
    from nsr_gym.studies.fuzz import run_fuzz

    print(run_fuzz(out=args.out, cases=args.cases, seed=args.seed, families=args.families,
                   progress=not args.no_progress))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuzz", help="malformed files and values against every loader: counts "
                                    "per family (results/fuzz)")
    p.add_argument("--cases", type=int, default=200,
                   help="random cases per family on top of the hand-written ones (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    p.add_argument("--families", default=None,
                   help="comma-separated families to run (default: all)")
    p.add_argument("--out", default="results/fuzz", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fuzz)
