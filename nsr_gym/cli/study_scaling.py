"""``nsr-gym study scaling``: does recall hold up as the bank grows into the hundreds of tasks?

Writes ``results/scaling/``: one CSV per section, ``scaling.md`` (tables, findings, provenance),
PNG figures and ``manifest.json``. Sections (``--sections``, all by default):

* ``recall``: precision@1 against stored tasks (10..1000) and probe size, torch embeddings;
* ``similarity``: against how alike the tasks are (torch: partial permutations; analytic:
  ``task_similarity`` and key dimension);
* ``compression``: recovery and zero-shot accuracy of returning tasks against the SVD rank
  budget / energy threshold (torch env);
* ``horizon``: recovery time, recall and memory against the number of tasks on
  ``LongHorizonPermutedDigits`` (analytic to 1000 tasks, torch to 300);
* ``eviction``: every eviction rule under a cap (analytic, 300 tasks);
* ``diskbank``: a DiskBank of 1e5 entries: recall precision and latency, load latency, memory.

Units run on ``--executor local`` (default) or ``ray``; finished units are kept under
``<out>/.units/`` so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.cli._common import add_executor_options, parse_seeds, study_subparsers
from nsr_gym.cli.scaling_report import LONG, write_report

SECTIONS = ("recall", "similarity", "compression", "horizon", "eviction", "diskbank")
#: ``task_similarity`` of the analytic long-horizon runs with alike tasks.
SIMILAR = 0.9


def _plan(quick: bool) -> dict[str, Any]:
    """Sizes of every section; ``quick`` is a smoke test (seconds, not a result)."""
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
    from nsr_gym.executors import Unit

    setting = {"n_stored": plan["n_stored"], "probe_sizes": plan["probes"],
               "n_novel": plan["n_novel"]}
    return [Unit("torch-embed", s, setting) for s in seeds]


def _similarity_units(plan: dict, seeds: list[int]) -> list:
    from nsr_gym.executors import Unit

    torch_units = [Unit("torch-embed", s, {"fraction": f, "n_stored": plan["sim_n"],
                                           "n_novel": plan["n_novel"] // 2, "probe_size": 64})
                   for f in plan["sim_fractions"] for s in seeds]
    an_units = [Unit("analytic-embed", s, {"key_dim": d, "similarities": plan["an_sims"],
                                           "n_stored": plan["an_n"], "n_novel": plan["n_novel"],
                                           "probe_noise": 0.05})
                for d in plan["an_dims"] for s in seeds]
    return [*torch_units, *an_units]


def _compression_units(plan: dict, seeds: list[int]) -> list:
    from nsr_gym.executors import Unit

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
    from nsr_gym.executors import Unit

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
    from nsr_gym.bank import EVICTION_POLICIES
    from nsr_gym.executors import Unit

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
    from agents import RULE_AGENTS
    from nsr_gym import scaling

    env_fn = functools.partial(scaling.env_unit, policies=RULE_AGENTS)
    builders = {"recall": (scaling.torch_recall_unit, _recall_units),
                "similarity": (_dispatch, _similarity_units),
                "compression": (env_fn, _compression_units),
                "horizon": (env_fn, _horizon_units),
                "eviction": (env_fn, _eviction_units)}
    fn, build = builders[section]
    return fn, build(plan, seeds)


def _dispatch(unit):
    """The similarity section mixes two unit kinds; picklable by reference like the others."""
    from nsr_gym import scaling

    if unit.agent == "torch-embed":
        return scaling.torch_similarity_unit(unit)
    return scaling.analytic_recall_unit(unit)


def _run_section(section: str, plan: dict, seeds: list[int], executor, out: Path,
                 args: argparse.Namespace) -> pd.DataFrame:
    from nsr_gym.executors import run_units_kept
    from nsr_gym.results import write_csv

    fn, units = _units(section, plan, seeds)
    results, _ = run_units_kept(executor, fn, units, out / ".units" / section,
                                resume=not args.no_resume, progress=not args.no_progress,
                                desc=section)
    frame = pd.DataFrame([row for rows in results for row in rows])
    write_csv(out / f"{section}.csv", frame)
    return frame


def _diskbank_section(plan: dict, out: Path, args: argparse.Namespace) -> pd.DataFrame:
    """1e5 entries shaped like the torch learner's, keyed by real permuted-digit embeddings;
    optionally a paper-scale entry size. Written to ``--disk-dir`` and deleted after."""
    import shutil

    from nsr_gym import scaling
    from nsr_gym.results import write_csv

    n = plan["disk_entries"]
    disk_dir = Path(args.disk_dir or out / ".diskbank")
    need = n * sum(4 * int(np.prod(s)) for s in scaling.real_entry_shapes().values())
    paper = scaling.paper_entry_shapes().values()
    need += plan["paper_entries"] * sum(4 * int(np.prod(s)) for s in paper)
    disk_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(disk_dir).free
    if need > free / 4:
        raise SystemExit(f"error: the disk bank needs {need / 1e9:.1f} GB and {disk_dir} has "
                         f"{free / 1e9:.1f} GB free; lower --disk-entries or --paper-entries")
    t0 = time.perf_counter()
    keys = scaling.permuted_digit_keys(n, seed=0, n_probes=2, centre_tasks=min(n, 1000))
    key_s = time.perf_counter() - t0
    rows = []
    for size in plan["large_n"]:  # precision@1 of the same keys at growing bank sizes
        rng = np.random.default_rng(size)
        ids = rng.choice(size, size=min(2000, size), replace=False)
        k = keys[0, :size] / np.linalg.norm(keys[0, :size], axis=1, keepdims=True)
        q = keys[1, ids] / np.linalg.norm(keys[1, ids], axis=1, keepdims=True)
        top, own, rival = [], [], []
        for i in range(0, len(q), 200):
            sims = q[i:i + 200] @ k.T
            top.append(np.argmax(sims, axis=1))
            rows_i = np.arange(len(sims))
            own.append(sims[rows_i, ids[i:i + 200]].copy())
            sims[rows_i, ids[i:i + 200]] = -np.inf
            rival.append(sims.max(1))
        rows.append({"kind": "recall", "n_entries": size,
                     "precision_at_1": float(np.mean(np.concatenate(top) == ids)),
                     "self_cos": float(np.concatenate(own).mean()),
                     "rival_cos": float(np.concatenate(rival).mean())})
    for kind, count, shapes in (("real", n, scaling.real_entry_shapes()),
                                ("paper", plan["paper_entries"], scaling.paper_entry_shapes())):
        if count == 0:
            continue
        bank_keys = keys[0, :count]
        with _progress(count, f"diskbank {kind}", args) as bar:
            res = scaling.measure_diskbank(disk_dir / f"bank-{kind}", count, shapes, keys=bank_keys,
                                           queries=keys[1, :count], progress=bar)
        rows.append({"kind": kind, **res, "key_build_s": round(key_s, 1)})
    shutil.rmtree(disk_dir, ignore_errors=True)
    frame = pd.DataFrame(rows)
    write_csv(out / "diskbank.csv", frame)
    return frame


class _progress:
    """A tqdm bar advanced to an absolute count (the disk-bank writer reports entries written)."""

    def __init__(self, total: int, desc: str, args: argparse.Namespace) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="entry", disable=args.no_progress)

    def __enter__(self):
        return lambda done: self.bar.update(done - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- the command


def cmd_scaling(args: argparse.Namespace) -> int:
    from nsr_gym.executors import make_executor
    from nsr_gym.results import command_line, manifest, write_json

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"error: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = _plan(args.quick)
    if args.disk_entries is not None:
        plan["disk_entries"] = args.disk_entries
        plan["large_n"] = [n for n in plan["large_n"] if n < args.disk_entries]
        plan["large_n"].append(args.disk_entries)
    if args.paper_entries is not None:
        plan["paper_entries"] = args.paper_entries
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path(args.out or ("results/quick/scaling" if args.quick else "results/scaling"))
    if args.report_only:  # redraw scaling.md and the figures from the CSVs already there
        if not (out / "manifest.json").exists():
            print(f"error: {out}/manifest.json is missing; run the study first", file=sys.stderr)
            return 2
        print(write_report(out, json.loads((out / "manifest.json").read_text())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}
    with make_executor(args.executor, args.ray_address) as executor:
        for section in sections:
            ts = time.perf_counter()
            if section == "diskbank":
                _diskbank_section(plan, out, args)
            else:
                _run_section(section, plan, seeds, executor, out, args)
            timings[section] = round(time.perf_counter() - ts, 1)
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, sections=sections,
                    section_wall_s=timings, executor=args.executor, plan=plan)
    previous = out / "manifest.json"
    history = json.loads(previous.read_text()).get("sections_by_run", {}) \
        if previous.exists() else {}
    for section in sections:  # which run wrote each section's CSV
        history[section] = {k: meta[k] for k in ("command", "git_revision", "created_utc", "seeds")}
    meta["sections_by_run"] = history
    write_json(out / "manifest.json", meta)
    md = write_report(out, meta)
    print(md)
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = study_subparsers(sub).add_parser(
        "scaling", help="recall, recovery, memory and eviction from 10 to 1000 tasks; a 1e5-entry "
                        "disk bank (results/scaling)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: "
                                                                  f"{', '.join(SECTIONS)}")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="a count (3) or a list (0,1,2)")
    p.add_argument("--out", default=None, help="output directory (default results/scaling)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, written under "
                                                        "results/quick/scaling")
    p.add_argument("--disk-entries", type=int, default=None, help="entries of the disk bank "
                                                                  "(default 100000)")
    p.add_argument("--paper-entries", type=int, default=None,
                   help="entries of 0.29 MB in a second disk bank (default 10000; 0 skips it)")
    p.add_argument("--disk-dir", default=None, help="where the disk banks are written (then "
                                                    "deleted)")
    add_executor_options(p, "units")
    p.add_argument("--no-resume", action="store_true", help="recompute finished units")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw scaling.md and the figures from the CSVs in --out")
    p.set_defaults(func=cmd_scaling)
