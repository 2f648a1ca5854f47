"""What ``nsr-gym train`` does around :func:`nsr_gym.agents.train.train`: resolve the env id
and the output folder, check the env configuration before any training, and summarise the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nsr_gym.agents.train import TrainConfig


def resolve_env_id(name: str) -> str:
    """A benchmark name (``CyclicSplitDigits``) or id (``nsr_gym/CyclicSplitDigits-v0``) -> id."""
    import nsr_gym

    return name if "/" in name else nsr_gym.env_id(name)


def default_out(algo: str, env_id: str, backend: str, seed: int) -> str:
    """``results/train/<algo>-<benchmark>-<backend>-s<seed>``."""
    bench = env_id.split("/")[-1].removesuffix("-v0")
    return f"results/train/{algo}-{bench}-{backend}-s{seed}"


def check_train_config(cfg: TrainConfig) -> None:
    """Make the env of ``cfg`` once, so that configuration
    errors surface before any training.

    Raises:
        ValueError: for settings :func:`~nsr_gym.agents.train.check_settings` refuses, an
            unregistered env id (the message lists the known ones) or env keywords the env
            rejects.
    """
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs
    from nsr_gym.agents.train import check_settings

    check_settings(cfg)
    if cfg.env_id.split(":", 1)[-1] not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("nsr_gym/")))
        raise ValueError(f"unknown env {cfg.env_id!r}; known: {known}")
    try:
        gym.make(cfg.env_id, backend=cfg.backend, **cfg.env_kwargs).close()
    except (ValueError, TypeError) as err:
        raise ValueError(str(err)) from err


def train_controller(cfg: TrainConfig, command: str | None = None) -> str:
    """Train as ``cfg`` says and write the controller; returns a summary to print.

    Args:
        cfg: The settings (checked with :func:`check_train_config` first).
        command: The command line recorded in ``config.json`` (default: this process's).
    """
    from nsr_gym.agents.train import train
    from nsr_gym.results import command_line

    result = train(cfg, command=command or command_line())
    evals = result.config.get("evaluations") or {}
    last = f", last eval return {evals['mean_return'][-1]:.2f}" if evals.get("mean_return") else ""
    return (f"trained {cfg.algo} on {cfg.env_id} ({cfg.backend}, {cfg.n_envs} {cfg.vec_env} "
            f"envs) for {result.config['num_timesteps']} steps in {result.wall_time_s:.1f} s"
            f"{last}\n"
            f"wrote {result.model_path} and {result.config_path}\n"
            f"evaluate it: nsr-gym run --backend {cfg.backend} --agents "
            f"similarity,{cfg.algo}:{cfg.out}")
