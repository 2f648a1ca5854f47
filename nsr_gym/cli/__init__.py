"""The ``nsr-gym`` command line: the one top floor that may import the library, agents and theory.

Each command lives in its own module here and contributes its subparsers through
``add_parsers(sub)``; nothing else in the project imports this package.
"""

from __future__ import annotations

import argparse
import importlib

#: Command modules, in the order ``nsr-gym --help`` lists them.
COMMAND_MODULES = ("run", "lora_check", "regret", "fit", "train", "study", "study_scaling",
                   "study_distillation", "study_novelty", "leaderboard", "budget", "perf",
                   "pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsr-gym",
        description="Gymnasium environments for continual learning as memory management.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"nsr_gym.cli.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
