"""``nsr-gym study scaling``: does recall hold up as the bank grows into the hundreds of tasks?

Argument parsing only; the plan, the sections and the run are
:mod:`nsr_gym.studies.scaling_study`'s, the measurements :mod:`nsr_gym.studies.scaling`'s, the
report :mod:`nsr_gym.studies.scaling_report`'s. Writes ``results/scaling/`` (one CSV per
section, ``scaling.md``, PNG figures, ``manifest.json``).
"""

from __future__ import annotations

import argparse
import sys
import time

from nsr_gym.cli._common import add_study_parser, study_kwargs

#: ``nsr_gym.studies.scaling_study.SECTIONS``, named here so that ``--help`` imports no study.
_SECTIONS = ("recall", "similarity", "compression", "horizon", "eviction", "diskbank")


def cmd_scaling(args: argparse.Namespace) -> int:
    from nsr_gym.studies import scaling_study
    from nsr_gym.studies.scaling_diskbank import DiskSpaceError

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(scaling_study.SECTIONS))
    if unknown:
        print(f"error: unknown section(s) {unknown}; known: {', '.join(scaling_study.SECTIONS)}",
              file=sys.stderr)
        return 2
    kw = study_kwargs(args, "scaling", seeds=[0, 1, 2], quick_seeds=[0])
    if args.report_only:  # redraw scaling.md and the figures from the CSVs already there
        try:
            print(scaling_study.redraw(kw["out"]))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    plan = scaling_study.make_plan(args.quick, disk_entries=args.disk_entries,
                                   paper_entries=args.paper_entries)
    t0 = time.perf_counter()
    try:
        md = scaling_study.run_study(sections, plan, disk_dir=args.disk_dir, **kw)
    except DiskSpaceError as err:
        print(f"error: {err}; lower --disk-entries or --paper-entries", file=sys.stderr)
        return 1
    print(md)
    print(f"wrote {kw['out']}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_study_parser(
        sub, "scaling", help="recall, recovery, memory and eviction from 10 to 1000 tasks; a "
                             "1e5-entry disk bank (results/scaling)",
        seeds="default 3", quick="tiny sizes")
    p.add_argument("--sections", default=",".join(_SECTIONS),
                   help=f"comma-separated: {', '.join(_SECTIONS)}")
    p.add_argument("--disk-entries", type=int, default=None,
                   help="entries of the disk bank (default 100000)")
    p.add_argument("--paper-entries", type=int, default=None,
                   help="entries of 0.29 MB in a second disk bank (default 10000; 0 skips it)")
    p.add_argument("--disk-dir", default=None,
                   help="where the disk banks are written (then deleted)")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw scaling.md and the figures from the CSVs in --out")
    p.set_defaults(func=cmd_scaling)
