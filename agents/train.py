"""Train an allocation controller with SB3: ``PPO`` or sb3-contrib's ``MaskablePPO``.

One file to read in one sitting, in the style of CleanRL: every setting lives in
:class:`TrainConfig` (a docstring per field, defaults that work), :func:`make_env` is the env
thunk, and :func:`train` runs the sections in order: hyperparameters, envs, model, callbacks,
learn, save. The command line is ``nsr-gym train``; from Python::

    from nsr_gym.agents.train import TrainConfig, train
    result = train(TrainConfig(algo="maskable-ppo", total_timesteps=20_000, out="results/train/x"))

Training envs (``vec_env``): ``"batched"``, the default, is ``gym.make_vec(id, n_envs)``'s
registered vector entry point (the batched env: ``n_envs`` learners stepped in one pass) in
:class:`~nsr_gym.agents.sb3_vec.SB3VecEnv` and its ``RankMonitor`` (SB3's ``VecMonitor``, one
``Monitor`` CSV per env), built with Gymnasium's ``SAME_STEP`` autoreset (an id without a vector
entry point, such as a paper-scale one, gets a ``SyncVectorEnv`` there instead); ``"dummy"`` and
``"subproc"`` are SB3's ``DummyVecEnv`` / ``SubprocVecEnv`` of
``Monitor(FlattenObservation(gym.make(id)))`` copies. All three give the same observations,
rewards and infos for the same seeds (on the analytic backend, the same trained weights:
``tests/test_train.py``).

Both algorithms see the env's ``Dict`` observation flattened as ``FlattenObservation`` does (an
``MlpPolicy`` on one float32 vector); ``MaskablePPO`` also reads ``action_masks()``, the env's
own method: ``SB3VecEnv`` answers ``env_method("action_masks")`` from the batched env's
``(N, mask_len)`` masks, and ``DummyVecEnv`` / ``SubprocVecEnv`` reach it through
``Monitor``/``FlattenObservation`` by ``get_wrapper_attr``. An env made with
``retention="agent"`` (pass ``env_kwargs={"capacity": 3, "retention": "agent"}``,
``--env-kwargs`` on the command line) has a ``MultiDiscrete([K + 2, K + 1])`` action
(allocation, retention), which both algorithms take as it is; its mask is the two parts' masks
concatenated (sb3-contrib's convention), and ``config.json`` records the action's
``action_nvec``. Hyperparameters come from ``agents/hyperparams/<algo>.yml``, in rl-zoo3's format
(:func:`load_hyperparams`), so that ``python -m rl_zoo3.train --algo ppo --env <id>
--gym-packages nsr_gym -conf agents/hyperparams/ppo.yml`` trains with the same values.

Written to ``out``: ``model.zip`` (SB3's format, for ``PPO.load`` and further training),
``policy.safetensors`` (the policy weights, loaded without pickle by
:mod:`nsr_gym.agents.sb3_policy`), ``config.json`` (the exact resolved configuration, the
observation layout, provenance and sha256 checksums), ``monitor/`` (``Monitor`` CSVs,
``rank<i>.monitor.csv`` per training env) and
``eval/evaluations.npz`` (``EvalCallback``), plus ``best_model.zip`` (the best evaluation
return) and its weights ``best_policy.safetensors``. The model zip, the weights and
``config.json`` are written atomically (:mod:`nsr_gym.atomic`). The safetensors files are written
from the policy in memory (the best one as ``EvalCallback`` saves it); nothing is read back out
of a zip, so no pickle is loaded, not even with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from nsr_gym.atomic import atomic_path, sha256_file

ALGOS = ("ppo", "maskable-ppo")
VEC_ENVS = ("batched", "dummy", "subproc")
#: Format version of ``config.json``.
CONFIG_FORMAT = 1
#: ``activation_fn`` names (as ``config.json`` records them) -> ``torch.nn`` classes.
_ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU"}
#: rl-zoo3's keys of a hyperparameter entry that are not algorithm arguments, and the values
#: :func:`train` runs with (``None``: TrainConfig's setting applies, ``n_timesteps`` is
#: ``total_timesteps`` and ``n_envs`` is ``n_envs``).
ZOO_KEYS: dict[str, Any] = {"n_timesteps": None, "n_envs": None, "policy": "MlpPolicy",
                            "env_wrapper": "gymnasium.wrappers.FlattenObservation",
                            "normalize": False}


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
    vec_env: str = "batched"
    """``batched`` (the registered batched env, all learners in one pass), ``dummy`` (single envs
    in one process) or ``subproc`` (one process per env)."""
    shards: int = 1
    """``batched``: processes the training envs are divided over (``gym.make_vec(..., shards=k)``,
    one batched env each, :class:`~nsr_gym.envs.sharded.ShardedBatchedEnv`); 1: this one."""
    start_method: str | None = None
    """Start method of ``subproc`` (and ``shards``) workers (``spawn``, ``forkserver``,
    ``fork``); None: the default."""
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
    """The algorithm's keyword arguments for ``env_id`` from ``hyperparams/<algo>.yml``.

    The file is in rl-zoo3's format, read as rl-zoo3 reads it: the entry named after the env id
    (without the ``nsr_gym:`` prefix), else the ``default`` entry, never a merge of the two (the
    file shares values between entries with YAML's ``<<`` merge key). Then ``overrides`` go on
    top: dict values (``policy_kwargs``) merge key by key, everything else replaces.
    ``policy_kwargs`` may be rl-zoo3's string, ``"dict(net_arch=[64, 64],
    activation_fn=nn.Tanh)"``, parsed here without ``eval``; it is returned as a dict with the
    activation's name (``"tanh"``), as ``config.json`` records it.

    rl-zoo3's run keys (:data:`ZOO_KEYS`) are checked and left out: ``n_timesteps`` and
    ``n_envs`` are :class:`TrainConfig`'s to set, and ``policy``, ``env_wrapper`` and
    ``normalize`` must be what :func:`train` runs (``MlpPolicy`` on the flattened observation).

    Raises:
        ValueError: for an unknown algo, a file without an entry for ``env_id`` or a
            ``default``, a run key in ``overrides``, or a run key :func:`train` cannot honour.
    """
    import yaml

    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose from {ALGOS}")
    name = f"{algo.replace('-', '_')}.yml"
    table = yaml.safe_load(
        resources.files("nsr_gym.agents").joinpath("hyperparams", name).read_text()) or {}
    bare_id = env_id.split(":", 1)[-1]
    entry = table.get(bare_id, table.get("default"))
    if not isinstance(entry, dict):
        raise ValueError(f"hyperparams/{name} has no entry for {bare_id!r} and no 'default'")
    overrides = dict(overrides or {})
    run_keys = sorted(set(overrides) & set(ZOO_KEYS))
    if run_keys:
        raise ValueError(f"{run_keys} are run settings, not hyperparameters: set TrainConfig's "
                         "total_timesteps / n_envs (--timesteps / --n-envs)")
    for key, expected in ZOO_KEYS.items():
        if expected is not None and entry.get(key, expected) != expected:
            raise ValueError(f"hyperparams/{name}: {key}={entry[key]!r}, but agents/train.py "
                             f"trains {key}={expected!r}")
    resolved: dict[str, Any] = {}
    for layer in ({k: v for k, v in entry.items() if k not in ZOO_KEYS}, overrides):
        for key, value in layer.items():
            if key == "policy_kwargs":
                value = parse_policy_kwargs(value)
            if isinstance(value, dict) and isinstance(resolved.get(key), dict):
                resolved[key] = {**resolved[key], **value}
            else:
                resolved[key] = copy.deepcopy(value)
    return resolved


def _activation_name(value: Any) -> Any:
    """``"nn.Tanh"`` -> ``"tanh"`` (the names of :data:`_ACTIVATIONS`); anything else as is."""
    if not (isinstance(value, str) and value.startswith("nn.")):
        return value
    names = {cls: name for name, cls in _ACTIVATIONS.items()}
    if value[3:] not in names:
        raise ValueError(f"activation_fn {value!r} unknown; choose from "
                         f"{['nn.' + c for c in names]}")
    return names[value[3:]]


def _literal(node: Any) -> Any:
    """A ``policy_kwargs`` expression node: ``dict(k=...)``, ``nn.<Name>`` or a literal."""
    import ast

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id == "nn":
        return _activation_name(f"nn.{node.attr}")
    return ast.literal_eval(node)


def parse_policy_kwargs(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """rl-zoo3's ``policy_kwargs`` string (or a dict) as a JSON-able dict, without ``eval``.

    The string is one ``dict(...)`` call whose arguments are literals, nested ``dict(...)``
    calls, or ``nn.<Activation>`` (stored by name: ``nn.Tanh`` -> ``"tanh"``).

    Raises:
        ValueError: for anything else in the string, or an activation not in
            :data:`_ACTIVATIONS`.
    """
    import ast

    if spec is None:
        return {}
    if isinstance(spec, str):
        try:
            value = _literal(ast.parse(spec, mode="eval").body)
        except (SyntaxError, ValueError, TypeError) as err:
            raise ValueError(f"policy_kwargs {spec!r}: expected dict(...) of literals and "
                             f"nn.<Activation> ({err})") from None
        if not isinstance(value, dict):
            raise ValueError(f"policy_kwargs {spec!r} is not a dict(...)")
        spec = value
    out = dict(spec)
    if "activation_fn" in out:
        out["activation_fn"] = _activation_name(out["activation_fn"])
    return out


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


def make_batched_env(
    env_id: str, n_envs: int, backend: str = "analytic", env_kwargs: dict[str, Any] | None = None,
    shards: int = 1, start_method: str | None = None,
) -> gym.vector.VectorEnv:
    """``gym.make_vec(env_id, n_envs)`` with ``SAME_STEP`` autoreset, as :class:`SB3VecEnv`
    wants: the id's registered vector entry point (the batched env, over ``shards`` processes
    started by ``start_method``), or, for an id without one (or while its module is not
    installed), a ``SyncVectorEnv`` of ``n_envs`` single envs."""
    import importlib

    from gymnasium.vector import AutoresetMode

    import nsr_gym  # noqa: F401 - registers the envs

    kwargs = {"backend": backend, **(env_kwargs or {})}
    entry = gym.spec(env_id.split(":", 1)[-1]).vector_entry_point
    if isinstance(entry, str):
        module = entry.split(":", 1)[0]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the module is there but something it needs is not
                raise
            entry = None
    if entry is not None:
        if shards > 1:
            kwargs.update(shards=shards, context=start_method)
        return gym.make_vec(full_env_id(env_id), num_envs=n_envs,
                            vectorization_mode="vector_entry_point",
                            autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    return gym.make_vec(full_env_id(env_id), num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **kwargs)


def make_vec_env(cfg: TrainConfig, n_envs: int, monitor_dir: str | os.PathLike | None = None):
    """``n_envs`` training envs as ``cfg.vec_env`` says: the batched env in
    :class:`~nsr_gym.agents.sb3_vec.SB3VecEnv` and
    :class:`~nsr_gym.agents.sb3_vec.RankMonitor`, or a ``DummyVecEnv`` / ``SubprocVecEnv`` of
    :func:`make_env` copies; either way ``monitor_dir`` gets ``rank<i>.monitor.csv`` per env."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from nsr_gym.agents.sb3_vec import RankMonitor, SB3VecEnv

    if cfg.vec_env == "batched":
        venv = make_batched_env(cfg.env_id, n_envs, cfg.backend, cfg.env_kwargs,
                                shards=min(cfg.shards, n_envs), start_method=cfg.start_method)
        return RankMonitor(SB3VecEnv(venv), None if monitor_dir is None else str(monitor_dir))
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
def check_settings(cfg: TrainConfig) -> None:
    """Refuse settings :func:`train` cannot run, before anything is built.

    Raises:
        ValueError: naming the setting and what it may be.
    """
    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; choose from {ALGOS}")
    if cfg.vec_env not in VEC_ENVS:
        raise ValueError(f"unknown vec_env {cfg.vec_env!r}; choose from {VEC_ENVS}")
    if cfg.total_timesteps < 1 or cfg.n_envs < 1:
        raise ValueError("total_timesteps and n_envs must be >= 1")
    if not 1 <= cfg.shards <= cfg.n_envs or (cfg.shards > 1 and cfg.vec_env != "batched"):
        raise ValueError(f"shards must be in [1, n_envs={cfg.n_envs}] and only divides the "
                         f"batched env (vec_env='batched'), got shards={cfg.shards} with "
                         f"vec_env={cfg.vec_env!r}")


def train(
    cfg: TrainConfig, command: str | None = None, extra_callbacks: list | None = None
) -> TrainResult:
    """Train one controller as ``cfg`` says and write it to ``cfg.out``.

    Torch runs on ``cfg.torch_threads`` threads meanwhile (the policy's updates; the env's own
    computation keeps its own setting, :mod:`nsr_gym.threads`), restored after.

    Args:
        cfg: The settings.
        command: The command line to record in ``config.json`` (default: a description).
        extra_callbacks: SB3 callbacks run besides the ``EvalCallback`` (e.g. early stopping).
    """
    from nsr_gym.threads import torch_threads

    with torch_threads(cfg.torch_threads):
        return _train(cfg, command, extra_callbacks)


def _learn(model: Any, cfg: TrainConfig, callbacks: list) -> None:
    """``model.learn`` for ``cfg.total_timesteps``; with ``"subproc"`` envs without the warning
    SB3's eval callback gives for its in-process eval env (the env a worker steps)."""
    with warnings.catch_warnings():
        if cfg.vec_env == "subproc":
            warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
        model.learn(total_timesteps=cfg.total_timesteps, callback=callbacks,
                    progress_bar=cfg.progress_bar)


def _train(cfg: TrainConfig, command: str | None, extra_callbacks: list | None) -> TrainResult:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from nsr_gym.results import manifest, write_json

    check_settings(cfg)
    t0 = time.perf_counter()
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
    # The eval env is one env of the training env's kind (EvalCallback warns otherwise), except
    # for "subproc": one env in this process, the env a worker steps (see _learn).
    if cfg.vec_env == "batched":
        eval_env = make_vec_env(cfg, 1)
        layout = obs_layout(eval_env.unwrapped.single_observation_space)
    else:
        eval_env = DummyVecEnv([make_env(cfg.env_id, 0, cfg.backend, cfg.env_kwargs)])
        layout = obs_layout(eval_env.envs[0].unwrapped.observation_space)
    eval_env.seed(cfg.seed + 10_000)
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
    _learn(model, cfg, callbacks)
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
