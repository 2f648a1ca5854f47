"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table (no extra dependency)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if v != v else format(v, floatfmt)
        return str(v)

    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    """``"5"`` -> seeds 0..4; ``"3,7,9"`` -> those seeds."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count (5) or a list (0,3,7), got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds must be at least 1")
    return list(range(n))


def config_hash(obj: object) -> str:
    """A short stable hash of a JSON-able configuration (names resume directories)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


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


def study_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``study`` command's subcommands, shared with the other study modules."""
    study = sub.choices.get("study")
    if study is None:
        study = sub.add_parser("study", help="controlled studies (results/<study>)")
        return study.add_subparsers(dest="study", required=True)
    return next(a for a in study._actions if isinstance(a, argparse._SubParsersAction))


def run_episode_units(args: argparse.Namespace, units: list, policies: dict, out: Path,
                      desc: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run a study's env-episode units (:func:`nsr_gym.scaling.env_unit`) on ``--executor``,
    keeping each finished one under ``out/.units`` (resumed unless ``--no-resume``).

    Returns:
        One row per episode, and the unit counts for the manifest (computed, resumed, and the
        summed wall time of the episodes, whenever they ran).
    """
    import functools

    from nsr_gym import scaling
    from nsr_gym.executors import make_executor, run_units_kept

    fn = functools.partial(scaling.env_unit, policies=policies)
    with make_executor(args.executor, args.ray_address) as executor:
        results, resumed = run_units_kept(executor, fn, units, out / ".units",
                                          resume=not args.no_resume,
                                          progress=not args.no_progress, desc=desc)
    runs = pd.DataFrame([row for rows in results for row in rows])
    counts = {"computed": len(units) - resumed, "resumed": resumed,
              "unit_wall_s": round(float(runs["wall_s"].sum()), 1)}
    return runs, counts
