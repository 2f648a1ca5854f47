"""The batched vector env: N allocation envs whose learners train in one batched pass.

:class:`BatchedAllocationEnv` is a ``gymnasium.vector.VectorEnv`` of ``N``
:class:`~nsr_gym.envs.AllocationEnv` of one benchmark. Each env keeps its own bank, stream,
data order and bookkeeping (the decisions are per env and cheap); what costs, the learners'
updates and evaluations, runs for all ``N`` at once: on the torch backend through
:class:`~nsr_gym.learners.batched.BatchedTorchLearner` (stacked LoRA factors and heads, one
batched forward, backward and Adam update), on the analytic backend member by member (its
closed-form step is a few numpy operations). Env ``i`` built with seed ``s_i`` produces the same
observations, rewards and infos as ``gym.make(id)`` reset with ``s_i`` under the same actions
(``tests/test_batched_env.py``).

Reach it with ``gym.make_vec(id, num_envs=N)`` (every offline id registers it as its
``vector_entry_point``, the default mode when one is registered) or
``gym.make_vec(id, N, vectorization_mode="vector_entry_point", autoreset_mode=...)``.

Autoreset: Gymnasium 1.x's modes (``gymnasium.vector.AutoresetMode``). ``NEXT_STEP`` (the
default, as ``SyncVectorEnv``'s): the step after an env's episode ended resets it, ignoring that
env's action, and returns its reset observation with reward 0. ``SAME_STEP``: an env whose
episode ends in a step is reset in that step; its last observation and info are in
``info["final_obs"]`` / ``info["final_info"]`` (what SB3's adapter
:class:`nsr_gym.agents.sb3_vec.SB3VecEnv` wants). ``DISABLED``: the caller resets
(``reset(options={"reset_mask": mask})``).

Infos are Gymnasium's vector infos: every key an ``(N,)`` (or ``(N, ...)``) array with its
``_key`` mask; every env returns the same keys at reset and step, so every mask is all true.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from nsr_gym.envs.allocation import TASK_FREE_HIDDEN, AllocationEnv, RetentionInfo, StepInfo
from nsr_gym.learners import TorchLearner
from nsr_gym.learners.batched import BatchedTorchLearner, clone_learner

__all__ = ["BatchedAllocationEnv", "make_batched_env", "resolve_env_kwargs"]


def resolve_env_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Registration kwargs (``learner_defaults``, ``backend_learner_defaults``) merged with a
    user's into plain :class:`AllocationEnv` kwargs, as the registered entry points do (the
    user's ``learner`` options on top of the variant's)."""
    from nsr_gym.envs import variant_learner_options  # the package imports no batched env

    kw = dict(kwargs)
    learner = variant_learner_options(kw.pop("learner_defaults", None),
                                      kw.pop("backend_learner_defaults", None),
                                      kw.get("backend", "torch"), kw.get("learner"))
    if learner:
        kw["learner"] = learner
    return kw


def make_batched_env(num_envs: int = 1, max_episode_steps: int | None = None,
                     **kwargs: Any) -> BatchedAllocationEnv:
    """The ``vector_entry_point`` of every offline id: ``gym.make_vec`` passes the registered
    kwargs merged with the user's. ``max_episode_steps`` (a registered ``TimeLimit``) must not
    cut the episode: the env ends by itself at ``n_phases * phase_length`` steps."""
    autoreset_mode = kwargs.pop("autoreset_mode", AutoresetMode.NEXT_STEP)
    env = BatchedAllocationEnv(num_envs, autoreset_mode=autoreset_mode,
                               **resolve_env_kwargs(kwargs))
    if max_episode_steps is not None and max_episode_steps < env.envs[0].n_steps:
        raise ValueError(f"max_episode_steps={max_episode_steps} would cut the batched env's "
                         f"{env.envs[0].n_steps}-step episodes; leave it unset")
    return env


@functools.cache
def _field_kinds(kind: type) -> tuple[tuple[str, bool], ...]:
    """``(field, is an integer)`` of a NamedTuple's fields, from its type hints (the env's
    info gives integers as ``np.int64`` and the rest as ``np.float64``)."""
    hints = typing.get_type_hints(kind)
    return tuple((name, hints[name] is int) for name in kind._fields)


class BatchedAllocationEnv(gym.vector.VectorEnv):
    """``num_envs`` allocation envs of one configuration, stepped as one (module docstring).

    Args:
        num_envs: ``N``.
        autoreset_mode: A ``gymnasium.vector.AutoresetMode`` (or its value).
        **env_kwargs: :class:`AllocationEnv` keyword arguments, the same for every env (a ready
            ``learner`` object is refused: the batch builds its own).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 **env_kwargs: Any) -> None:
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) \
                or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            modes = [m.value for m in AutoresetMode]
            raise ValueError(f"autoreset_mode must be one of {modes}, got "
                             f"{autoreset_mode!r}") from None
        if env_kwargs.get("render_mode") is not None:
            raise ValueError("the batched env does not render; make single envs to render")
        if not isinstance(env_kwargs.get("learner"), (dict, type(None))):
            raise ValueError("the batched env builds its own learners: pass learner options "
                             "(a dict), not a learner object")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = int(num_envs)
        first = AllocationEnv(**env_kwargs)
        self.envs = [first]
        for _ in range(1, self.num_envs):
            learner = clone_learner(first.learner) if isinstance(first.learner, TorchLearner) \
                else None
            kw = dict(env_kwargs) if learner is None else {**env_kwargs, "learner": learner}
            self.envs.append(AllocationEnv(**kw))
        self.backend = first.backend
        self._batched = BatchedTorchLearner([e.learner for e in self.envs]) \
            if isinstance(first.learner, TorchLearner) else None
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._multi = isinstance(self.single_action_space, gym.spaces.MultiDiscrete)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    # ------------------------------------------------------------------ helpers
    def _stack_obs(self, obs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The envs' observations stacked: ``{key: (N, ...) float32}``."""
        return {k: np.stack([o[k] for o in obs]) for k in obs[0]}

    def _stack_infos(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        """The envs' info dicts as Gymnasium vector infos (every ``_key`` mask all true)."""
        out: dict[str, Any] = {}
        for k in infos[0]:
            values = [info[k] for info in infos]
            out[k] = np.stack(values) if isinstance(values[0], np.ndarray) else np.array(values)
            out[f"_{k}"] = np.ones(self.num_envs, dtype=bool)
        return out

    def _vector_info(self, outcomes: list[tuple[StepInfo, RetentionInfo | None]]
                     ) -> dict[str, Any]:
        """What :meth:`_stack_infos` makes of every env's ``_get_info`` after a step, built by
        columns (the same keys, values and dtypes; ``tests/test_batched_env.py`` compares them
        with single envs')."""
        envs, n = self.envs, self.num_envs
        head = np.array([(int(e._stream.is_phase_start(e._t)),
                          e.bank.view.entries, e.bank.view.nbytes) for e in envs],
                        dtype=np.int64)
        columns: list[tuple[str, np.ndarray]] = [
            ("next_is_phase_start", head[:, 0].copy()), ("bank_entries", head[:, 1].copy()),
            ("bank_bytes", head[:, 2].copy()),
            ("action_mask", np.stack([e.action_masks() for e in envs]))]
        if envs[0].privileged_info:
            truth = [e.oracle_info() for e in envs]
            columns += [(k, np.array([t[k] for t in truth], dtype=np.int64)) for k in truth[0]]
        parts: list[tuple[type, list[Any]]] = [(StepInfo, [o[0] for o in outcomes])]
        if envs[0].retention == "agent":
            parts.append((RetentionInfo, [o[1] or RetentionInfo.before_first_step()
                                          for o in outcomes]))
        for kind, rows in parts:
            table = np.array(rows, dtype=np.float64)  # (N, fields); ints are exact in float64
            for j, (name, integer) in enumerate(_field_kinds(kind)):
                col = table[:, j]
                columns.append((name, col.astype(np.int64) if integer else col.copy()))
        out: dict[str, Any] = {}
        hidden = set(TASK_FREE_HIDDEN) if envs[0].task_free and not envs[0].privileged_info \
            else set()
        for name, values in columns:
            if name not in hidden:
                out[name], out[f"_{name}"] = values, np.ones(n, dtype=bool)
        return out

    def _reserves(self) -> bool:
        """Whether the step being taken ends in the env's own reserve in every env (a phase end:
        the envs share the phase length and reset together, so they end phases together;
        checked, not assumed; never with ``task_free``, whose phase lengths differ)."""
        return all(e._reserves_after_step() for e in self.envs)

    def action_masks(self) -> np.ndarray:
        """``(N, mask_len)`` bool: each env's :meth:`AllocationEnv.action_masks`."""
        return np.stack([e.action_masks() for e in self.envs])

    def _actions(self, actions: Any) -> list[Any]:
        """One action per env, checked for the batch's shape (each env checks its own value)."""
        arr = np.asarray(actions)
        want = (self.num_envs, 2) if self._multi else (self.num_envs,)
        if arr.shape != want:
            raise ValueError(f"actions must have shape {want} (one action per env), got "
                             f"{arr.shape}")
        return list(arr)

    # ------------------------------------------------------------------ the vector API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env (or those of ``options["reset_mask"]``): env ``i`` gets ``seed + i``
        for an int seed, ``seed[i]`` for a list, ``None`` (continue its own generator) for
        ``None``. Other ``options`` go to every env's reset."""
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} envs")
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must be a ({self.num_envs},) bool array")
        obs, infos, partial = [], [], {}
        for i, env in enumerate(self.envs):
            if mask[i]:
                o, info = env.reset(seed=seeds[i], options=options or None)
                infos.append(info)
                partial = self._add_info(partial, info, i)
            else:  # the observation as it stands; no info (its mask is false), as Gymnasium's
                o = env._get_obs()
            obs.append(o)
        self._autoreset[mask] = False
        return self._stack_obs(obs), self._stack_infos(infos) if mask.all() else partial

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                          np.ndarray, dict[str, Any]]:
        """Step every env with its action (batched training); see the module docstring for what
        an env whose episode ended does."""
        acts = self._actions(actions)
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        obs: list[dict[str, np.ndarray] | None] = [None] * n
        infos: list[dict[str, Any] | None] = [None] * n
        stepping = []
        for i in range(n):
            if self._autoreset[i]:
                if self.autoreset_mode == AutoresetMode.DISABLED:
                    raise gym.error.ResetNeeded(
                        f"env {i}'s episode ended: reset it (reset(options={{'reset_mask': "
                        f"mask}})) before stepping with autoreset_mode=DISABLED")
                obs[i], infos[i] = self.envs[i].reset()  # NEXT_STEP: this step is the reset
            else:
                stepping.append(i)
        plans, reports, accs, snapshots = self._learn(stepping, acts)
        outcomes = []
        for i, plan, report, acc, snap in zip(stepping, plans, reports, accs, snapshots,
                                              strict=True):
            rewards[i], terminated[i], done, retained = \
                self.envs[i]._finish_step(plan, report, acc, snap)
            outcomes.append((done, retained))
        ended = terminated | truncated
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP and bool(ended.any())
        if len(stepping) == n and not same_step:  # the common step: infos by columns
            self._autoreset = ended
            return (self._stack_obs([e._get_obs() for e in self.envs]), rewards, terminated,
                    truncated, self._vector_info(outcomes))
        extra: dict[str, Any] = {}
        for i, (done, retained) in zip(stepping, outcomes, strict=True):
            env = self.envs[i]
            obs[i], infos[i] = env._get_obs(), env._get_info(done, retained)
            if self.autoreset_mode == AutoresetMode.SAME_STEP and ended[i]:
                extra = self._add_info(extra, {"final_obs": obs[i], "final_info": infos[i]}, i)
                obs[i], infos[i] = env.reset()
        # SAME_STEP reset them already; the other modes reset them at (or before) the next step
        self._autoreset = np.zeros(n, dtype=bool) if self.autoreset_mode == \
            AutoresetMode.SAME_STEP else ended
        return self._stack_obs(obs), rewards, terminated, truncated, {
            **self._stack_infos(infos), **extra}

    def _learn(self, stepping: list[int], acts: list[Any]
               ) -> tuple[list[Any], list[Any], list[float], list[Any]]:
        """The learning part of a step for the envs ``stepping``: each env's plan
        (:meth:`AllocationEnv._begin_step`), the zero-shot evaluations, the updates, the
        evaluations and, at a phase end, the snapshots, batched when every env steps."""
        together = self._batched is not None and len(stepping) == self.num_envs
        plans = [self.envs[i]._begin_step(acts[i], measure_zero_shot=not together)
                 for i in stepping]
        tasks = [p.task for p in plans]
        updates = self.envs[0].updates_per_step
        if together:  # the subspaces chosen this step: their zero-shot accuracy in one pass
            chosen = [j for j, p in enumerate(plans) if p.zero_shot is None]
            if chosen:
                zero_shot = self._batched.evaluate([tasks[j] for j in chosen], chosen)
                for j, acc in zip(chosen, zero_shot, strict=True):
                    plans[j] = plans[j]._replace(zero_shot=acc)
            reports = self._batched.train(tasks, updates)
            accs = self._batched.evaluate(tasks)
        else:  # analytic, or some envs resetting this step: each learner by itself
            reports = [self.envs[i].learner.train(t, updates) for i, t in
                       zip(stepping, tasks, strict=True)]
            accs = [self.envs[i].learner.evaluate(t) for i, t in
                    zip(stepping, tasks, strict=True)]
        snapshots: list[Any] = [None] * len(stepping)
        if together and self._reserves():
            snapshots = self._batched.snapshot(tasks) or snapshots
        return plans, reports, accs, snapshots

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(env, name)(*args, **kwargs)`` on every env (an attribute: its value)."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of every env."""
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``name`` on every env: one value each (a list or tuple of ``N``), or one for all."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr got {len(values)} values for {self.num_envs} envs")
        for env, value in zip(self.envs, values, strict=True):
            setattr(env, name, value)

    def close_extras(self, **kwargs: Any) -> None:
        if self._batched is not None:
            self._batched.close()
        else:
            for env in self.envs:
                env.close()
