"""Train an allocation controller with SB3: ``PPO`` or sb3-contrib's ``MaskablePPO``.

One file to read in one sitting, in the style of CleanRL: every setting lives in
:class:`TrainConfig` (a docstring per field, defaults that work), :func:`make_env` is the env
thunk, and :func:`train` runs the sections in order: hyperparameters, envs, model, callbacks,
learn, save. The command line is ``nsr-gym train``; from Python::

    from nsr_gym.agents.train import TrainConfig, train
    result = train(TrainConfig(algo="maskable-ppo", total_timesteps=20_000, out="results/train/x"))

Both algorithms see the env's ``Dict`` observation through ``FlattenObservation`` (an
``MlpPolicy`` on one float32 vector); ``MaskablePPO`` also reads ``action_masks()``, which the env
defines itself, so it reaches through ``Monitor``/``FlattenObservation`` and into
``SubprocVecEnv`` workers by ``get_wrapper_attr``. An env made with ``retention="agent"`` (pass
``env_kwargs={"capacity": 3, "retention": "agent"}``, ``--env-kwargs`` on the command line) has a
``MultiDiscrete([K + 2, K + 1])`` action (allocation, retention), which both algorithms take as it
is; its mask is the two parts' masks concatenated (sb3-contrib's convention), and
``config.json`` records the action's ``action_nvec``. Hyperparameters come from
``agents/hyperparams/<algo>.yml`` (rl-zoo's convention: a ``default`` entry plus per-env-id
overrides).

Written to ``out``: ``model.zip`` (SB3's format, for ``PPO.load`` and further training),
``policy.safetensors`` (the policy weights, loaded without pickle by
:mod:`nsr_gym.agents.sb3_policy`), ``config.json`` (the exact resolved configuration, the
observation layout, provenance and sha256 checksums), ``monitor/`` (``Monitor`` CSVs per training
env) and ``eval/evaluations.npz`` (``EvalCallback``), plus ``best_model.zip`` (the best evaluation
return) and its weights ``best_policy.safetensors``. The model zip, the weights and
``config.json`` are written atomically (:mod:`nsr_gym.atomic`). The safetensors files are written
from the policy in memory (the best one as ``EvalCallback`` saves it); nothing is read back out
of a zip, so no pickle is loaded, not even with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from nsr_gym.atomic import atomic_path, sha256_file

ALGOS = ("ppo", "maskable-ppo")
VEC_ENVS = ("dummy", "subproc")
#: Format version of ``config.json``.
CONFIG_FORMAT = 1
_ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU"}


@dataclass
class TrainConfig:
    """All settings of one training run."""

    algo: str = "maskable-ppo"
    """``ppo`` (SB3, masks ignored) or ``maskable-ppo`` (sb3-contrib, invalid loads masked)."""
    env_id: str = "nsr_gym/CyclicSplitDigits-v0"
    """Registered env id; ``nsr_gym:`` is prefixed so spawned workers import and register it."""
    backend: str = "analytic"
    """Learner backend of the env: ``analytic`` (closed form, fast) or ``torch`` (the real one)."""
    total_timesteps: int = 60_000
    """Env steps to train for, summed over the parallel envs (one episode is 600 steps)."""
    seed: int = 0
    """Seeds the model, the training envs (``seed + rank``) and the eval env (``seed + 10_000``)."""
    n_envs: int = 4
    """Parallel training envs."""
    vec_env: str = "dummy"
    """``dummy`` (one process) or ``subproc`` (one process per env)."""
    start_method: str | None = None
    """Start method of ``subproc`` workers (``spawn``, ``forkserver``, ``fork``); None: SB3's."""
    out: str = "results/train/run"
    """Output directory for the model, its config and the logs."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gym.make`` (``phase_length``, ``capacity``, ``learner``, ...)."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Overrides applied on top of the YAML hyperparameters (same keys)."""
    n_evals: int = 5
    """Evaluations (``EvalCallback``) spread over training; 0 disables them."""
    n_eval_episodes: int = 1
    """Episodes per evaluation (deterministic actions)."""
    torch_threads: int = 1
    """``torch.set_num_threads``: one thread is fastest for these small networks."""
    device: str = "cpu"
    """Device of the policy network (``cpu``; small MLPs gain nothing from a GPU)."""
    verbose: int = 0
    """SB3 verbosity (0 silent, 1 info)."""
    progress_bar: bool = False
    """Show SB3's progress bar (needs ``tqdm`` and ``rich``)."""


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_path: Path
    """``out/model.zip``."""
    config_path: Path
    """``out/config.json``."""
    config: dict[str, Any]
    """The resolved configuration as written."""
    wall_time_s: float
    """Seconds spent in setup, ``learn`` and saving."""


# ---------------------------------------------------------------------------- configuration
def full_env_id(env_id: str) -> str:
    """``nsr_gym/X-v0`` -> ``nsr_gym:nsr_gym/X-v0``: ``gym.make`` imports the module first."""
    return env_id if ":" in env_id else f"nsr_gym:{env_id}"


def load_hyperparams(
    algo: str, env_id: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge ``default``, the env id's entry and ``overrides`` from ``hyperparams/<algo>.yml``.

    Dict values (``policy_kwargs``) merge key by key; everything else replaces.
    """
    import yaml

    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {ALGOS}")
    text = (
        resources.files("nsr_gym.agents")
        .joinpath("hyperparams", f"{algo.replace('-', '_')}.yml")
        .read_text()
    )
    table = yaml.safe_load(text) or {}
    bare_id = env_id.split(":", 1)[-1]
    resolved: dict[str, Any] = {}
    for layer in (table.get("default") or {}, table.get(bare_id) or {}, overrides or {}):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(resolved.get(key), dict):
                resolved[key] = {**resolved[key], **value}
            else:
                resolved[key] = copy.deepcopy(value)
    return resolved


def _schedule(value: Any) -> Any:
    """rl-zoo's ``lin_<x>``: a linear decay from ``x`` to 0 over training; numbers pass through."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def _policy_kwargs(spec: dict[str, Any] | None) -> dict[str, Any]:
    """YAML ``policy_kwargs`` (names) -> SB3 ``policy_kwargs`` (classes)."""
    import torch.nn as nn

    kwargs = dict(spec or {})
    act = kwargs.get("activation_fn")
    if isinstance(act, str):
        if act not in _ACTIVATIONS:
            raise ValueError(f"activation_fn {act!r} unknown; choose from {sorted(_ACTIVATIONS)}")
        kwargs["activation_fn"] = getattr(nn, _ACTIVATIONS[act])
    return kwargs


def obs_layout(observation_space: gym.spaces.Dict) -> list[dict[str, Any]]:
    """The flattened observation's parts, in ``FlattenObservation``'s order (keys sorted)."""
    return [
        {
            "key": k,
            "size": int(np.prod(s.shape)),
            "low": float(np.min(s.low)),
            "high": float(np.max(s.high)),
        }
        for k, s in observation_space.spaces.items()
    ]


def action_layout(action_space: gym.spaces.Space) -> dict[str, Any]:
    """What ``config.json`` records of the action: ``n_actions`` (the policy's action logits:
    ``n`` of a ``Discrete``, ``sum(nvec)`` of a ``MultiDiscrete``), and for a ``MultiDiscrete``
    (``retention="agent"``) its ``action_nvec``."""
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        nvec = [int(n) for n in np.asarray(action_space.nvec).reshape(-1)]
        return {"n_actions": sum(nvec), "action_nvec": nvec}
    return {"n_actions": int(action_space.n)}


# ---------------------------------------------------------------------------- envs
def make_env(
    env_id: str,
    rank: int = 0,
    backend: str = "analytic",
    env_kwargs: dict[str, Any] | None = None,
    monitor_dir: str | os.PathLike | None = None,
) -> Callable[[], gym.Env]:
    """A picklable thunk building ``Monitor(FlattenObservation(gym.make(env_id)))``.

    The ``nsr_gym:`` prefix makes ``gym.make`` import ``nsr_gym`` (and so register its ids) in
    whatever process calls the thunk: a ``spawn``/``forkserver`` worker starts from scratch.
    Seeding is left to the ``VecEnv`` (``seed + rank`` at the first reset).
    """
    kwargs = {"backend": backend, **(env_kwargs or {})}

    def thunk() -> gym.Env:
        from gymnasium.wrappers import FlattenObservation
        from stable_baselines3.common.monitor import Monitor

        env = FlattenObservation(gym.make(full_env_id(env_id), **kwargs))
        filename = None if monitor_dir is None else str(Path(monitor_dir) / f"rank{rank}")
        return Monitor(env, filename=filename)

    return thunk


def make_vec_env(cfg: TrainConfig, n_envs: int, monitor_dir: str | os.PathLike | None = None):
    """``n_envs`` copies of the env in a ``DummyVecEnv`` or a ``SubprocVecEnv``."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    thunks = [
        make_env(cfg.env_id, rank, cfg.backend, cfg.env_kwargs, monitor_dir)
        for rank in range(n_envs)
    ]
    if cfg.vec_env == "subproc":
        return SubprocVecEnv(thunks, start_method=cfg.start_method)
    return DummyVecEnv(thunks)


# ---------------------------------------------------------------------------- files
def _save_model(model: Any, path: Path) -> None:
    """``model.save`` to ``path`` atomically (SB3 insists on a name ending in ``.zip``)."""
    with atomic_path(path, suffix=".zip") as tmp:
        model.save(tmp)


def _save_weights(state: dict[str, Any], path: Path) -> None:
    """A policy ``state_dict`` as safetensors at ``path``, atomically, tensors on the CPU."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"format": "nsr-gym-sb3-policy", "version": str(CONFIG_FORMAT)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)


#: The pickle-free copy of each zip's weights, side by side with it.
WEIGHTS_OF = {"model.zip": "policy.safetensors", "best_model.zip": "best_policy.safetensors"}


def _best_weights_keeper() -> Any:
    """An SB3 callback for ``callback_on_new_best`` that copies the policy's ``state_dict``
    each time ``EvalCallback`` saves a new ``best_model.zip``: the pickle-free copy of the best
    weights is then written from memory, never read back out of the zip."""
    from stable_baselines3.common.callbacks import BaseCallback

    class KeepBestWeights(BaseCallback):
        state: dict[str, Any] | None = None

        def _on_step(self) -> bool:
            self.state = {k: v.detach().cpu().clone()
                          for k, v in self.model.policy.state_dict().items()}
            return True

    return KeepBestWeights()


# ---------------------------------------------------------------------------- training
def train(
    cfg: TrainConfig, command: str | None = None, extra_callbacks: list | None = None
) -> TrainResult:
    """Train one controller as ``cfg`` says and write it to ``cfg.out``.

    Args:
        cfg: The settings.
        command: The command line to record in ``config.json`` (default: a description).
        extra_callbacks: SB3 callbacks run besides the ``EvalCallback`` (e.g. early stopping).
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from nsr_gym.results import manifest, write_json

    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; choose from {ALGOS}")
    if cfg.vec_env not in VEC_ENVS:
        raise ValueError(f"unknown vec_env {cfg.vec_env!r}; choose from {VEC_ENVS}")
    if cfg.total_timesteps < 1 or cfg.n_envs < 1:
        raise ValueError("total_timesteps and n_envs must be >= 1")
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("best_model.zip", WEIGHTS_OF["best_model.zip"]):  # a previous run's best
        (out / stale).unlink(missing_ok=True)

    # ---- hyperparameters: YAML default <- env id entry <- cfg.hyperparams -----------------
    hp = load_hyperparams(cfg.algo, cfg.env_id, cfg.hyperparams)
    algo_kwargs = {k: v for k, v in hp.items() if k != "policy_kwargs"}
    # A rollout shorter than a minibatch is an SB3 warning and a wasted epoch: clamp it.
    algo_kwargs["batch_size"] = min(
        int(algo_kwargs.get("batch_size", 64)), int(algo_kwargs.get("n_steps", 2048)) * cfg.n_envs
    )
    model_kwargs = {
        k: _schedule(v) if k in ("learning_rate", "clip_range") else v
        for k, v in algo_kwargs.items()
    }

    # ---- envs: training (Monitor logs) and evaluation (a separate seed) ------------------
    (out / "monitor").mkdir(exist_ok=True)
    env = make_vec_env(cfg, cfg.n_envs, monitor_dir=out / "monitor")
    env.seed(cfg.seed)
    eval_env = DummyVecEnv([make_env(cfg.env_id, 0, cfg.backend, cfg.env_kwargs)])
    eval_env.seed(cfg.seed + 10_000)
    layout = obs_layout(eval_env.envs[0].unwrapped.observation_space)
    action_meta = action_layout(eval_env.action_space)

    # ---- model ---------------------------------------------------------------------------
    if cfg.algo == "maskable-ppo":
        from sb3_contrib import MaskablePPO
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as Eval

        algo_cls: Any = MaskablePPO
    else:
        algo_cls, Eval = PPO, EvalCallback
    model = algo_cls(
        "MlpPolicy",
        env,
        seed=cfg.seed,
        device=cfg.device,
        verbose=cfg.verbose,
        policy_kwargs=_policy_kwargs(hp.get("policy_kwargs")),
        **model_kwargs,
    )

    # ---- callbacks -----------------------------------------------------------------------
    eval_callback, keep_best = None, _best_weights_keeper()
    if cfg.n_evals > 0:
        freq = max(cfg.total_timesteps // (cfg.n_evals * cfg.n_envs), 1)
        eval_callback = Eval(
            eval_env,
            callback_on_new_best=keep_best,
            n_eval_episodes=cfg.n_eval_episodes,
            eval_freq=freq,
            log_path=str(out / "eval"),
            best_model_save_path=str(out),
            deterministic=True,
            verbose=cfg.verbose,
        )

    # ---- learn ---------------------------------------------------------------------------
    t_learn = time.perf_counter()
    callbacks = [c for c in (eval_callback, *(extra_callbacks or [])) if c is not None]
    model.learn(
        total_timesteps=cfg.total_timesteps, callback=callbacks, progress_bar=cfg.progress_bar
    )
    learn_s = time.perf_counter() - t_learn
    env.close()
    eval_env.close()

    # ---- save: model zip, weights, resolved config ---------------------------------------
    model_path = out / "model.zip"
    _save_model(model, model_path)
    weights = [out / WEIGHTS_OF["model.zip"]]
    _save_weights(model.policy.state_dict(), weights[0])
    if (out / "best_model.zip").exists() and keep_best.state is not None:
        weights.append(out / WEIGHTS_OF["best_model.zip"])
        _save_weights(keep_best.state, weights[-1])
    evals = None
    if eval_callback is not None and eval_callback.evaluations_results:
        evals = {
            "timesteps": [int(t) for t in eval_callback.evaluations_timesteps],
            "mean_return": [float(np.mean(r)) for r in eval_callback.evaluations_results],
        }
    wall = time.perf_counter() - t0
    config = manifest(
        command or f"nsr_gym.agents.train.train(algo={cfg.algo!r}, env_id={cfg.env_id!r})",
        [cfg.seed],
        wall,
        format_version=CONFIG_FORMAT,
        settings=asdict(cfg),
        env_id=full_env_id(cfg.env_id),
        env_kwargs={"backend": cfg.backend, **cfg.env_kwargs},
        hyperparams=hp,
        resolved_algo_kwargs=algo_kwargs,
        policy_class="MaskableActorCriticPolicy"
        if cfg.algo == "maskable-ppo"
        else "ActorCriticPolicy",
        obs_layout=layout,
        **action_meta,
        learn_time_s=round(learn_s, 2),
        num_timesteps=int(model.num_timesteps),
        evaluations=evals,
        files={
            p.name: sha256_file(p)
            for p in (model_path, *weights, out / "best_model.zip")
            if p.exists()
        },
    )
    config_path = out / "config.json"
    write_json(config_path, config)
    return TrainResult(model_path, config_path, config, wall)


if __name__ == "__main__":  # python -m nsr_gym.agents.train: the defaults, a demonstration
    result = train(TrainConfig())
    print(f"wrote {result.model_path} in {result.wall_time_s:.1f} s")
