"""``nsr-gym train``: train a PPO or MaskablePPO allocation controller (``agents.train``)."""

from __future__ import annotations

import argparse
import json
import sys


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def resolve_env_id(name: str) -> str:
    """A benchmark name (``CyclicSplitDigits``) or id (``nsr_gym/CyclicSplitDigits-v0``) -> id."""
    import nsr_gym

    return name if "/" in name else nsr_gym.env_id(name)


def cmd_train(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from agents.train import TrainConfig, train
    from nsr_gym.results import command_line

    env_id = resolve_env_id(args.env)
    if env_id.split(":", 1)[-1] not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("nsr_gym/")))
        print(f"error: unknown env {args.env!r}; known: {known}", file=sys.stderr)
        return 2
    bench = env_id.split("/")[-1].removesuffix("-v0")
    out = args.out or f"results/train/{args.algo}-{bench}-{args.backend}-s{args.seed}"
    cfg = TrainConfig(
        algo=args.algo,
        env_id=env_id,
        backend=args.backend,
        total_timesteps=args.timesteps,
        seed=args.seed,
        n_envs=args.n_envs,
        vec_env=args.vec_env,
        start_method=args.start_method,
        out=out,
        env_kwargs=args.env_kwargs,
        hyperparams=args.hyperparams,
        n_evals=args.n_evals,
        verbose=args.verbose,
        progress_bar=args.progress,
    )
    try:
        # Configuration errors (bad env kwargs) surface here, before any training.
        gym.make(env_id, backend=args.backend, **args.env_kwargs).close()
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = train(cfg, command=command_line())
    evals = result.config.get("evaluations") or {}
    last = f", last eval return {evals['mean_return'][-1]:.2f}" if evals.get("mean_return") else ""
    print(
        f"trained {args.algo} on {env_id} ({args.backend}) for "
        f"{result.config['num_timesteps']} steps in {result.wall_time_s:.1f} s{last}"
    )
    print(f"wrote {result.model_path} and {result.config_path}")
    print(
        f"evaluate it: nsr-gym run --backend {args.backend} --agents similarity,{args.algo}:{out}"
    )
    return 0


#: Mirrors of ``agents.train`` (ALGOS, VEC_ENVS and TrainConfig's defaults), kept here so that
#: building the parser imports neither torch nor SB3; ``tests/test_train_cli.py`` checks they agree.
ALGOS = ("ppo", "maskable-ppo")
VEC_ENVS = ("dummy", "subproc")
DEFAULTS = argparse.Namespace(
    algo="maskable-ppo",
    env_id="nsr_gym/CyclicSplitDigits-v0",
    backend="analytic",
    total_timesteps=60_000,
    seed=0,
    n_envs=4,
    vec_env="dummy",
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
        "--start-method",
        default=None,
        choices=["spawn", "forkserver", "fork"],
        help="start method of subproc workers",
    )
    p.add_argument(
        "--env-kwargs",
        type=_json_dict,
        default={},
        help="JSON keyword arguments of gym.make, e.g. '{\"capacity\": 3}'",
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
