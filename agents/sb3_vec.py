"""SB3's ``VecEnv`` over a Gymnasium 1.x ``VectorEnv``: :class:`SB3VecEnv`.

Stable-Baselines3 does not take Gymnasium's vector envs (its maintainers point users to writing
a ``VecEnv``); this adapter lets ``PPO`` and sb3-contrib's ``MaskablePPO`` train on any of them,
the batched env of ``gym.make_vec(id, N)`` first among them::

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
    from sb3_contrib import MaskablePPO
    from nsr_gym.agents.sb3_vec import SB3VecEnv

    venv = gym.make_vec("nsr_gym/CyclicSplitDigits-v0", num_envs=16,
                        vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP)
    model = MaskablePPO("MlpPolicy", SB3VecEnv(venv)).learn(100_000)

What it does, as SB3's ``DummyVecEnv`` of ``Monitor(FlattenObservation(env))`` copies would:

* **Autoreset**: the vector env must reset in the step an episode ends (``SAME_STEP``): SB3
  expects the reset observation in that step's result, and the last one in
  ``info["terminal_observation"]``. Gymnasium puts it in ``info["final_obs"]`` and that step's
  info in ``info["final_info"]``, each with a ``_final_obs`` / ``_final_info`` mask.
* **Observations**: a ``Dict`` observation is flattened exactly as
  ``gymnasium.wrappers.FlattenObservation`` does (``gym.spaces.flatten``: the parts in the
  space's key order, concatenated; one ``(N, sum of sizes)`` array); ``flatten=False`` keeps
  the ``Dict`` for a ``MultiInputPolicy``.
* **Step results**: rewards ``float32``, dones ``terminated | truncated``, infos a list of ``N``
  dicts (the vector infos unbatched by their ``_key`` masks). An env whose episode ended gets its
  final step's info with ``terminal_observation`` (flattened) and ``TimeLimit.truncated``
  (``truncated and not terminated``); its reset info goes to ``reset_infos``.
* **Methods**: ``env_method("action_masks")`` returns one mask per env (from the vector env's own
  batched ``action_masks()`` when it has one, else ``call("action_masks")`` on every sub-env,
  as on ``SyncVectorEnv`` / ``AsyncVectorEnv``), so sb3-contrib's ``get_action_masks`` works;
  any other method goes through the vector env's ``call``, attributes through ``get_attr`` /
  ``set_attr``. ``seed`` takes effect at the next reset (SB3's convention: env ``i`` gets
  ``seed + i``).

Episode statistics: wrap it in SB3's ``VecMonitor``, or in :class:`RankMonitor`, which also
writes one ``Monitor`` CSV per env (``rank<i>.monitor.csv``, as per-env ``Monitor`` wrappers
do; a batched env has none).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import iterate
from stable_baselines3.common.vec_env import VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

__all__ = ["RankMonitor", "SB3VecEnv"]

#: Keys of a ``SAME_STEP`` vector info that hold the ended episodes' last obs and info.
_FINAL_KEYS = ("final_obs", "final_info")


def _unbatch(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's vector info (``key``: batched values, ``_key``: which envs have it) as ``n``
    per-env dicts; nested dicts unbatch recursively; arrays are copied out of the batch."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") or key in _FINAL_KEYS:
            continue
        mask = info.get(f"_{key}")
        rows = range(n) if mask is None else np.flatnonzero(mask)
        if isinstance(value, dict):
            nested = _unbatch(value, n)
            for i in rows:
                out[i][key] = nested[i]
            continue
        if isinstance(value, np.ndarray) and value.ndim > 1:
            value = value.copy()  # rows are views: keep them apart from the env's buffers
        for i in rows:
            out[i][key] = value[i]
    return out


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over a Gymnasium ``VectorEnv`` that autoresets in the same step.

    Args:
        venv: The vector env, made with ``autoreset_mode=AutoresetMode.SAME_STEP``
            (``gym.make_vec(..., autoreset_mode=...)`` for a vector entry point,
            ``vector_kwargs={"autoreset_mode": ...}`` for ``"sync"`` / ``"async"``).
        flatten: Flatten the observation as ``FlattenObservation`` does (for ``MlpPolicy``);
            ``False`` passes a ``Dict`` observation through (for ``MultiInputPolicy``).

    Raises:
        ValueError: for another autoreset mode.
    """

    def __init__(self, venv: gym.vector.VectorEnv, flatten: bool = True) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode is not None and not isinstance(mode, AutoresetMode):
            mode = AutoresetMode(mode)
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a vector env that resets in the step an episode ends, got "
                f"autoreset_mode={mode}; make it with autoreset_mode=AutoresetMode.SAME_STEP "
                "(gym.make_vec(id, n, vectorization_mode='vector_entry_point', "
                "autoreset_mode=...), or vector_kwargs={'autoreset_mode': ...} for 'sync' / "
                "'async')")
        self.venv = venv
        self.single_observation_space = venv.single_observation_space
        self.flatten = flatten
        space = gym.spaces.flatten_space(venv.single_observation_space) if flatten \
            else venv.single_observation_space
        # The fast batched flatten applies where FlattenObservation's flatten is a reshape.
        parts = getattr(venv.single_observation_space, "spaces", None)
        self._reshape_only = isinstance(venv.single_observation_space, gym.spaces.Dict) and all(
            isinstance(s, (gym.spaces.Box, gym.spaces.MultiBinary)) for s in parts.values())
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, space, venv.single_action_space)

    # ------------------------------------------------------------------ observations
    def _flatten_batch(self, obs: Any) -> VecEnvObs:
        """``(N, ...)`` observations as SB3 sees them: flattened, or as they are."""
        if not self.flatten:
            return obs
        space = self.single_observation_space
        if self._reshape_only:
            n = self.num_envs
            flat = np.concatenate([np.asarray(obs[k]).reshape(n, -1) for k in space.spaces],
                                  axis=1)
            return flat.astype(self.observation_space.dtype, copy=False)
        return np.stack([gym.spaces.flatten(space, o) for o in iterate(self.venv.observation_space,
                                                                        obs)])

    def _flatten_one(self, obs: Any) -> Any:
        return gym.spaces.flatten(self.single_observation_space, obs) if self.flatten else obs

    # ------------------------------------------------------------------ reset and step
    def reset(self) -> VecEnvObs:
        kwargs: dict[str, Any] = {}
        if any(s is not None for s in self._seeds):
            kwargs["seed"] = list(self._seeds)
        options = [o for o in self._options if o]
        if options:
            if len(options) != self.num_envs or any(o != options[0] for o in options):
                raise ValueError("a Gymnasium vector env takes one options dict for all envs; "
                                 "set_options(dict) rather than per-env options")
            kwargs["options"] = options[0]
        obs, info = self.venv.reset(**kwargs)
        self.reset_infos = _unbatch(info, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return self._flatten_batch(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async(actions)")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        infos = _unbatch(info, self.num_envs)
        ended = np.flatnonzero(dones)
        if len(ended):
            if "final_obs" not in info:
                raise RuntimeError("an episode ended but the vector env gave no "
                                   "info['final_obs']: is its autoreset mode SAME_STEP?")
            finals = _unbatch(info.get("final_info", {}), self.num_envs)
            for i in ended:
                self.reset_infos[i] = infos[i]
                infos[i] = finals[i]
                infos[i]["terminal_observation"] = self._flatten_one(info["final_obs"][i])
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return (self._flatten_batch(obs), np.asarray(rewards, dtype=np.float32), dones, infos)

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------ attributes and methods
    def _vector(self, name: str) -> Any:
        """``name`` of the vector env, or of the vector env under its vector wrappers."""
        for target in (self.venv, self.venv.unwrapped):
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"{type(self.venv.unwrapped).__name__} has no {name!r}; SB3VecEnv "
                             "reaches sub-env attributes through the vector env's "
                             "call/get_attr/set_attr (SyncVectorEnv and AsyncVectorEnv have them)")

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        values = self._vector("get_attr")(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        rows = list(self._get_indices(indices))
        if rows == list(range(self.num_envs)):
            values = [value] * self.num_envs
        else:  # the vector env sets every env: give the others their current values back
            values = list(self._vector("get_attr")(attr_name))
            for i in rows:
                values[i] = value
        self._vector("set_attr")(attr_name, values)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        rows = list(self._get_indices(indices))
        batched = None
        if method_name == "action_masks":
            batched = getattr(self.venv, "action_masks", None) or \
                getattr(self.venv.unwrapped, "action_masks", None)
        if batched is not None:  # (N, mask_len) in one call
            masks = np.asarray(batched(*method_args, **method_kwargs))
            return [masks[i] for i in rows]
        results = self._vector("call")(method_name, *method_args, **method_kwargs)
        return [results[i] for i in rows]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        """Whether each sub-env is wrapped in ``wrapper_class``; False where the sub-envs are not
        ``gym.Env`` objects in this process (an async or a batched env)."""
        from stable_baselines3.common.env_util import is_wrapped

        envs = getattr(self.venv.unwrapped, "envs", None)
        rows = self._get_indices(indices)
        if not isinstance(envs, Sequence):
            return [False for _ in rows]
        return [isinstance(envs[i], gym.Env) and is_wrapped(envs[i], wrapper_class)
                for i in rows]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(f"the render mode is {self.render_mode}, not 'rgb_array': no images",
                          stacklevel=2)
            return [None for _ in range(self.num_envs)]
        return list(self.venv.render())


class RankMonitor(VecMonitor):
    """SB3's ``VecMonitor`` that writes each env's episodes to its own ``Monitor`` CSV,
    ``<folder>/rank<i>.monitor.csv``, in ``Monitor``'s format (what per-env ``Monitor`` wrappers
    of a ``DummyVecEnv`` write, so readers of those files read these).

    Args:
        venv: The SB3 vec env.
        folder: Where the files go (``None``: no files, a plain ``VecMonitor``).
    """

    def __init__(self, venv: VecEnv, folder: str | None = None) -> None:
        from pathlib import Path

        from stable_baselines3.common.monitor import ResultsWriter

        super().__init__(venv)
        spec = getattr(venv, "spec", None)
        header = {"t_start": self.t_start, "env_id": str(getattr(spec, "id", None))}
        self.writers = [] if folder is None else [
            ResultsWriter(str(Path(folder) / f"rank{i}"), header=header)
            for i in range(self.num_envs)]

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = super().step_wait()
        if self.writers:
            for i in np.flatnonzero(dones):
                self.writers[i].write_row(infos[i]["episode"])
        return obs, rewards, dones, infos

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        super().close()
