"""Env-episode units for the studies: one (setting, agent, seed) episode a unit, run on an
executor and kept on disk so that an interrupted study resumes where it stopped."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from nsr_gym.executors import make_executor, run_units_kept


def run_episode_units(units: list, policies: dict, out: Path, desc: str, executor: str = "local",
                      ray_address: str | None = None, resume: bool = True,
                      progress: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run a study's env-episode units (:func:`nsr_gym.studies.scaling.env_unit`) on
    ``executor`` (``"local"`` or ``"ray"``), keeping each finished one under ``out/.units``.

    Returns:
        One row per episode, and the unit counts for the manifest (computed, resumed, and the
        summed wall time of the episodes, whenever they ran).
    """
    from nsr_gym.studies import scaling

    fn = functools.partial(scaling.env_unit, policies=policies)
    with make_executor(executor, ray_address) as ex:
        results, resumed = run_units_kept(ex, fn, units, out / ".units", resume=resume,
                                          progress=progress, desc=desc)
    runs = pd.DataFrame([row for rows in results for row in rows])
    counts = {"computed": len(units) - resumed, "resumed": resumed,
              "unit_wall_s": round(float(runs["wall_s"].sum()), 1)}
    return runs, counts
