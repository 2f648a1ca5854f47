"""``nsr-gym study controllers``: the allocation rule vs learned controllers, the Bank held fixed.

Argument parsing only; the study is :mod:`nsr_gym.studies.controllers` (training, evaluation),
:mod:`nsr_gym.studies.controller_tables` (tables) and :mod:`nsr_gym.studies.controllers_report`
(the run and the files of ``results/controllers/``). This module also creates the ``study``
command whose other subcommands the ``study_*`` modules add.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nsr_gym.cli._common import parse_seeds, study_subparsers

#: The keys of ``nsr_gym.studies.controllers.SETTINGS``, named here so that parsing does not
#: import the study (and stable-baselines3 with it).
_SETTINGS = ("cyclic", "recurring", "cyclic-k3")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in _SETTINGS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown setting(s) {bad}; choose from {_SETTINGS}")
    return names


def cmd_controllers(args: argparse.Namespace) -> int:
    from nsr_gym.studies.controllers import StudyConfig
    from nsr_gym.studies.controllers_report import run_study

    cfg = StudyConfig(
        seeds=args.seeds or ([0, 1] if args.quick else list(range(5))),
        settings=args.settings,
        timesteps=args.timesteps or (3_000 if args.quick else 40_000),
        torch_timesteps=(
            args.torch_timesteps
            if args.torch_timesteps is not None
            else (600 if args.quick else 3_000)
        ),
        torch_eval_settings=tuple(s for s in args.torch_eval if s in args.settings),
        ppo_settings=args.ppo_settings,
        workers=args.workers,
        out=str(Path(args.out or ("results/quick/controllers" if args.quick
                                  else "results/controllers"))),
    )
    t0 = time.perf_counter()
    print(run_study(cfg, benchmark=not args.no_benchmark, rerun_benchmark=args.rerun_benchmark,
                    benchmark_max_timesteps=args.benchmark_max_timesteps))
    print(f"[{time.strftime('%H:%M:%S')}] wrote {cfg.out}/ in {time.perf_counter() - t0:.0f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = study_subparsers(sub).add_parser(
        "controllers",
        help="similarity rule vs PPO / MaskablePPO vs oracle vs memoryless (results/controllers)",
    )
    c.add_argument("--seeds", type=parse_seeds, default=None, help="a count (5) or a list (0,3,7)")
    c.add_argument(
        "--settings", type=_names, default=_SETTINGS, help=f"comma-separated, from {_SETTINGS}"
    )
    c.add_argument(
        "--timesteps", type=int, default=None, help="analytic training budget (default 40000)"
    )
    c.add_argument(
        "--torch-timesteps",
        type=int,
        default=None,
        help="budget of MaskablePPO trained on the torch backend (default 3000; 0: none)",
    )
    c.add_argument(
        "--torch-eval",
        type=_names,
        default=("cyclic",),
        help="settings also evaluated on the torch backend (default cyclic)",
    )
    c.add_argument(
        "--ppo-settings",
        type=_names,
        default=("cyclic",),
        help="settings where PPO is trained besides MaskablePPO (default cyclic)",
    )
    c.add_argument("--workers", type=int, default=2, help="training processes in parallel")
    c.add_argument("--benchmark-max-timesteps", type=int, default=200_000)
    c.add_argument("--no-benchmark", action="store_true", help="skip the time-to-5%% benchmark")
    c.add_argument(
        "--rerun-benchmark", action="store_true", help="rerun it even if benchmark.json exists"
    )
    c.add_argument("--out", default=None, help="output directory (default results/controllers)")
    c.add_argument(
        "--quick", action="store_true", help="2 seeds, tiny budgets, under results/quick/"
    )
    c.set_defaults(func=cmd_controllers)
