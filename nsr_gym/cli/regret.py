"""``nsr-gym regret``: argument parsing for :mod:`nsr_gym.studies.regret` (Theorem 1 checked on
the env) and, with ``--capacity K --retention-rule RULE``, for
:mod:`nsr_gym.studies.regret_capacity` (Theorem 3). The exit status is 1 only when a bound is
violated (or, for Theorem 3, a claimed attainment is refuted)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nsr_gym.cli._common import add_executor_options, parse_seeds
from nsr_gym.jsonio import parse_json, read_json
from nsr_gym.studies.regret import ANALYTIC_LEARNER, BANK, DEFAULT_AGENTS
from nsr_gym.studies.regret_capacity import CAPACITY_AGENTS
from nsr_gym.theory.capacity import RETENTION_RULES


def parse_learner(text: str | None) -> dict[str, Any]:
    """``--learner``: a JSON object or the path of a JSON file (``nsr-gym fit``'s
    ``analytic_config.json`` works as is: its ``config`` is taken)."""
    if not text:
        return {}
    try:
        is_file = len(text) < 4096 and Path(text).is_file()
    except OSError:  # not a path this system can have: JSON text
        is_file = False
    raw = read_json(Path(text), what="--learner file") if is_file else \
        parse_json(text, source="--learner", expect=dict, what="--learner")
    config = raw.get("config", raw)
    if not isinstance(config, dict):
        raise ValueError("--learner takes a JSON object (or a file holding one)")
    return config


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
    agents = None if args.agents is None else tuple(
        a.strip() for a in args.agents.split(",") if a.strip())
    if args.capacity is not None or args.retention_rule is not None:
        return _cmd_capacity(args, learner, agents)
    cfg = regret.RegretConfig(
        backend=args.backend, seeds=None if args.seeds is None else tuple(args.seeds),
        tasks=args.tasks, cycles=args.cycles, phase_length=args.phase_length, lam=args.lam,
        family=args.family, learner=learner,
        agents=agents or DEFAULT_AGENTS, resamples=args.resamples, tol=args.tol,
        max_width=args.max_width,
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


def _cmd_capacity(args: argparse.Namespace, learner: dict[str, Any],
                  agents: tuple[str, ...] | None) -> int:
    """``--capacity K --retention-rule RULE``: Theorem 3 (``studies.regret_capacity``)."""
    from nsr_gym.executors import Sweep
    from nsr_gym.studies import regret_capacity as rc

    if args.capacity is None or args.retention_rule is None:
        print("error: --capacity K and --retention-rule RULE go together (Theorem 3)",
              file=sys.stderr)
        return 2
    cfg = rc.CapacityConfig(
        capacity=args.capacity, rule=args.retention_rule, backend=args.backend,
        seeds=None if args.seeds is None else tuple(args.seeds), tasks=args.tasks,
        cycles=args.cycles, phase_length=args.phase_length, lam=args.lam, family=args.family,
        learner=learner, agents=agents or rc.CAPACITY_AGENTS, resamples=args.resamples,
        tol=args.tol, max_width=args.max_width, steps_log=args.steps_log, out=args.out,
        quick=args.quick,
        sweep=Sweep(executor=args.executor, ray_address=args.ray_address,
                    resume=not args.no_resume, progress=not args.no_progress))
    try:
        plan = rc.plan_capacity(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verdicts, md = rc.run_capacity(plan)
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
    p.add_argument("--agents", default=None,
                   help=f"comma-separated; must include {BANK} (THEORY.md's B) and always-fresh "
                   f"(default {','.join(DEFAULT_AGENTS)}; with --capacity: "
                   f"{','.join(CAPACITY_AGENTS)}, where bank-inf is B_inf)")
    p.add_argument("--capacity", type=int, default=None, metavar="K",
                   help="Theorem 3: a bank of K < M slots; every agent's regret against the "
                   "unbounded Bank (bank-inf) on the same seeds (needs --retention-rule)")
    p.add_argument("--retention-rule", default=None, choices=list(RETENTION_RULES),
                   help="with --capacity: pin (eviction='reject'), lru, fifo (eviction), belady "
                   "(retention='agent', forced insertion by the schedule)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tol", type=float, default=0.05, help="violated when ci_high < 1 - tol")
    p.add_argument("--max-width", type=float, default=0.5,
                   help="inconclusive when the CI is wider")
    p.add_argument("--steps-log", action="store_true",
                   help="also write steps.csv.gz (always on torch)")
    p.add_argument("--out", default=None,
                   help="output directory (default results/regret/<backend>; with --capacity "
                   "results/regret/capacity/<backend>/<rule>_K<K>)")
    p.add_argument("--quick", action="store_true", help="a tiny study under results/quick/regret/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(agent, seed) units")
    p.set_defaults(func=cmd_regret)
