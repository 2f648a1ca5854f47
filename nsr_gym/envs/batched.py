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

What the batch does per env is split by what the step changes. A *quiet* step (the action
keeps, and retains nothing; the step is inside a phase, neither its first nor its last; not
``task_free``) changes only the env's clock and what training reached: the batch finishes all
quiet steps with array operations on the rows it returns (observation and info of every env,
kept between steps), without the env's own per-step Python. Every other step (a switch, a phase
start or end, a retention write, a reset) runs through the env's own code and rewrites that
env's rows. An env changed from outside (``call`` of a method that may change it, ``set_attr``)
has its rows rebuilt at the next step.

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

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from nsr_gym import validation
from nsr_gym.envs.allocation import DROP, KEEP, AllocationEnv, RetentionInfo, _StepPlan
from nsr_gym.learners import TorchLearner
from nsr_gym.learners.batched import BatchedTorchLearner, clone_learner

__all__ = ["BatchedAllocationEnv", "check_actions", "make_batched_env", "reset_arguments",
           "resolve_env_kwargs"]


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
                     shards: int = 1, context: str | None = None,
                     **kwargs: Any) -> gym.vector.VectorEnv:
    """The ``vector_entry_point`` of every offline id: ``gym.make_vec`` passes the registered
    kwargs merged with the user's. ``max_episode_steps`` (a registered ``TimeLimit``) must not
    cut the episode: the env ends by itself at ``n_phases * phase_length`` steps.

    ``shards > 1`` (``gym.make_vec(id, N, shards=k)``) divides the envs over ``k`` batched envs
    in as many processes (:class:`~nsr_gym.envs.sharded.ShardedBatchedEnv`, workers started by
    the ``multiprocessing`` method ``context``); ``1``: one :class:`BatchedAllocationEnv` here.
    """
    autoreset_mode = kwargs.pop("autoreset_mode", AutoresetMode.NEXT_STEP)
    kw = resolve_env_kwargs(kwargs)
    if shards == 1:
        env: gym.vector.VectorEnv = BatchedAllocationEnv(num_envs, autoreset_mode=autoreset_mode,
                                                         **kw)
        n_steps = env.envs[0].n_steps
    else:
        from nsr_gym.envs.sharded import ShardedBatchedEnv  # it builds on this module

        env = ShardedBatchedEnv(num_envs, shards=shards, autoreset_mode=autoreset_mode,
                                context=context, **kw)
        n_steps = env.local.envs[0].n_steps
    if max_episode_steps is not None and max_episode_steps < n_steps:
        env.close()
        raise ValueError(f"max_episode_steps={max_episode_steps} would cut the batched env's "
                         f"{n_steps}-step episodes; leave it unset")
    return env


def reset_arguments(seed: int | list[int | None] | None, options: dict[str, Any] | None,
                    num_envs: int) -> tuple[list[int | None], np.ndarray, dict[str, Any]]:
    """A vector reset's arguments per env: the seeds (``seed + i`` for an int, ``seed[i]`` for a
    list, ``None`` for ``None``), ``options["reset_mask"]`` as an ``(N,)`` bool array (all true
    when absent) and the other options.

    Raises:
        ValueError: for a seed list or a mask of the wrong length.
    """
    if seed is None or isinstance(seed, (int, np.integer)):
        seeds = [None if seed is None else int(seed) + i for i in range(num_envs)]
    else:
        seeds = list(seed)
        if len(seeds) != num_envs:
            raise ValueError(f"reset got {len(seeds)} seeds for {num_envs} envs")
    options = dict(options or {})
    mask = options.pop("reset_mask", None)
    mask = np.ones(num_envs, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (num_envs,):
        raise ValueError(f"reset_mask must be a ({num_envs},) bool array")
    return seeds, mask, options


def check_actions(actions: Any, env: AllocationEnv, num_envs: int, resetting: np.ndarray,
                  autoreset_mode: AutoresetMode) -> np.ndarray:
    """``actions`` as an ``(N,)`` (``(N, 2)`` with ``retention="agent"``) array of ``N`` envs
    configured as ``env``, every action checked before any env steps, so that an invalid one
    raises (naming its env) with no env moved. ``resetting``: the envs whose episode ended last
    step; they ignore their action (``NEXT_STEP``), or must be reset first (``DISABLED``:
    :class:`gymnasium.error.ResetNeeded`)."""
    if resetting.any() and autoreset_mode == AutoresetMode.DISABLED:
        raise gym.error.ResetNeeded(
            f"env {int(np.flatnonzero(resetting)[0])}'s episode ended: reset it "
            f"(reset(options={{'reset_mask': mask}})) before stepping with "
            f"autoreset_mode=DISABLED")
    arr = np.asarray(actions)
    multi = isinstance(env.action_space, gym.spaces.MultiDiscrete)
    want = (num_envs, 2) if multi else (num_envs,)
    if arr.shape != want:
        raise ValueError(f"actions must have shape {want} (one action per env), got "
                         f"{arr.shape}")
    high = np.array([env.capacity + 2, env.capacity + 1]) if multi else env.action_space.n
    if arr.dtype.kind in "iu" and ((arr >= 0) & (arr < high)).all():
        return arr  # the common case, in two array operations
    for i in np.flatnonzero(~resetting):  # the env's own check says why
        try:
            if multi:
                validation.parse_retention_action(arr[i], env.capacity)
            else:
                validation.parse_action(arr[i], int(high))
        except ValueError as err:
            raise ValueError(f"env {i}: {err}") from None
    return arr


#: Methods :meth:`BatchedAllocationEnv.call` may run without making the rows stale.
_READ_ONLY = frozenset({"action_masks", "oracle_info", "task_schedule", "phase_starts",
                        "render", "save_bank"})


class _Rows(NamedTuple):
    """What the batch returns, kept between steps: ``obs`` and ``info`` as returned (``(N, ...)``
    arrays, every key of one env's), and ``last_used``, ``(N, K)`` float32, each bank view's
    ``last_used`` (the age of a quiet step's observation is computed from it)."""

    obs: dict[str, np.ndarray]
    info: dict[str, np.ndarray]
    last_used: np.ndarray


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
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._rows: _Rows | None = None  # set by the first reset
        self._stale = False  # an env may have changed outside step/reset: rebuild its row
        # Quiet steps (see _quiet) go by arrays; with task_free phases have their own lengths
        # and every step probes, so none is quiet.
        self._quiet_ok = not first.task_free
        self._phase_length, self._n_steps = first.phase_length, first.n_steps
        self._agent_retains = first.retention == "agent"
        self._quiet_info = {"switched": 0, "invalid_load": 0, "phase_end": 0,
                            "evicted_task": -1, "truncation_gap": 0.0, "reserve_skipped": 0,
                            "next_is_phase_start": 0}
        if self._agent_retains:  # nothing was pending: no retention decision (RetentionInfo)
            self._quiet_info.update(RetentionInfo(-1, -1, 0)._asdict())

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _stack_obs(obs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The envs' observations stacked: ``{key: (N, ...) float32}``."""
        return {k: np.stack([o[k] for o in obs]) for k in obs[0]}

    @staticmethod
    def _stack_infos(infos: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The envs' info dicts by key, ``{key: (N, ...)}`` in each value's dtype (no masks)."""
        return {k: np.stack([info[k] for info in infos]) for k in infos[0]}

    def _keep_rows(self, obs: list[dict[str, np.ndarray]] | None = None,
                   infos: list[dict[str, Any]] | None = None) -> None:
        """Start the rows afresh from every env's observation and info (``None``: as the env
        stands, its info as at a reset)."""
        envs = self.envs
        obs = obs or [e._get_obs() for e in envs]
        infos = infos or [e._get_info() for e in envs]
        self._rows = _Rows(self._stack_obs(obs), self._stack_infos(infos),
                           np.stack([e.bank.view.last_used for e in envs]))

    def _write_row(self, i: int, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Env ``i``'s observation and info (its own dicts) into the rows."""
        rows = self._rows
        for k, v in obs.items():
            rows.obs[k][i] = v
        for k, v in info.items():
            rows.info[k][i] = v
        rows.last_used[i] = self.envs[i].bank.view.last_used

    def _quiet(self, arr: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the envs whose step is quiet (module docstring): the action keeps (and
        retains nothing), the step is inside a phase, neither its first nor its last, and the
        rows hold the env's state. A quiet step changes the env's clock and what its training
        reached, nothing else, so :meth:`_step_quiet` does it for all of them with array
        operations; every other env steps through its own code."""
        n = self.num_envs
        if not self._quiet_ok or self._rows is None or self._stale or arr.dtype.kind not in "iu":
            return np.zeros(n, dtype=bool)
        envs, length = self.envs, self._phase_length
        t = np.fromiter((e._t for e in envs), np.int64, n)
        keep = arr == KEEP if arr.ndim == 1 else (arr == np.array([KEEP, DROP])).all(1)
        quiet = keep & (t < self._n_steps) & (t % length != 0) & ((t + 1) % length != 0) \
            & ~self._autoreset
        if self._agent_retains:  # nothing pending inside a phase; checked, not assumed
            quiet &= np.fromiter((e._pending is None for e in envs), bool, n)
        return quiet

    def _step_quiet(self, rows: np.ndarray, reports: list[Any], accs: list[float],
                    rewards: np.ndarray) -> None:
        """Finish the quiet steps of the envs ``rows`` (the learners trained and evaluated them):
        what :meth:`AllocationEnv._finish_step`, ``_get_obs`` and ``_get_info`` make of a
        keep inside a phase, for all of them at once (``tests/test_batched_env.py`` compares
        them with single envs'). What the step does not change (similarity, occupancy, usage,
        the task, its visit, the bank's figures, the mask) stays in the rows as it was."""
        obs, info = self._rows.obs, self._rows.info
        zero_shot = np.empty(len(rows))
        for j, (i, acc) in enumerate(zip(rows, accs, strict=True)):
            env = self.envs[i]
            zero_shot[j] = env._last_acc
            rewards[i] = env._reward(acc, False)  # a keep
            env._last_acc = acc
            env._t += 1
        t = np.fromiter((self.envs[i]._t for i in rows), np.int64, len(rows))
        age = (t.astype(np.float32)[:, None] - self._rows.last_used[rows]) \
            * obs["occupied"][rows] / self._n_steps
        obs["age"][rows] = np.minimum(age, 1.0)
        obs["last_accuracy"][rows, 0] = accs
        info["accuracy"][rows] = accs
        info["zero_shot_accuracy"][rows] = zero_shot
        info["loss"][rows] = [r.loss for r in reports]
        info["skipped_updates"][rows] = [r.skipped for r in reports]
        info["step_in_phase"][rows] = (t - 1) % self._phase_length
        for k, v in self._quiet_info.items():
            info[k][rows] = v

    def _reserves(self) -> bool:
        """Whether the step being taken ends in the env's own reserve in every env (a phase end:
        the envs share the phase length and reset together, so they end phases together;
        checked, not assumed; never with ``task_free``, whose phase lengths differ)."""
        return all(e._reserves_after_step() for e in self.envs)

    def action_masks(self) -> np.ndarray:
        """``(N, mask_len)`` bool: each env's :meth:`AllocationEnv.action_masks`."""
        if self._rows is not None and not self._stale:
            return self._rows.info["action_mask"].copy()
        return np.stack([e.action_masks() for e in self.envs])

    def _out(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fresh copies of the rows (callers may keep or change them) and the info masks."""
        rows, every = self._rows, np.ones(self.num_envs, dtype=bool)
        info: dict[str, Any] = {}
        for k, v in rows.info.items():
            info[k], info[f"_{k}"] = v.copy(), every.copy()
        return {k: v.copy() for k, v in rows.obs.items()}, info

    # ------------------------------------------------------------------ the vector API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env (or those of ``options["reset_mask"]``): env ``i`` gets ``seed + i``
        for an int seed, ``seed[i]`` for a list, ``None`` (continue its own generator) for
        ``None``. Other ``options`` go to every env's reset."""
        seeds, mask, options = reset_arguments(seed, options, self.num_envs)
        obs, infos, partial = [], [], {}
        for i, env in enumerate(self.envs):
            if mask[i]:
                o, info = env.reset(seed=seeds[i], options=options or None)
                infos.append(info)
                partial = self._add_info(partial, info, i)
                if self._rows is not None and not mask.all():
                    self._write_row(i, o, info)
            else:  # the observation as it stands; no info (its mask is false), as Gymnasium's
                o = env._get_obs()
            obs.append(o)
        if mask.all() or self._rows is None:
            self._keep_rows(obs=obs, infos=infos if mask.all() else None)
            self._stale = not mask.all()  # envs not reset: their info rows are reset-like
        self._autoreset[mask] = False
        if mask.all():
            return self._out()
        return self._stack_obs(obs), partial

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                          np.ndarray, dict[str, Any]]:
        """Step every env with its action (batched training); see the module docstring for what
        an env whose episode ended does."""
        if self._rows is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        resetting = self._autoreset.copy()
        arr = check_actions(actions, self.envs[0], self.num_envs, resetting, self.autoreset_mode)
        acts = list(arr)
        n, envs = self.num_envs, self.envs
        quiet = self._quiet(arr)
        self._stale = True  # until the step completes: an env that raised leaves no stale rows
        stepping = np.flatnonzero(~resetting).tolist()
        together = self._batched is not None and len(stepping) == n
        plans = {i: envs[i]._begin_step(acts[i], measure_zero_shot=not together)
                 for i in stepping if not quiet[i]}
        tasks = [plans[i].task if i in plans else envs[i]._stream.task_at(envs[i]._t)
                 for i in stepping]
        reports, accs, snapshots = self._learn(stepping, plans, tasks, together)
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        finals: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
        for j, i in enumerate(stepping):
            if i in plans:
                env = envs[i]
                rewards[i], terminated[i], done, retained = \
                    env._finish_step(plans[i], reports[j], accs[j], snapshots[j])
                finals[i] = env._get_obs(), env._get_info(done, retained)
                self._write_row(i, *finals[i])
        if quiet.any():
            picked = [j for j, i in enumerate(stepping) if quiet[i]]
            self._step_quiet(np.flatnonzero(quiet), [reports[j] for j in picked],
                             [accs[j] for j in picked], rewards)
        for i in np.flatnonzero(resetting):  # NEXT_STEP: this step is the reset
            self._write_row(i, *envs[i].reset())
        self._stale = False  # every row was written or stepped from a written one
        ended = terminated | truncated
        extra: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            for i in np.flatnonzero(ended):
                final_obs, final_info = finals[int(i)]
                extra = self._add_info(extra, {"final_obs": final_obs, "final_info": final_info},
                                       i)
                self._write_row(i, *envs[i].reset())
            ended = np.zeros(n, dtype=bool)  # reset already
        self._autoreset = ended
        obs, info = self._out()
        return obs, rewards, terminated, truncated, {**info, **extra}

    def _learn(self, stepping: list[int], plans: dict[int, _StepPlan], tasks: list[int],
               together: bool) -> tuple[list[Any], list[float], list[Any]]:
        """The learning part of a step for the envs ``stepping`` (their ``tasks``; ``plans``:
        those not quiet, from :meth:`AllocationEnv._begin_step`): the zero-shot evaluations,
        the updates, the evaluations and, at a phase end, the snapshots, batched when every
        env steps (``together``)."""
        updates = self.envs[0].updates_per_step
        if together:  # the subspaces chosen this step: their zero-shot accuracy in one pass
            chosen = [i for i, p in plans.items() if p.zero_shot is None]
            if chosen:
                zero_shot = self._batched.evaluate([plans[i].task for i in chosen], chosen)
                for i, acc in zip(chosen, zero_shot, strict=True):
                    plans[i] = plans[i]._replace(zero_shot=acc)
            reports = self._batched.train(tasks, updates)
            accs = self._batched.evaluate(tasks)
        else:  # analytic, or some envs resetting this step: each learner by itself
            learners = [self.envs[i].learner for i in stepping]
            reports = [m.train(t, updates) for m, t in zip(learners, tasks, strict=True)]
            accs = [m.evaluate(t) for m, t in zip(learners, tasks, strict=True)]
        snapshots: list[Any] = [None] * len(stepping)
        if together and self._reserves():
            snapshots = self._batched.snapshot(tasks, accs) or snapshots
        return reports, accs, snapshots

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(env, name)(*args, **kwargs)`` on every env (an attribute: its value)."""
        if name not in _READ_ONLY:
            self._stale = True  # it may have changed an env: its rows are rebuilt next step
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
        self._stale = True
        for env, value in zip(self.envs, values, strict=True):
            setattr(env, name, value)

    def close_extras(self, **kwargs: Any) -> None:
        if self._batched is not None:
            self._batched.close()
        else:
            for env in self.envs:
                env.close()
