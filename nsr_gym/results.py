"""Writing results: tables, CSV and JSON files, and the manifest naming the command, seeds and
git revision that every figure in ``results/`` carries. Files are written atomically
(:mod:`nsr_gym.atomic`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from nsr_gym.atomic import atomic_write_text

_PACKAGES = ("nsr-gym", "gymnasium", "torch", "peft", "stable-baselines3", "sb3-contrib", "numpy",
             "pandas", "scikit-learn", "safetensors")


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` (plus ``-dirty`` with uncommitted changes to the code), or
    ``"unknown"``.

    The revision names the code a figure was computed with, so ``results/`` itself is left out
    of the check: regenerating one committed result must not mark the next one's code dirty.
    """
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], cwd=cwd, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def command_line() -> str:
    """The command as the user typed it (``nsr-gym ...``)."""
    prog = Path(sys.argv[0]).name
    shown = "nsr-gym" if prog in ("nsr-gym", "cli.py", "__main__.py") else prog
    return " ".join([shown, *sys.argv[1:]])


def manifest(command: str, seeds: list[int], wall_time_s: float, **extra: Any) -> dict[str, Any]:
    """The provenance record written next to every result."""
    import torch

    return {
        "command": command,
        "seeds": list(seeds),
        "git_revision": git_revision(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                               else "cpu")},
        "versions": package_versions(),
        **extra,
    }


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, float_format: str = "%.6g") -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def provenance_line(meta: dict[str, Any]) -> str:
    """One markdown line naming the command, seeds and revision of a table."""
    seeds = meta["seeds"]
    seed_txt = f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 2 else ",".join(map(str, seeds))
    return (f"Written by `{meta['command']}` (seeds {seed_txt}, git {meta['git_revision'][:12]}, "
            f"{meta['created_utc']}).")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of ``frame`` (no extra dependency); floats as ``floatfmt``."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if v != v else format(v, floatfmt)
        return str(v)

    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)
