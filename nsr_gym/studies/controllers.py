"""The controlled study: the allocation rule vs learned controllers, with the Bank held fixed.

The paper's study holds the Bank fixed and varies only the allocation rule (a similarity rule
recovered returning tasks in 0 steps, an RL controller in 1.8). Here the Bank's mechanics are
the env's and are the same for every controller: what is stored (the active subspace, under the
true task id, at every phase end), its compression, capacity and eviction. The stream and data
order come from the seed, so every controller meets the same stream on the same seed (paired
comparisons). A controller only chooses the allocation: keep, fresh or load a slot.

Seeds. Study seed ``s`` is the evaluation episode ``reset(seed=s)`` for every agent; a learned
controller for seed ``s`` is trained with seed ``TRAIN_SEED_OFFSET + s`` (its training and
EvalCallback episodes never replay an evaluation episode), so the spread over seeds covers
training as well as evaluation randomness.

This module trains and evaluates; :mod:`nsr_gym.studies.controller_tables` turns the step logs
into the study's tables; :mod:`nsr_gym.studies.controllers_report` runs the study end to end
(``nsr-gym study controllers``) and writes the files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from nsr_gym.agents.evaluation import rollout
from nsr_gym.agents.sb3_policy import SB3Policy, load_sb3_policy
from nsr_gym.agents.train import TrainConfig, full_env_id, obs_layout, train
from nsr_gym.jsonio import JsonFileError, read_json
from nsr_gym.studies.controller_tables import MEMORYLESS

#: Training seed of study seed ``s``: ``TRAIN_SEED_OFFSET + s``.
TRAIN_SEED_OFFSET = 1000
RULES = ("similarity", "oracle", "round-robin", *MEMORYLESS)


@dataclass(frozen=True)
class Setting:
    """One environment configuration of the study."""

    env_id: str
    """Registered id."""
    env_kwargs: dict[str, Any]
    """Keyword arguments of ``gym.make`` besides the backend."""
    label: str
    """What it is, for tables."""


SETTINGS: dict[str, Setting] = {
    "cyclic": Setting(
        "nsr_gym/CyclicSplitDigits-v0",
        {},
        "CyclicSplitDigits, K = M = 5: the paper's controlled study",
    ),
    "recurring": Setting(
        "nsr_gym/RecurringSplitDigits-v0",
        {},
        "RecurringSplitDigits, K = M = 5: each phase's task drawn at random",
    ),
    "cyclic-k3": Setting(
        "nsr_gym/CyclicSplitDigits-v0",
        {"capacity": 3},
        "CyclicSplitDigits, K = 3 < M = 5, LRU eviction",
    ),
}


@dataclass
class StudyConfig:
    """Settings of ``nsr-gym study controllers``."""

    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    """Study seeds (evaluation episodes; training seeds are ``TRAIN_SEED_OFFSET + s``)."""
    settings: tuple[str, ...] = ("cyclic", "recurring", "cyclic-k3")
    """Keys of ``SETTINGS``."""
    ppo_settings: tuple[str, ...] = ("cyclic",)
    """Settings where PPO is trained too; MaskablePPO is trained on the analytic backend in all."""
    timesteps: int = 40_000
    """Analytic-backend training budget per controller."""
    torch_timesteps: int = 3_000
    """Budget of MaskablePPO trained directly on the torch backend (cyclic setting); 0: none."""
    torch_eval_settings: tuple[str, ...] = ("cyclic",)
    """Settings also evaluated on the torch backend (the transfer gap)."""
    n_envs: int = 4
    """Parallel envs per training run."""
    workers: int = 2
    """Training runs in parallel (processes)."""
    use_best: bool = True
    """Evaluate ``best_model.zip`` (chosen by EvalCallback on a held-out training seed)."""
    out: str = "results/controllers"
    """Output directory; trained models go to ``out/models``."""


# ---------------------------------------------------------------------------- training
def train_configs(cfg: StudyConfig) -> list[TrainConfig]:
    """Every training run of the study, longest first."""
    runs = []
    if cfg.torch_timesteps > 0 and "cyclic" in cfg.settings:
        s = SETTINGS["cyclic"]
        runs += [
            TrainConfig(
                algo="maskable-ppo",
                env_id=s.env_id,
                backend="torch",
                total_timesteps=cfg.torch_timesteps,
                seed=TRAIN_SEED_OFFSET + seed,
                n_envs=2,
                env_kwargs=dict(s.env_kwargs),
                n_evals=2,
                out=str(model_dir(cfg, "cyclic", "maskable-ppo", "torch", seed)),
            )
            for seed in cfg.seeds
        ]
    for name in cfg.settings:
        s = SETTINGS[name]
        runs += [
            TrainConfig(
                algo=algo,
                env_id=s.env_id,
                backend="analytic",
                total_timesteps=cfg.timesteps,
                seed=TRAIN_SEED_OFFSET + seed,
                n_envs=cfg.n_envs,
                env_kwargs=dict(s.env_kwargs),
                n_evals=6,
                out=str(model_dir(cfg, name, algo, "analytic", seed)),
            )
            for algo in algos_of(cfg, name)
            for seed in cfg.seeds
        ]
    return runs


def algos_of(cfg: StudyConfig, setting: str) -> tuple[str, ...]:
    """The algorithms trained (on the analytic backend) for ``setting``."""
    return ("ppo", "maskable-ppo") if setting in cfg.ppo_settings else ("maskable-ppo",)


def model_dir(cfg: StudyConfig, setting: str, algo: str, backend: str, seed: int) -> Path:
    return Path(cfg.out) / "models" / setting / f"{algo}-{backend}-s{seed}"


def _done(tc: TrainConfig) -> bool:
    """A finished run with exactly these settings (resume)."""
    path = Path(tc.out) / "config.json"
    if not path.exists() or not (Path(tc.out) / "model.zip").exists():
        return False
    settings = read_json(path, what="training config").get("settings")
    return settings == json.loads(json.dumps(asdict(tc)))


def training_wall_times(configs: list[TrainConfig]) -> dict[str, float]:
    """Each finished run's wall time (from its ``config.json``), keyed by its directory."""
    out = {}
    for tc in configs:
        path = Path(tc.out) / "config.json"
        if path.exists():
            wall = read_json(path, what="training config").get("wall_time_s")
            if type(wall) not in (int, float):
                raise JsonFileError(path, f"wall_time_s is {wall!r:.60}, not a number",
                                    what="training config")
            out[str(Path(tc.out))] = wall
    return out


def _train_one(tc: TrainConfig) -> float:
    return train(tc).wall_time_s


def start_training(
    configs: list[TrainConfig], workers: int
) -> tuple[ProcessPoolExecutor | None, list]:
    """Submit the unfinished runs to a ``spawn`` process pool; returns (pool, futures)."""
    todo = [tc for tc in configs if not _done(tc)]
    if not todo:
        return None, []
    pool = ProcessPoolExecutor(max_workers=max(workers, 1), mp_context=get_context("spawn"))
    return pool, [pool.submit(_train_one, tc) for tc in todo]


# ---------------------------------------------------------------------------- evaluation
def make_eval_env(setting: str, backend: str) -> gym.Env:
    s = SETTINGS[setting]
    return gym.make(full_env_id(s.env_id), backend=backend, **s.env_kwargs)


def learned_agents(cfg: StudyConfig, setting: str) -> dict[str, Callable[[int], SB3Policy]]:
    """Name -> (study seed -> the controller trained for that seed)."""
    fname = "best_model.zip" if cfg.use_best else "model.zip"

    def loader(algo: str, backend: str) -> Callable[[int], SB3Policy]:
        def load(seed: int) -> SB3Policy:
            d = model_dir(cfg, setting, algo, backend, seed)
            path = d / fname if (d / fname).exists() else d / "model.zip"
            return load_sb3_policy(path)

        return load

    agents = {algo: loader(algo, "analytic") for algo in algos_of(cfg, setting)}
    if cfg.torch_timesteps > 0 and setting == "cyclic":
        agents["maskable-ppo (torch-trained)"] = loader("maskable-ppo", "torch")
    return agents


def evaluate_units(
    setting: str,
    backend: str,
    agents: dict[str, Callable[[int], Any]],
    seeds: Iterable[int],
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Roll out every (agent, seed) on one (setting, backend); finished units are cached.

    Args:
        agents: Name -> (seed -> policy); rules ignore the seed, learned controllers load the
            model trained for it.
        cache_dir: Where per-unit logs are kept, keyed by a fingerprint of the agent (the
            model's checksum for a learned one), so a resumed study reuses them.
    """
    env = None
    logs = []
    try:
        for name, factory in agents.items():
            for seed in seeds:
                policy = factory(seed)
                cached = None
                if cache_dir is not None:
                    tag = _fingerprint(policy)
                    path = cache_dir / setting / backend / f"{_safe(name)}__{tag}__seed{seed}.csv"
                    cached = pd.read_csv(path) if path.exists() else None
                if cached is None:
                    env = env or make_eval_env(setting, backend)
                    cached = rollout(env, policy, seed, agent_name=name)
                    if cache_dir is not None:
                        from nsr_gym.results import write_csv

                        write_csv(path, cached, float_format="%.17g")
                logs.append(cached.assign(agent=name))
                if progress is not None:
                    progress(f"{setting}/{backend}: {name} seed {seed}")
    finally:
        if env is not None:
            env.close()
    return pd.concat(logs, ignore_index=True).assign(setting=setting, backend=backend)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _fingerprint(policy: Any) -> str:
    """``rule`` for a rule agent, the weights' checksum prefix for a trained controller."""
    return getattr(policy, "weights_sha256", "")[:12] or "rule"


# ---------------------------------------------------------------------------- the 5% benchmark
def benchmark_time_to_rule(
    seeds: list[int],
    fraction: float = 0.95,
    max_timesteps: int = 200_000,
    eval_every: int = 6_000,
    train_seed: int = TRAIN_SEED_OFFSET,
    out: str | os.PathLike = "results/controllers/benchmark_model",
) -> dict[str, Any]:
    """Train MaskablePPO on the analytic backend (cyclic) until it is within ``1 - fraction`` of the
    similarity rule's mean return on ``seeds``; the wall and CPU time it took.

    Every ``eval_every`` steps the live policy runs through :func:`agents.evaluation.rollout`
    on the study seeds (the same loop as every agent), and training stops at the threshold.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    from nsr_gym.agents.policies import SimilarityRule

    env = make_eval_env("cyclic", "analytic")
    rule = float(np.mean([rollout(env, SimilarityRule(), s)["reward"].sum() for s in seeds]))
    target = fraction * rule
    layout = obs_layout(env.unwrapped.observation_space)
    curve: list[dict[str, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]

    class StopAtRule(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = eval_every
            self.reached: dict[str, float] | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += eval_every
            policy = SB3Policy(self.model.policy, layout, "maskable-ppo")
            ret = float(np.mean([rollout(env, policy, s)["reward"].sum() for s in seeds]))
            point = {
                "timesteps": self.num_timesteps,
                "mean_return": ret,
                "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
            }
            curve.append(point)
            if ret >= target:
                self.reached = point
                return False
            return True

    stop = StopAtRule()
    result = train(
        TrainConfig(
            algo="maskable-ppo",
            env_id=SETTINGS["cyclic"].env_id,
            backend="analytic",
            total_timesteps=max_timesteps,
            seed=train_seed,
            n_evals=0,
            out=str(out),
        ),
        extra_callbacks=[stop],
    )
    env.close()
    return {
        "rule_return": rule,
        "target_return": target,
        "fraction": fraction,
        "seeds": seeds,
        "reached": stop.reached is not None,
        "timesteps": stop.reached["timesteps"] if stop.reached else result.config["num_timesteps"],
        "wall_s": (stop.reached or {}).get("wall_s"),
        "cpu_s": (stop.reached or {}).get("cpu_s"),
        "total_wall_s": result.wall_time_s,
        "loadavg_1min_start": load0,
        "loadavg_1min_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "n_envs": result.config["settings"]["n_envs"],
        "hyperparams": result.config["hyperparams"],
        "curve": curve,
    }
