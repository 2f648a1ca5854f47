"""Argument parsing shared by the CLI commands: seeds, executor and study options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Most seeds one command takes (each is one episode per agent and setting).
MAX_SEEDS = 10_000
#: Largest seed value (numpy's seeds are unsigned 32-bit words here).
MAX_SEED = 2**32 - 1


def parse_seeds(text: str) -> list[int]:
    """``"5"`` -> seeds 0..4; ``"3,7,9"`` -> those seeds (at most :data:`MAX_SEEDS`, each in
    ``0..MAX_SEED``)."""
    form = f"--seeds takes a count (5) or a list (0,3,7), got {text[:40]!r}"
    if len(text) > 200_000:
        raise argparse.ArgumentTypeError(form)
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            n = len(seeds)
        else:
            n = int(text)
            seeds = None
    except ValueError:
        raise argparse.ArgumentTypeError(form) from None
    if seeds is not None and not seeds:
        raise argparse.ArgumentTypeError("--seeds names nothing; pass e.g. 5 or 0,3,7")
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds must be at least 1")
    if n > MAX_SEEDS:
        raise argparse.ArgumentTypeError(
            f"--seeds {n:,} is above {MAX_SEEDS:,}: every seed is one episode per agent (and per "
            f"setting), so {n:,} seeds would run {n:,} episodes per agent and keep a unit log "
            "of each")
    if seeds is None:
        return list(range(n))
    if min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 0 (got {min(seeds)})")
    if max(seeds) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seeds: seed {max(seeds)} is not in 0..{MAX_SEED}")
    return seeds


def parse_ints(text: str) -> list[int]:
    """``"2,3,5"`` -> ``[2, 3, 5]``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 2,3,5, got {text!r}") from None


def add_executor_options(p: argparse.ArgumentParser, units: str = "units") -> None:
    """``--executor local|ray`` and ``--ray-address`` (see :mod:`nsr_gym.executors`)."""
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help=f"where the {units} run: here, or as Ray tasks (same results)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join ('auto', 'host:6379', 'ray://head:10001'); "
                        "default: a local Ray instance with 2 CPUs")


def add_study_options(p: argparse.ArgumentParser, name: str, seeds: str, quick: str) -> None:
    """The options every resumable study shares: seeds, output folder, ``--quick``, executor,
    resume and progress. ``name`` is the study's folder under ``results/``."""
    p.add_argument("--seeds", type=parse_seeds, default=None, help=f"a count or a list ({seeds})")
    p.add_argument("--out", default=None, help=f"output directory (default results/{name})")
    p.add_argument("--quick", action="store_true",
                   help=f"{quick}, under results/quick/{name} (a smoke test)")
    add_executor_options(p)
    p.add_argument("--no-resume", action="store_true", help="recompute finished units")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_study_parser(sub: argparse._SubParsersAction, name: str, help: str, seeds: str,
                     quick: str) -> argparse.ArgumentParser:
    """``nsr-gym study <name>`` with :func:`add_study_options`; returns its parser."""
    p = study_subparsers(sub).add_parser(name, help=help)
    add_study_options(p, name, seeds=seeds, quick=quick)
    return p


def study_kwargs(args: argparse.Namespace, name: str, seeds: list[int],
                 quick_seeds: list[int]) -> dict[str, Any]:
    """The keyword arguments of a resumable study's ``run_study`` from the options of
    :func:`add_study_options`: ``seeds`` (``--seeds``, else ``quick_seeds`` under ``--quick``
    and ``seeds`` otherwise), ``out`` (``--out``, else ``results[/quick]/<name>``), ``executor``,
    ``ray_address``, ``resume`` and ``progress``."""
    default_out = f"results/quick/{name}" if args.quick else f"results/{name}"
    return dict(seeds=args.seeds or (quick_seeds if args.quick else seeds),
                out=Path(args.out or default_out),
                executor=args.executor, ray_address=args.ray_address,
                resume=not args.no_resume, progress=not args.no_progress)


def study_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``study`` command's subcommands, shared with the other study modules."""
    study = sub.choices.get("study")
    if study is None:
        study = sub.add_parser("study", help="controlled studies (results/<study>)")
        return study.add_subparsers(dest="study", required=True)
    return next(a for a in study._actions if isinstance(a, argparse._SubParsersAction))
