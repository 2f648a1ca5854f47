"""``nsr-gym run`` and ``nsr-gym envs``: argument parsing for :mod:`nsr_gym.studies.benchmark`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from nsr_gym.bank import EVICTION_POLICIES
from nsr_gym.cli._common import add_executor_options, parse_seeds
from nsr_gym.envs import RETENTION_MODES
from nsr_gym.studies.benchmark import DEFAULT_AGENTS


def cmd_envs(args: argparse.Namespace) -> int:
    from nsr_gym.studies.benchmark import env_ids

    print("\n".join(env_ids()))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nsr_gym.executors import Sweep
    from nsr_gym.studies import benchmark

    cfg = benchmark.BenchmarkConfig(
        benchmark=args.benchmark,
        agents=tuple(a.strip() for a in args.agents.split(",") if a.strip()),
        seeds=None if args.seeds is None else tuple(args.seeds), backend=args.backend,
        cycles=args.cycles, reserve=args.reserve, distill_weight=args.distill_weight,
        capacity=args.capacity, retention=args.retention, eviction=args.eviction,
        env_kwargs=args.env_kwargs,
        data_root=args.data_root, weights=args.weights, arch=args.arch,
        verify=not args.no_verify, max_train=args.max_train, random_init=args.random_init,
        out=args.out, quick=args.quick,
        sweep=Sweep(executor=args.executor, ray_address=args.ray_address,
                    resume=not args.no_resume, progress=not args.no_progress))
    try:
        plan = benchmark.plan_benchmark(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md, wall = benchmark.run_benchmark(plan)
    print(md)
    print(f"wrote {plan.out}/ in {wall:.1f} s")
    return 0


def parse_env_kwargs(text: str) -> dict:
    """``--env-kwargs``: a JSON object of ``gym.make`` keywords."""
    from nsr_gym.jsonio import JsonFileError, parse_json

    try:  # bounded: a pathological argument gets a clear error, not a deep recursion
        value = parse_json(text, source="--env-kwargs")
    except JsonFileError as err:
        raise argparse.ArgumentTypeError(
            f"--env-kwargs takes a JSON object such as '{{\"lambda_switch\": 0.1}}', got "
            f"{text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"--env-kwargs takes a JSON object such as '{{\"lambda_switch\": 0.1}}', got "
            f"{type(value).__name__} {text!r}")
    return value


def _interruptible(command: Callable[[argparse.Namespace], int]
                   ) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends a command with a note on resuming instead of a traceback (exit status 130)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            print("\ninterrupted: finished (agent, seed) units are kept; run the same command "
                  "again to resume", file=sys.stderr)
            return 130
    return run


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="compare allocation policies on a benchmark and write results/")
    p.add_argument("--benchmark", default="CyclicSplitDigits",
                   help="benchmark name (see `nsr-gym envs`)")
    p.add_argument("--agents", default=",".join(DEFAULT_AGENTS),
                   help="comma-separated agent names or trained controllers ALGO:PATH "
                        "(e.g. maskable-ppo:results/train/run)")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="a count (5) or a list (0,3,7)")
    p.add_argument("--backend", default="torch", choices=["torch", "analytic"])
    p.add_argument("--cycles", type=int, default=None, help="override the number of cycles C")
    p.add_argument("--reserve", default=None, choices=["owner", "active"],
                   help="bank entries per task (owner, the default) or shared and updated in "
                        "place (active)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="torch learner's distillation weight (default 0: off)")
    bank = p.add_argument_group("the bank (default: one slot per task, the env evicts by lru)")
    bank.add_argument("--capacity", type=int, default=None, metavar="K",
                      help="bank slots K (below the number of tasks, memory binds)")
    bank.add_argument("--retention", default=None, choices=RETENTION_MODES,
                      help="who decides what the bank keeps: the env's --eviction, or the "
                           "agent's action (retention rules pin, lfu-retain, lru-retain; the "
                           "references belady-retain and clairvoyant; allocation-only agents "
                           "keep the env's eviction)")
    bank.add_argument("--eviction", default=None, choices=EVICTION_POLICIES,
                      help="the env's eviction policy when the bank is full (default lru)")
    p.add_argument("--env-kwargs", type=parse_env_kwargs, default=None, metavar="JSON",
                   help="more gym.make keywords, e.g. '{\"lambda_switch\": 0.1}' (merged in; "
                        "a key may not repeat a flag)")
    paper = p.add_argument_group("paper-scale benchmarks (SplitCIFAR100, FiveDatasets)")
    paper.add_argument("--data-root", default=None, help="folder with the datasets' files")
    paper.add_argument("--weights", default=None, help="torchvision state dict of --arch")
    paper.add_argument("--arch", default="vit_b_16", help="vit_b_16 (default) or resnet18")
    paper.add_argument("--no-verify", action="store_true",
                       help="skip torchvision's md5 checks of the data files")
    paper.add_argument("--max-train", type=int, default=None,
                       help="training examples kept per task (a seeded subset)")
    paper.add_argument("--random-init", action="store_true",
                       help="a random backbone instead of --weights (speed and memory runs)")
    p.add_argument("--out", default=None, help="output directory (default results/<benchmark>)")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 2 cycles, written under results/quick/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(agent, seed) units")
    p.set_defaults(func=_interruptible(cmd_run))

    p = sub.add_parser("envs", help="list the registered env ids")
    p.set_defaults(func=cmd_envs)
