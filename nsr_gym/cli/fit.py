"""``nsr-gym fit``: argument parsing for :mod:`nsr_gym.studies.fit` (the analytic backend fitted
to logged runs, and its prediction error on regret slopes and recovery times)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nsr_gym.cli._common import parse_seeds


def cmd_fit(args: argparse.Namespace) -> int:
    import torch

    from nsr_gym.executors import Sweep
    from nsr_gym.studies import fit

    torch.set_num_threads(1)  # one thread is fastest for these small networks
    cfg = fit.FitConfig(
        source=args.source, out=args.out, lam=args.lam,
        seeds=None if args.seeds is None else tuple(args.seeds), kappa_source=args.kappa_source,
        resamples=args.resamples, predict=not args.no_predict,
        capacity_from=tuple(args.capacity_from),
        sweep=Sweep(resume=not args.no_resume, progress=not args.no_progress))
    try:
        fitted = fit.fit_source(cfg)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fitted analytic config: {json.dumps(fitted.config)}")
    if not cfg.predict:
        return 0
    print(fit.predict(cfg, fitted))
    print(f"wrote {Path(cfg.out)}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit the analytic backend to logged runs and measure its "
                       "prediction error on regret slopes and recovery times")
    p.add_argument("--from", dest="source", required=True,
                   help="a results folder (phases.csv[.gz], steps.csv[.gz]) or one of those files")
    p.add_argument("--out", default="results/fit", help="output folder (default results/fit)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="switching cost (default: from the input's manifest, else 0.05)")
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="seeds of the fitted analytic runs (default 200)")
    p.add_argument("--kappa-source", default="revisit", choices=["revisit", "truncation"],
                   help="kappa from the bank's first revisit step (effective, default) or from "
                        "the truncation gap eps alone (A3)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--no-predict", action="store_true", help="only fit and write the config")
    p.add_argument("--capacity-from", nargs="+", default=[], metavar="DIR",
                   help="nsr-gym regret --capacity folders whose slopes (against B_inf) the "
                        "negative-transfer model predicts too")
    p.add_argument("--no-resume", action="store_true", help="recompute analytic units")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)
