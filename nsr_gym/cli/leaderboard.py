"""``nsr-gym leaderboard``: argument parsing for :mod:`nsr_gym.studies.leaderboard` (one table
over every benchmark run written by ``nsr-gym run``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from nsr_gym.studies.leaderboard import write_leaderboard

    try:
        md, n_figures = write_leaderboard(args.results, plots=not args.no_plots)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    print(f"wrote {Path(args.results)}/leaderboard.md, .csv, leaderboard_scores.csv and "
          f"{n_figures} figure(s)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard", help="aggregate every results/<benchmark>/ into results/leaderboard.md")
    p.add_argument("--results", default="results", help="folder holding the benchmark results")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_leaderboard)
