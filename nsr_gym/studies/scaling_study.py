"""The scaling study of ``nsr-gym study scaling``: its plan, its sections' units, and the run
that writes ``results/scaling/``.

Does recall hold up as the bank grows into the hundreds of tasks? Sections (all by default):

* ``recall``: precision@1 against stored tasks (10..1000) and probe size, torch embeddings;
* ``similarity``: against how alike the tasks are (torch: partial permutations; analytic:
  ``task_similarity`` and key dimension);
* ``compression``: recovery and zero-shot accuracy of returning tasks against the SVD rank
  budget / energy threshold (torch env);
* ``horizon``: recovery time, recall and memory against the number of tasks on
  ``LongHorizonPermutedDigits`` (analytic to 1000 tasks, torch to 300);
* ``eviction``: every eviction rule under a cap (analytic, 300 tasks);
* ``diskbank``: a DiskBank of 1e5 entries: recall precision and latency, load latency, memory.

:func:`run_study` writes one CSV per section, ``scaling.md`` (tables, findings, provenance; see
:mod:`nsr_gym.studies.scaling_report`), PNG figures and ``manifest.json``. Units (the measurement
functions of :mod:`nsr_gym.studies.scaling`) run on any executor; finished units are kept under
``<out>/.units/`` so an interrupted study resumes.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.agents import RULE_AGENTS
from nsr_gym.bank import EVICTION_POLICIES
from nsr_gym.executors import Executor, Unit, make_executor, run_units_kept
from nsr_gym.jsonio import read_json
from nsr_gym.results import command_line, manifest, write_csv, write_json
from nsr_gym.studies import scaling
from nsr_gym.studies.scaling import LONG
from nsr_gym.studies.scaling_diskbank import diskbank_section
from nsr_gym.studies.scaling_report import write_report

#: The sections, in the order they run.
SECTIONS = ("recall", "similarity", "compression", "horizon", "eviction", "diskbank")
#: ``task_similarity`` of the analytic long-horizon runs with alike tasks.
SIMILAR = 0.9


def make_plan(quick: bool = False, disk_entries: int | None = None,
              paper_entries: int | None = None) -> dict[str, Any]:
    """Sizes of every section; ``quick`` is a smoke test (seconds, not a result).

    Args:
        quick: The smoke-test sizes.
        disk_entries: Entries of the disk bank (the last of the recall sizes beyond 1000 tasks).
        paper_entries: Entries of the paper-scale disk bank (0 skips it).
    """
    sizes = _sizes(quick)
    if disk_entries is not None:
        sizes["disk_entries"] = disk_entries
        sizes["large_n"] = [n for n in sizes["large_n"] if n < disk_entries]
        sizes["large_n"].append(disk_entries)
    if paper_entries is not None:
        sizes["paper_entries"] = paper_entries
    return sizes


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(n_stored=[5, 10, 20], probes=[8, 64], n_novel=5, sim_fractions=[1.0, 0.25],
                    sim_n=[5, 20], an_sims=[0.0, 0.9], an_dims=[16], an_n=[10, 50],
                    comp=[("rank", 1), ("energy", 0.99)],
                    comp_env=dict(n_tasks=4, phase_length=4, n_cycles=2),
                    horizon_analytic=[10, 30], horizon_torch=[], horizon_similar=[10],
                    horizon_env=dict(phase_length=4, n_cycles=2),
                    evict_env=dict(n_tasks=20, phase_length=4, n_cycles=2), caps=[5],
                    disk_entries=2000, paper_entries=0, large_n=[100, 1000, 2000])
    return dict(n_stored=[10, 20, 50, 100, 200, 300, 500, 750, 1000], probes=[4, 8, 16, 32, 64],
                n_novel=100, sim_fractions=[1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125],
                sim_n=[10, 30, 100, 300], an_sims=[0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98],
                an_dims=[16, 32], an_n=[10, 20, 50, 100, 200, 300, 500, 750, 1000],
                comp=[("rank", 1), ("rank", 2), ("rank", 3), ("energy", 0.5), ("energy", 0.8),
                      ("energy", 0.9), ("energy", 0.99), ("none", None)],
                comp_env=dict(n_tasks=20, phase_length=15, n_cycles=3),
                horizon_analytic=[10, 30, 100, 300, 500, 1000], horizon_torch=[30, 100, 300],
                horizon_similar=[10, 30, 100, 300, 500],
                horizon_env=dict(phase_length=10, n_cycles=3),
                evict_env=dict(n_tasks=300, phase_length=10, n_cycles=3), caps=[25, 50, 100, 200],
                disk_entries=100_000, paper_entries=10_000,
                large_n=[1000, 3000, 10_000, 30_000, 100_000])


# ----------------------------------------------------------------------------- sections


def _recall_units(plan: dict, seeds: list[int]) -> list:
    setting = {"n_stored": plan["n_stored"], "probe_sizes": plan["probes"],
               "n_novel": plan["n_novel"]}
    return [Unit("torch-embed", s, setting) for s in seeds]


def _similarity_units(plan: dict, seeds: list[int]) -> list:
    torch_units = [Unit("torch-embed", s, {"fraction": f, "n_stored": plan["sim_n"],
                                           "n_novel": plan["n_novel"] // 2, "probe_size": 64})
                   for f in plan["sim_fractions"] for s in seeds]
    an_units = [Unit("analytic-embed", s, {"key_dim": d, "similarities": plan["an_sims"],
                                           "n_stored": plan["an_n"], "n_novel": plan["n_novel"],
                                           "probe_noise": 0.05})
                for d in plan["an_dims"] for s in seeds]
    return [*torch_units, *an_units]


def _compression_units(plan: dict, seeds: list[int]) -> list:
    units = []
    for kind, value in plan["comp"]:
        learner = {"compression_rank": value if kind == "rank" else None,
                   "compression_energy": value if kind == "energy" else None}
        tags = {"budget": kind, "value": value if value is not None else np.nan}
        for agent in ("oracle", "similarity"):
            units += [Unit(agent, s, {"env_id": LONG, "tags": tags, "env_kwargs": {
                **plan["comp_env"], "backend": "torch", "learner": learner}}) for s in seeds]
    return units


def _horizon_units(plan: dict, seeds: list[int]) -> list:
    units = []
    for backend, sizes, agents, sds in (
            ("analytic", plan["horizon_analytic"], ("similarity", "oracle", "always-fresh"), seeds),
            ("torch", plan["horizon_torch"], ("similarity", "oracle"), seeds[:1])):
        for m in sizes:
            kw = {**plan["horizon_env"], "n_tasks": m, "backend": backend}
            if backend == "torch":
                kw["n_cycles"] = 2
            units += [Unit(a, s, {"env_id": LONG, "env_kwargs": kw,
                                  "tags": {"backend": backend, "n_tasks": m}})
                      for a in agents for s in sds]
    for m in plan["horizon_similar"]:  # alike tasks: recall degrades, and recovery with it
        kw = {**plan["horizon_env"], "n_tasks": m, "backend": "analytic",
              "learner": {"task_similarity": SIMILAR}}
        units += [Unit(a, s, {"env_id": LONG, "env_kwargs": kw, "tags": {
            "backend": f"analytic, task_similarity {SIMILAR}", "n_tasks": m}})
            for a in ("similarity", "oracle") for s in seeds]
    return units


def _eviction_units(plan: dict, seeds: list[int]) -> list:
    env = plan["evict_env"]
    units = [Unit("similarity", s, {"env_id": LONG, "tags": {"capacity": k, "eviction": rule},
                                    "env_kwargs": {**env, "backend": "analytic", "capacity": k,
                                                   "eviction": rule}})
             for k in plan["caps"] for rule in EVICTION_POLICIES for s in seeds]
    units += [Unit("similarity", s, {"env_id": LONG,
                                     "tags": {"capacity": env["n_tasks"], "eviction": "uncapped"},
                                     "env_kwargs": {**env, "backend": "analytic"}})
              for s in seeds]
    return units


def _units(section: str, plan: dict, seeds: list[int]) -> tuple[Any, list]:
    """The unit function and the units of one section."""
    env_fn = functools.partial(scaling.env_unit, policies=RULE_AGENTS)
    builders = {"recall": (scaling.torch_recall_unit, _recall_units),
                "similarity": (_dispatch, _similarity_units),
                "compression": (env_fn, _compression_units),
                "horizon": (env_fn, _horizon_units),
                "eviction": (env_fn, _eviction_units)}
    fn, build = builders[section]
    return fn, build(plan, seeds)


def _dispatch(unit: Unit) -> list[dict[str, Any]]:
    """The similarity section mixes two unit kinds; picklable by reference like the others."""
    if unit.agent == "torch-embed":
        return scaling.torch_similarity_unit(unit)
    return scaling.analytic_recall_unit(unit)


def _run_section(section: str, plan: dict, seeds: list[int], executor: Executor, out: Path,
                 resume: bool, progress: bool) -> pd.DataFrame:
    """Run one section's units (kept under ``out/.units/<section>``) and write its CSV."""
    fn, units = _units(section, plan, seeds)
    results, _ = run_units_kept(executor, fn, units, out / ".units" / section,
                                resume=resume, progress=progress, desc=section)
    frame = pd.DataFrame([row for rows in results for row in rows])
    write_csv(out / f"{section}.csv", frame)
    return frame


# ----------------------------------------------------------------------------- the study


def run_study(sections: list[str], plan: dict[str, Any], seeds: list[int], out: Path, *,
              executor: str = "local", ray_address: str | None = None, resume: bool = True,
              progress: bool = True, disk_dir: Path | None = None) -> str:
    """Run ``sections`` of the study and write their files and the report under ``out``.

    The unit functions run torch on one intra-op thread and restore the caller's setting
    after (:func:`nsr_gym.studies.threads.torch_threads`). The manifest records which run wrote
    each section's CSV, so sections can be rerun one at a time.

    Args:
        sections: Names from :data:`SECTIONS`.
        plan: The sizes of every section (:func:`make_plan`).
        seeds: Seeds of the units (the torch horizon runs take the first).
        out: Output directory (created).
        executor: ``"local"`` or ``"ray"``; ``ray_address`` the cluster to join.
        resume: Reuse the finished units kept under ``out/.units``.
        progress: Show progress bars.
        disk_dir: Where the disk banks are written, then deleted (default ``out/.diskbank``).

    Returns:
        The markdown report (also written to ``out/scaling.md``).

    Raises:
        nsr_gym.studies.scaling_diskbank.DiskSpaceError: when the disk banks would not fit in
            ``disk_dir``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}
    with make_executor(executor, ray_address) as ex:
        for section in sections:
            ts = time.perf_counter()
            if section == "diskbank":
                diskbank_section(plan, out, disk_dir, progress)
            else:
                _run_section(section, plan, seeds, ex, out, resume, progress)
            timings[section] = round(time.perf_counter() - ts, 1)
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, sections=sections,
                    section_wall_s=timings, executor=executor, plan=plan)
    previous = out / "manifest.json"
    history = read_json(previous, what="scaling manifest").get("sections_by_run", {}) \
        if previous.exists() else {}
    for section in sections:  # which run wrote each section's CSV
        history[section] = {k: meta[k] for k in ("command", "git_revision", "created_utc", "seeds")}
    meta["sections_by_run"] = history
    write_json(out / "manifest.json", meta)
    return write_report(out, meta)


def redraw(out: Path) -> str:
    """Redraw ``scaling.md`` and the figures from the CSVs and manifest already in ``out``.

    Raises:
        FileNotFoundError: when ``out/manifest.json`` is missing (the study has not run there).
    """
    path = Path(out) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run the study first")
    return write_report(Path(out), read_json(path, what="scaling manifest"))
