"""``nsr-gym study capacity``: env eviction, retention rules and the clairvoyant where memory binds.

Argument parsing only; the study and its report are :mod:`nsr_gym.studies.capacity`'s and
:mod:`nsr_gym.studies.capacity_report`'s. Writes ``results/capacity/`` (``runs.csv``,
``summary.csv``, ``clairvoyant.csv``, ``theorem3.csv``, ``capacity.md``, ``manifest.json``).
"""

from __future__ import annotations

import argparse
import sys
import time

from nsr_gym.cli._common import add_study_parser, study_kwargs


def cmd_capacity(args: argparse.Namespace) -> int:
    from nsr_gym.studies import capacity

    kw = study_kwargs(args, "capacity", seeds=list(range(10)), quick_seeds=[0, 1])
    torch_seeds = args.torch_seeds or (1 if args.quick else capacity.TORCH_SEEDS)
    t0 = time.perf_counter()
    try:
        md = capacity.run_study(quick=args.quick, torch_seeds=torch_seeds, **kw)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md)
    print(f"wrote {kw['out']}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_study_parser(
        sub, "capacity", help="a bank smaller than the stream: env eviction, retention rules, "
                              "keep-current and the clairvoyant (results/capacity)",
        seeds="default 10 on the analytic backend", quick="two small settings, 2 seeds "
                                                          "(1 on torch)")
    p.add_argument("--torch-seeds", type=int, default=None, metavar="N",
                   help="the torch backend runs the first N seeds (default 5)")
    p.set_defaults(func=cmd_capacity)
