"""``nsr-gym run`` and ``nsr-gym envs``: compare allocation policies on a benchmark."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from nsr_gym.cli._common import config_hash, markdown_table, parse_seeds

DEFAULT_AGENTS = ("similarity", "oracle", "round-robin", "random-slot", "keep-current",
                  "always-fresh", "fixed-slot")


def cmd_envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs

    for env_id in sorted(k for k in gym.registry if k.startswith("nsr_gym/")):
        print(env_id)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import nsr_gym
    from agents import RULE_AGENTS, evaluate
    from nsr_gym import metrics
    from nsr_gym.results import command_line, manifest, provenance_line, write_csv, write_json

    if args.benchmark not in nsr_gym.BENCHMARKS:
        print(f"error: unknown benchmark {args.benchmark!r}; known: {', '.join(nsr_gym.BENCHMARKS)}",
              file=sys.stderr)
        return 2
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = [a for a in agents if a not in RULE_AGENTS]
    if unknown:
        print(f"error: unknown agent(s) {unknown}; known: {', '.join(sorted(RULE_AGENTS))}", file=sys.stderr)
        return 2
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else list(range(5)))
    env_kwargs: dict = {"backend": args.backend}
    if args.quick:
        env_kwargs.update(n_cycles=2)
    if args.cycles is not None:
        env_kwargs["n_cycles"] = args.cycles
    out = Path(args.out or (Path("results") / ("quick" if args.quick else "") / args.benchmark
                            / ("" if args.backend == "torch" else args.backend)))
    env_id = nsr_gym.env_id(args.benchmark)
    # Make the env once up front so configuration errors surface before any work starts.
    try:
        gym.make(env_id, **env_kwargs).close()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Finished (agent, seed) units are kept, so an interrupted run resumes where it stopped.
    units_dir = out / ".units" / config_hash({"env": env_id, **env_kwargs})
    def unit_path(agent: str, seed: int) -> Path:
        return units_dir / f"{agent}__seed{seed}.csv"

    def skip(agent: str, seed: int) -> pd.DataFrame | None:
        p = unit_path(agent, seed)
        return pd.read_csv(p) if p.exists() and not args.no_resume else None

    def save(agent: str, seed: int, log: pd.DataFrame) -> None:
        write_csv(unit_path(agent, seed), log, float_format="%.17g")

    factories = {name: RULE_AGENTS[name] for name in agents}
    t0 = time.perf_counter()
    steps = evaluate(lambda: gym.make(env_id, **env_kwargs), factories, seeds,
                     progress=not args.no_progress, on_unit_done=save, skip=skip)
    wall = time.perf_counter() - t0

    runs = metrics.summarize(steps, reference="oracle" if "oracle" in agents else None)
    classes = {name: RULE_AGENTS[name]().memory_class for name in agents}
    board = metrics.leaderboard(runs, classes)
    phases = pd.concat(
        [metrics.phase_table(g).assign(agent=a, seed=s) for (a, s), g in steps.groupby(["agent", "seed"], sort=False)],
        ignore_index=True)
    phases = phases[["agent", "seed"] + [c for c in phases.columns if c not in ("agent", "seed")]]

    meta = manifest(command_line(), seeds, wall, benchmark=args.benchmark, env_id=env_id,
                    env_kwargs=env_kwargs, agents=agents,
                    recovery_convention=metrics.recovery_convention())
    write_csv(out / "leaderboard.csv", board)
    write_csv(out / "runs.csv", runs)
    write_csv(out / "phases.csv", phases)
    table = markdown_table(board)
    md = (f"# Leaderboard: {args.benchmark} ({args.backend} backend)\n\n{provenance_line(meta)}\n\n"
          f"{table}\n\nReturn: mean over seeds with a 95% bootstrap CI. Regret: oracle return minus "
          f"the agent's, same seed. BWT / forgetting: at each task's return (see nsr_gym.metrics). "
          f"Recovery: {metrics.recovery_convention()}. MB = 10^6 bytes of bank tensors.\n")
    (out / "leaderboard.md").write_text(md)
    write_json(out / "manifest.json", meta)
    print(md)
    print(f"wrote {out}/ in {wall:.1f} s")
    return 0



def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="compare allocation policies on a benchmark and write results/")
    p.add_argument("--benchmark", default="CyclicSplitDigits", help="benchmark name (see `nsr-gym envs`)")
    p.add_argument("--agents", default=",".join(DEFAULT_AGENTS), help="comma-separated agent names")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="a count (5) or a list (0,3,7)")
    p.add_argument("--backend", default="torch", choices=["torch", "analytic"])
    p.add_argument("--cycles", type=int, default=None, help="override the number of cycles C")
    p.add_argument("--out", default=None, help="output directory (default results/<benchmark>)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 2 cycles, written under results/quick/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("envs", help="list the registered env ids")
    p.set_defaults(func=cmd_envs)
