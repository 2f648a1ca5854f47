"""Writing results: atomic files and a manifest naming the command, seeds and git revision."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

_PACKAGES = ("nsr-gym", "gymnasium", "torch", "peft", "stable-baselines3", "sb3-contrib", "numpy",
             "pandas", "scikit-learn", "safetensors")


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` (plus ``-dirty`` with uncommitted changes), or ``"unknown"``."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
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
    return " ".join(["nsr-gym" if prog in ("nsr-gym", "cli.py", "__main__.py") else prog, *sys.argv[1:]])


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
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
        "versions": package_versions(),
        **extra,
    }


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary sibling and ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
