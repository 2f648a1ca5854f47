"""``nsr-gym run`` and ``nsr-gym envs``: compare allocation policies on a benchmark."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from nsr_gym.cli._common import add_executor_options, config_hash, markdown_table, parse_seeds

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
    from agents import evaluate, make_agent
    from nsr_gym import metrics
    from nsr_gym.results import (atomic_write_text, command_line, manifest, provenance_line,
                                 write_csv, write_json)

    known = [*nsr_gym.BENCHMARKS, *nsr_gym.PAPER_BENCHMARKS]
    if args.benchmark not in known:
        print(f"error: unknown benchmark {args.benchmark!r}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    specs = [a.strip() for a in args.agents.split(",") if a.strip()]
    try:  # a rule's name, or a trained controller ALGO:PATH (agents.specs)
        built = [make_agent(spec) for spec in specs]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    agents = [p.name for p in built]
    by_name = dict(zip(agents, built, strict=True))
    spec_of = dict(zip(agents, specs, strict=True))
    # A trained controller's units are keyed by its weights' checksum: retrained, it reruns.
    tags = {p.name: "@" + p.weights_sha256[:12] for p in built if getattr(p, "weights_sha256", "")}
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else list(range(5)))
    problems = _list_problems("--agents", agents, "similarity,oracle") + \
        _list_problems("--seeds", seeds, "0,1,2 or a count such as 3")
    if any(s < 0 for s in seeds):
        problems.append(f"--seeds must be >= 0 (got {seeds})")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    env_kwargs, problem = _env_kwargs(args, args.benchmark in nsr_gym.PAPER_BENCHMARKS)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.quick:
        env_kwargs.update(n_cycles=2)
    if args.cycles is not None:
        env_kwargs["n_cycles"] = args.cycles
    out = Path(args.out or (Path("results") / ("quick" if args.quick else "") / args.benchmark
                            / ("" if args.backend == "torch" else args.backend)))
    env_id = nsr_gym.env_id(args.benchmark)
    # Make the env once up front so configuration errors surface before any work starts.
    try:
        probe = gym.make(env_id, **env_kwargs)
        n_steps = probe.unwrapped.n_steps
        probe.close()
    except (ValueError, FileNotFoundError) as err:  # FileNotFoundError: paper-scale files
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot write results to {out} ({err}); pass --out DIR, a directory you "
              "can write", file=sys.stderr)
        return 2

    # Finished (agent, seed) units are kept, so an interrupted run resumes where it stopped.
    units_dir = out / ".units" / config_hash({"env": env_id, **env_kwargs})
    def unit_path(agent: str, seed: int) -> Path:
        return units_dir / f"{agent}{tags.get(agent, '')}__seed{seed}.csv"

    def skip(agent: str, seed: int) -> pd.DataFrame | None:
        return None if args.no_resume else read_unit(unit_path(agent, seed), agent, seed, n_steps)

    def save(agent: str, seed: int, log: pd.DataFrame) -> None:
        write_csv(unit_path(agent, seed), log, float_format="%.17g")

    factories = {name: (lambda p=by_name[name]: p) for name in agents}
    t0 = time.perf_counter()
    if args.executor == "local":
        steps = evaluate(lambda: gym.make(env_id, **env_kwargs), factories, seeds,
                         progress=not args.no_progress, on_unit_done=save, skip=skip)
    else:  # the same units as Ray tasks: same seeds, same logs (tests/test_executors.py)
        from nsr_gym.executors import Unit, make_executor, run_units

        units = [Unit(a, s, {"env_id": env_id, "env_kwargs": env_kwargs, "spec": spec_of[a]})
                 for a in agents for s in seeds]
        with make_executor(args.executor, args.ray_address) as executor:
            logs = run_units(executor, rollout_unit, units, skip=lambda u: skip(u.agent, u.seed),
                             on_done=lambda u, log: save(u.agent, u.seed, log),
                             progress=not args.no_progress, desc="rollouts")
        steps = pd.concat(logs, ignore_index=True)
    wall = time.perf_counter() - t0

    runs = metrics.summarize(steps, reference="oracle" if "oracle" in agents else None)
    classes = {name: by_name[name].memory_class for name in agents}
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
    atomic_write_text(out / "leaderboard.md", md)
    write_json(out / "manifest.json", meta)
    print(md)
    print(f"wrote {out}/ in {wall:.1f} s")
    return 0



def _env_kwargs(args: argparse.Namespace, paper: bool) -> tuple[dict, str | None]:
    """``gym.make`` keywords from the flags, or a message saying which flag is wrong."""
    kwargs: dict = {"backend": args.backend}
    learner: dict = {}
    if args.reserve is not None:
        kwargs["reserve"] = args.reserve
    if args.distill_weight is not None:
        learner["distill_weight"] = args.distill_weight
    paper_flags = {"--data-root": args.data_root, "--weights": args.weights,
                   "--max-train": args.max_train}
    if not paper:
        given = [flag for flag, v in paper_flags.items() if v is not None]
        if args.random_init:
            given.append("--random-init")
        if given:
            return kwargs, (f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only for "
                            "the paper-scale benchmarks (SplitCIFAR100, FiveDatasets)")
    else:
        if args.backend != "torch":
            return kwargs, "the paper-scale benchmarks run on the torch backend only"
        if args.data_root is None:
            return kwargs, (f"{args.benchmark} reads local files: pass --data-root DIR (and "
                            "--weights FILE); the README's 'Paper scale' lists the files")
        kwargs.update(data_root=str(args.data_root), arch=args.arch, verify=not args.no_verify,
                      weights=None if args.weights is None else str(args.weights))
        if args.max_train is not None:
            kwargs["max_train"] = args.max_train
        if args.random_init:
            learner["random_init"] = True
    if learner:
        kwargs["learner"] = learner
    return kwargs, None


def _interruptible(command):
    """Ctrl-C ends a command with a note on resuming instead of a traceback (exit status 130)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            print("\ninterrupted: finished (agent, seed) units are kept; run the same command "
                  "again to resume", file=sys.stderr)
            return 130
    return run


def _list_problems(flag: str, items: list, example: str) -> list[str]:
    if not items:
        return [f"{flag} names nothing; pass e.g. {flag} {example}"]
    twice = sorted({str(i) for i in items if items.count(i) > 1})
    return [f"{flag} lists {', '.join(twice)} more than once"] if twice else []


def read_unit(path: Path, agent: str, seed: int, n_steps: int) -> pd.DataFrame | None:
    """The stored log of a finished (agent, seed) unit, or ``None`` to run it (again).

    Unit files are written atomically (``results.write_csv``), so a crash leaves either a
    complete file or none; a file that is still not a complete log (other columns, other unit,
    fewer than ``n_steps`` rows: written by another version, or cut short by hand) is reported
    and recomputed, never counted. Floats are read back exactly (``%.17g`` and round-trip parsing).
    """
    from agents.evaluation import STEP_COLUMNS

    if not path.is_file():
        return None
    try:
        log = pd.read_csv(path, float_precision="round_trip")
        problem = ("other columns" if list(log.columns) != STEP_COLUMNS
                   else f"{len(log)} of {n_steps} steps" if len(log) != n_steps
                   else "another unit's rows" if not ((log["agent"] == agent).all()
                                                      and (log["seed"] == seed).all())
                   else None)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        problem = f"unreadable ({exc})"
    if problem is None:
        return log
    print(f"warning: {path} is not a complete unit log ({problem}); running {agent} seed "
          f"{seed} again", file=sys.stderr)
    return None


def rollout_unit(unit) -> pd.DataFrame:
    """One (agent, seed) rollout on a fresh env: the picklable unit of ``--executor ray``."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs in a fresh worker
    from agents import make_agent, rollout

    env = gym.make(unit.setting["env_id"], **unit.setting["env_kwargs"])
    try:
        policy = make_agent(unit.setting.get("spec", unit.agent))
        return rollout(env, policy, unit.seed, agent_name=unit.agent)
    finally:
        env.close()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="compare allocation policies on a benchmark and write results/")
    p.add_argument("--benchmark", default="CyclicSplitDigits", help="benchmark name (see `nsr-gym envs`)")
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
    p.add_argument("--quick", action="store_true", help="2 seeds, 2 cycles, written under results/quick/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(agent, seed) units")
    p.set_defaults(func=_interruptible(cmd_run))

    p = sub.add_parser("envs", help="list the registered env ids")
    p.set_defaults(func=cmd_envs)
