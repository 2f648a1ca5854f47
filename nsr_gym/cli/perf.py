"""``nsr-gym perf``: how fast the hot paths are, against their references (results/perf/).

Argument parsing only; the run and report are :mod:`nsr_gym.studies.perf_report`'s, the
measurements :mod:`nsr_gym.studies.perf`'s.
"""

from __future__ import annotations

import argparse
import time


def cmd_perf(args: argparse.Namespace) -> int:
    from nsr_gym.studies.perf_report import run_perf

    out = args.out or ("results/perf/quick" if args.quick else "results/perf")
    t0 = time.perf_counter()
    print(run_perf(out, quick=args.quick, device=args.device, threads=args.threads))
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="measure the hot paths against their references (results/perf)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
    p.add_argument("--out", default=None, help="output directory (default results/perf)")
    p.add_argument("--device", default="cpu", help="torch device of the torch-backend cases")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op and numpy BLAS threads (default 1)")
    p.set_defaults(func=cmd_perf)
