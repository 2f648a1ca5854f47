"""The ``nsr-gym`` command line: the one top floor that may import the library, agents and theory.

Each command lives in its own module here and contributes its subparsers through
``add_parsers(sub)``; nothing else in the project imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Command modules, in the order ``nsr-gym --help`` lists them.
COMMAND_MODULES = ("run", "lora_check", "regret", "fit", "train", "study", "study_scaling",
                   "study_distillation", "study_novelty", "study_capacity", "leaderboard",
                   "budget", "perf", "pretrain", "peers", "fuzz", "study_hard_track")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsr-gym",
        description="Gymnasium environments for continual learning as memory management.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"nsr_gym.cli.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 2 with a one-line message, not a traceback, for anything a
    user passes or points at that is refused (``ValueError``, ``TypeError``, ``OSError``: a
    malformed file, a missing one, a value out of range, an unreachable Ray address). Set
    ``NSR_GYM_TRACEBACK=1`` to see the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as err:
        if os.environ.get("NSR_GYM_TRACEBACK"):
            raise
        print(f"nsr-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
