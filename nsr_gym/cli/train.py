"""``nsr-gym train``: argument parsing for training a PPO or MaskablePPO allocation controller
(:mod:`nsr_gym.studies.train` around :func:`nsr_gym.agents.train.train`)."""

from __future__ import annotations

import argparse
import sys

from nsr_gym.jsonio import parse_json


def _json_dict(text: str) -> dict:
    try:
        value = parse_json(text, source="the option", what="JSON")
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r} ({err})"
                                         ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from nsr_gym.agents.train import TrainConfig
    from nsr_gym.studies.train import (
        check_train_config,
        default_out,
        resolve_env_id,
        train_controller,
    )

    env_id = resolve_env_id(args.env)
    cfg = TrainConfig(
        algo=args.algo,
        env_id=env_id,
        backend=args.backend,
        total_timesteps=args.timesteps,
        seed=args.seed,
        n_envs=args.n_envs,
        vec_env=args.vec_env,
        shards=args.shards,
        start_method=args.start_method,
        out=args.out or default_out(args.algo, env_id, args.backend, args.seed),
        env_kwargs=args.env_kwargs,
        hyperparams=args.hyperparams,
        n_evals=args.n_evals,
        verbose=args.verbose,
        progress_bar=args.progress,
    )
    try:
        check_train_config(cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(train_controller(cfg))
    return 0


#: Mirrors of ``agents.train`` (ALGOS, VEC_ENVS and TrainConfig's defaults), kept here so that
#: building the parser imports neither torch nor SB3; ``tests/test_train_cli.py`` checks they agree.
ALGOS = ("ppo", "maskable-ppo")
VEC_ENVS = ("batched", "dummy", "subproc")
DEFAULTS = argparse.Namespace(
    algo="maskable-ppo",
    env_id="nsr_gym/CyclicSplitDigits-v0",
    backend="analytic",
    total_timesteps=60_000,
    seed=0,
    n_envs=4,
    vec_env="batched",
    shards=1,
    n_evals=5,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = sub.add_parser(
        "train", help="train a PPO / MaskablePPO allocation controller (results/train)"
    )
    p.add_argument("--algo", default=d.algo, choices=ALGOS)
    p.add_argument("--env", default=d.env_id, help="env id or benchmark name (see `nsr-gym envs`)")
    p.add_argument("--backend", default=d.backend, choices=["analytic", "torch"])
    p.add_argument("--timesteps", type=int, default=d.total_timesteps, help="total env steps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default results/train/<algo>-<benchmark>-<backend>-s<seed>)",
    )
    p.add_argument("--n-envs", type=int, default=d.n_envs, help="parallel training envs")
    p.add_argument("--vec-env", default=d.vec_env, choices=VEC_ENVS)
    p.add_argument(
        "--shards",
        type=int,
        default=d.shards,
        help="batched: processes the training envs are divided over (one per core)",
    )
    p.add_argument(
        "--start-method",
        default=None,
        choices=["spawn", "forkserver", "fork"],
        help="start method of subproc (and shard) workers",
    )
    p.add_argument(
        "--env-kwargs",
        type=_json_dict,
        default={},
        help="JSON keyword arguments of gym.make, e.g. '{\"capacity\": 3}'; "
        "'{\"capacity\": 3, \"retention\": \"agent\"}' trains retention as well",
    )
    p.add_argument(
        "--hyperparams",
        type=_json_dict,
        default={},
        help="JSON overrides of agents/hyperparams/<algo>.yml, e.g. '{\"learning_rate\": 0.001}'",
    )
    p.add_argument(
        "--n-evals", type=int, default=d.n_evals, help="EvalCallback evaluations (0: none)"
    )
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="SB3 progress bar")
    p.set_defaults(func=cmd_train)
