"""``nsr-gym peers``: argument parsing for :mod:`nsr_gym.studies.peers` (Avalanche's Naive, LwF,
EWC and Replay beside NSR on one MNIST-1D stream; needs the ``peers`` extra)."""

from __future__ import annotations

import argparse
import sys

from nsr_gym.cli._common import add_executor_options, parse_seeds

# nsr_gym.studies.peers' defaults, without importing it here
DEFAULT_STRATEGIES = ("naive", "naive-shared-head", "lwf:alpha=1,temperature=2", "ewc:lambda=1",
                      "ewc:lambda=100", "ewc:lambda=10000", "replay:mem=200")


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names; a comma followed by ``key=value`` continues the strategy before it
    (``lwf:alpha=1,temperature=2,naive`` is two strategies)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if out and "=" in part and ":" not in part:
            out[-1] += "," + part
        elif part:
            out.append(part)
    return tuple(out)


def cmd_peers(args: argparse.Namespace) -> int:
    from nsr_gym.executors import Sweep
    from nsr_gym.studies.peers import PeersConfig, run_peers

    cfg = PeersConfig(
        benchmarks=_names(args.benchmarks), strategies=_names(args.strategies),
        nsr_agents=_names(args.nsr_agents), seeds=tuple(args.seeds), updates=args.updates,
        out=args.out, sweep=Sweep(executor=args.executor, ray_address=args.ray_address,
                                  resume=not args.no_resume, progress=not args.no_progress))
    try:
        md, wall = run_peers(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(md)
    print(f"wrote {cfg.out}/peers.md, .csv, peers_runs.csv, peers_matrices.csv in {wall:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peers", help="Avalanche's Naive, LwF, EWC and Replay beside NSR on one "
                                     "MNIST-1D stream (pip install 'nsr-gym[peers]')")
    p.add_argument("--benchmarks", default="CyclicSplitMNIST1D,CyclicSplitMNIST1DPretrained",
                   help="benchmarks whose tasks make the one-pass stream (comma-separated)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="Avalanche strategies NAME[:key=value,...]: naive, naive-shared-head, "
                        "lwf:alpha=A,temperature=T, ewc:lambda=L, replay:mem=N")
    p.add_argument("--nsr-agents", default="similarity,keep-current",
                   help="NSR agents on the same stream")
    p.add_argument("--seeds", type=parse_seeds, default=list(range(5)),
                   help="a count (5) or a list (0,3,7)")
    p.add_argument("--updates", type=int, default=None,
                   help="updates per task for every method (default: the benchmark's, 30)")
    p.add_argument("--out", default="results/peers", help="output directory")
    p.add_argument("--no-resume", action="store_true", help="recompute finished units")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(method, seed) units")
    p.set_defaults(func=cmd_peers)
