"""``nsr-gym regret``: argument parsing for :mod:`nsr_gym.studies.regret` (Theorem 1 checked on
the env). The exit status is 1 only when a bound is violated."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nsr_gym.cli._common import add_executor_options, parse_seeds
from nsr_gym.studies.regret import ANALYTIC_LEARNER, BANK, DEFAULT_AGENTS


def parse_learner(text: str | None) -> dict[str, Any]:
    """``--learner``: a JSON object or the path of a JSON file (``nsr-gym fit``'s
    ``analytic_config.json`` works as is: its ``config`` is taken)."""
    if not text:
        return {}
    path = Path(text)
    raw = json.loads(path.read_text()) if path.exists() else json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("--learner takes a JSON object (or a file holding one)")
    return raw.get("config", raw)


def cmd_regret(args: argparse.Namespace) -> int:
    import torch

    from nsr_gym.executors import Sweep
    from nsr_gym.studies import regret

    torch.set_num_threads(args.threads)  # one thread is fastest for these small networks
    try:
        learner = parse_learner(args.learner)
    except ValueError as err:
        print(f"error: --learner: {err}", file=sys.stderr)
        return 2
    cfg = regret.RegretConfig(
        backend=args.backend, seeds=None if args.seeds is None else tuple(args.seeds),
        tasks=args.tasks, cycles=args.cycles, phase_length=args.phase_length, lam=args.lam,
        family=args.family, learner=learner,
        agents=tuple(a.strip() for a in args.agents.split(",") if a.strip()),
        resamples=args.resamples, tol=args.tol, max_width=args.max_width,
        steps_log=args.steps_log, out=args.out, quick=args.quick,
        sweep=Sweep(executor=args.executor, ray_address=args.ray_address,
                    resume=not args.no_resume, progress=not args.no_progress))
    try:
        plan = regret.plan_regret(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verdicts, md = regret.run_regret(plan)
    print(md)
    print(f"wrote {plan.out}/")
    return 1 if verdicts["overall"] == "violated" else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("regret", help="check Theorem 1: regret slopes of memoryless agents "
                       "against the bank, with seed-bootstrap CIs and a one-sided test")
    p.add_argument("--backend", default="analytic", choices=["analytic", "torch"])
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="a count or a list (default 200 analytic, 10 torch; --quick: 8 / 2)")
    p.add_argument("--tasks", type=int, default=5, help="M, tasks in the cycle (default 5)")
    p.add_argument("--cycles", type=int, default=None, help="C (default 6 analytic, 5 torch)")
    p.add_argument("--phase-length", type=int, default=None,
                   help="L, steps per phase (default 30)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.05,
                   help="switching cost (default 0.05)")
    p.add_argument("--family", default=None, help="task family (default: split_digits when M is "
                   "1, 2 or 5, permuted_digits otherwise)")
    p.add_argument("--learner", default=None, help="learner overrides: JSON object or file "
                   f"(analytic default {json.dumps(ANALYTIC_LEARNER)})")
    p.add_argument("--agents", default=",".join(DEFAULT_AGENTS),
                   help=f"comma-separated; must include {BANK} (THEORY.md's B) and always-fresh")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tol", type=float, default=0.05, help="violated when ci_high < 1 - tol")
    p.add_argument("--max-width", type=float, default=0.5,
                   help="inconclusive when the CI is wider")
    p.add_argument("--steps-log", action="store_true",
                   help="also write steps.csv.gz (always on torch)")
    p.add_argument("--out", default=None,
                   help="output directory (default results/regret/<backend>)")
    p.add_argument("--quick", action="store_true", help="a tiny study under results/quick/regret/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(agent, seed) units")
    p.set_defaults(func=cmd_regret)
