"""``nsr-gym study novelty``: a fixed novelty threshold against one that grows with the bank.

Argument parsing only; the study and its report are :mod:`nsr_gym.studies.novelty`'s. Writes
``results/novelty/`` (``runs.csv``, ``summary.csv``, ``novelty.md``, ``manifest.json``).
"""

from __future__ import annotations

import argparse
import time

from nsr_gym.cli._common import add_study_parser, study_kwargs


def cmd_novelty(args: argparse.Namespace) -> int:
    from nsr_gym.studies import novelty

    kw = study_kwargs(args, "novelty", seeds=[0, 1, 2], quick_seeds=[0])
    t0 = time.perf_counter()
    print(novelty.run_study(quick=args.quick, **kw))
    print(f"wrote {kw['out']}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_study_parser(
        sub, "novelty", help="fixed vs adaptive novelty threshold on the long-horizon stream "
                             "(results/novelty)",
        seeds="default 3", quick="small settings, one seed")
    p.set_defaults(func=cmd_novelty)
