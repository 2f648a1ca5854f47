"""The allocation env: each step decides which subspace the continual learner trains."""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from nsr_gym import validation
from nsr_gym.bank import EVICTION_POLICIES, BankEntry, TaskKnowledgeBank
from nsr_gym.data import make_tasks
from nsr_gym.envs.bank_view import BankView
from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.learners.base import Learner
from nsr_gym.learners.torch_learner import BACKBONE_OPTIONS, TorchLearner, TorchLearnerConfig
from nsr_gym.streams import SCHEDULES, TaskStream, make_stream

BACKENDS = ("torch", "analytic")
#: Where the env reserves the active subspace at a phase end (see ``AllocationEnv``).
RESERVE_MODES = ("owner", "active")
KEEP = 0
FRESH = 1
#: Offset of the first ``LOAD`` action: action ``LOAD_OFFSET + k`` loads bank slot ``k``.
LOAD_OFFSET = 2


class AllocationEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Continual learning as memory management over LoRA subspaces.

    ## Description
    A learner with a frozen backbone meets a stream of tasks in phases of ``phase_length`` steps.
    Its *active subspace* (LoRA adapter plus head) is what it trains and is evaluated with. At
    every step the agent decides what the active subspace is: keep it, start a fresh one, or load
    an entry of the TaskKnowledgeBank. The env then runs ``updates_per_step`` optimiser updates on
    the current task and evaluates on held-out data. At the end of each phase the env compresses
    the active subspace (SVD) and reserves it in the bank (evicting by ``eviction`` when a new
    entry meets a full bank). Where it goes is the ``reserve`` mode:

    * ``"owner"`` (the default): one entry per task. The subspace is stored under the task just
      trained: in place when that task already has an entry, as a new entry otherwise. Loading
      another task's entry to warm-start leaves that entry untouched.
    * ``"active"``: entries are shared and updated in place. The subspace is written back into
      the slot it was loaded from (its ``tasks_served`` grows, its key becomes the mean probe
      embedding of those tasks); only a subspace that is not an entry (a fresh one) is inserted.
      An entry keeps the task it was first stored for as its owner, so ``info["next_task_slot"]``
      (the oracle's ground truth) names a slot only for a task that owns one.

    With the torch learner's ``distill_weight > 0``, training protects the tasks the active
    subspace already served: when a subspace is chosen (a load, a fresh one, or a new phase) the
    env calls ``learner.protect(tasks_served - {current task})``, where ``tasks_served`` is the
    loaded entry's (in ``"owner"`` mode just its task), plus every task trained since.

    ## Action Space
    ``Discrete(K + 2)``: ``0`` keep the active subspace, ``1`` start a fresh one, ``2 + k`` load
    bank slot ``k``. Loading an empty slot is a no-op (no switching cost) flagged by
    ``info["invalid_load"] = 1``; :meth:`action_masks` marks those actions ``False``. Any other
    value (out of range, not an integer, NaN) raises ``ValueError``.

    ## Observation Space
    A ``Dict`` of float32 ``Box`` parts; none names the task:

    | key             | shape     | meaning                                                        |
    |-----------------|-----------|----------------------------------------------------------------|
    | similarity      | (K,)      | cosine of the current task's embedding with each slot's key    |
    | occupied        | (K,)      | 1 where the slot holds an entry                                |
    | age             | (K,)      | steps since the slot was last written or loaded / episode steps |
    | usage           | (K,)      | times the slot was loaded / phases per episode                 |
    | active          | (K + 1,)  | one-hot: 0 = an unsaved subspace, 1 + k = the entry in slot k  |
    | last_accuracy   | (1,)      | accuracy after the previous step                               |
    | task_shift      | (1,)      | ``(1 - cos) / 2`` between this and the previous probe embedding |

    ## Rewards
    ``acc_weight * accuracy - lambda_switch * switched`` where ``switched`` is 1 for any action
    other than keep that took effect.

    ## Starting State
    An empty bank and a fresh subspace; the stream (and, for ``recurring``, its draw) and all
    data order come from the seed.

    ## Episode End
    ``terminated`` when the task stream ends (``n_phases * phase_length`` steps). No truncation
    of its own; wrap with ``TimeLimit`` as usual.

    ## Arguments
    See ``__init__``. ``backend="torch"`` is the real learner (``peft`` LoRA on a frozen MLP);
    ``backend="analytic"`` the closed-form model of THEORY.md with the same API.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        tasks: str = "split_digits",
        n_tasks: int = 5,
        schedule: str = "cyclic",
        phase_length: int = 30,
        n_cycles: int = 4,
        capacity: int | None = None,
        eviction: str = "lru",
        lambda_switch: float = 0.05,
        acc_weight: float = 1.0,
        updates_per_step: int = 1,
        backend: str = "torch",
        learner: dict[str, Any] | Learner | None = None,
        reserve: str = "owner",
        render_mode: str | None = None,
    ) -> None:
        """
        Args:
            tasks: Task family (``"split_digits"`` or ``"permuted_digits"``).
            n_tasks: ``M``, distinct tasks.
            schedule: ``"cyclic"``, ``"sequential"`` or ``"recurring"``.
            phase_length: ``L``, steps per phase.
            n_cycles: ``C``; a recurring stream has ``C * M`` phases.
            capacity: ``K``, bank slots (default ``M``).
            eviction: Bank eviction policy when full (see ``nsr_gym.bank``).
            lambda_switch: Switching cost per effective non-keep action (reward units).
            acc_weight: Weight of accuracy in the reward.
            updates_per_step: Optimiser updates per env step.
            backend: ``"torch"`` or ``"analytic"``.
            learner: Keyword overrides of ``TorchLearnerConfig`` or ``AnalyticConfig``; or a
                ready :class:`~nsr_gym.learners.base.Learner` (such as a paper-scale
                ``make_paper_learner(...)``), which brings its own tasks: ``tasks`` and
                ``backend`` are then ignored (its class says which), and ``n_tasks`` must equal
                its ``n_tasks``.
            reserve: ``"owner"`` (an entry per task) or ``"active"`` (shared entries, updated in
                place); see the class docstring.
            render_mode: ``None`` or ``"ansi"``.
        """
        if isinstance(learner, Learner) and n_tasks != learner.n_tasks:
            raise ValueError(f"n_tasks={n_tasks} but the learner passed has {learner.n_tasks} "
                             f"tasks; pass n_tasks={learner.n_tasks}")
        capacity = n_tasks if capacity is None else capacity
        self._check_config(schedule, phase_length, n_cycles, capacity, eviction, lambda_switch,
                           acc_weight, updates_per_step, backend, render_mode, n_tasks, reserve)
        self.schedule_kind = schedule
        self.phase_length = int(phase_length)
        self.n_cycles = int(n_cycles)
        self.capacity = int(capacity)
        self.eviction = eviction
        self.lambda_switch = float(lambda_switch)
        self.acc_weight = float(acc_weight)
        self.updates_per_step = int(updates_per_step)
        self.backend = backend
        self.render_mode = render_mode
        self.n_tasks = int(n_tasks)
        self.reserve = reserve

        if isinstance(learner, Learner):  # a ready learner names its own kind
            self.learner: Learner = learner
            self.backend = "analytic" if isinstance(learner, AnalyticLearner) else "torch"
        else:
            self.learner = self._make_learner(backend, tasks, n_tasks, learner or {})
        self.bank = TaskKnowledgeBank(self.capacity, self.learner.key_dim, eviction)
        self._stream: TaskStream | None = None
        self.n_steps = self.n_tasks * self.n_cycles * self.phase_length
        self.n_phases = self.n_tasks * self.n_cycles

        K = self.capacity
        unit = lambda n: spaces.Box(0.0, 1.0, (n,), np.float32)  # noqa: E731
        self.observation_space = spaces.Dict({
            "similarity": spaces.Box(-1.0, 1.0, (K,), np.float32),
            "occupied": unit(K),
            "age": unit(K),
            "usage": unit(K),
            "active": unit(K + 1),
            "last_accuracy": unit(1),
            "task_shift": unit(1),
        })
        self.action_space = spaces.Discrete(K + LOAD_OFFSET)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_config(schedule, phase_length, n_cycles, capacity, eviction, lambda_switch,
                      acc_weight, updates_per_step, backend, render_mode, n_tasks,
                      reserve="owner") -> None:
        problems = []
        for name, v in (("n_tasks", n_tasks), ("phase_length", phase_length), ("n_cycles", n_cycles),
                        ("capacity", capacity), ("updates_per_step", updates_per_step)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        for name, v in (("lambda_switch", lambda_switch), ("acc_weight", acc_weight)):
            if not isinstance(v, (int, float, np.floating)) or not np.isfinite(v) or v < 0:
                problems.append(f"{name} must be a finite number >= 0 (got {v!r})")
        if schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES} (got {schedule!r})")
        if eviction not in EVICTION_POLICIES:
            problems.append(f"eviction must be one of {EVICTION_POLICIES} (got {eviction!r})")
        if backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS} (got {backend!r})")
        if reserve not in RESERVE_MODES:
            problems.append(f"reserve must be one of {RESERVE_MODES} (got {reserve!r})")
        if render_mode not in (None, "ansi"):
            problems.append(f"render_mode must be None or 'ansi' (got {render_mode!r})")
        if problems:
            raise ValueError("invalid AllocationEnv configuration: " + "; ".join(problems))

    @staticmethod
    def _make_learner(backend: str, tasks: str, n_tasks: int, overrides: dict[str, Any]) -> Learner:
        config_cls = TorchLearnerConfig if backend == "torch" else AnalyticConfig
        if backend != "torch":  # a backbone variant's network options do not apply to the model
            overrides = {k: v for k, v in overrides.items() if k not in BACKBONE_OPTIONS}
        known = set(config_cls.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        torch_only = [k for k in unknown if k in TorchLearnerConfig.__dataclass_fields__]
        if torch_only:
            raise ValueError(f"learner option(s) {torch_only} belong to the torch backend (the "
                             f"{backend} model has no such part); drop them or use "
                             "backend='torch'")
        if unknown:
            raise ValueError(f"unknown {backend} learner option(s) {unknown}; known: {sorted(known)}")
        problems = validation.learner_option_problems(backend, overrides)
        if problems:
            raise ValueError(f"invalid {backend} learner options: " + "; ".join(problems))
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        if backend == "torch":
            return TorchLearner(make_tasks(tasks, n_tasks), TorchLearnerConfig(**overrides))
        make_tasks(tasks, n_tasks)  # validates the family and size, so both backends agree
        return AnalyticLearner(n_tasks, AnalyticConfig(**overrides))

    # ------------------------------------------------------------------ observation and info
    def _view(self) -> BankView:
        """The bank's arrays for obs and info (see ``BankView``), with current similarities."""
        view = getattr(self, "_bank_view", None)
        if view is None or not view.is_current(self.bank):
            view = self._bank_view = BankView(self.bank, self.n_phases)
        self._similarity = view.similarities(getattr(self, "_embedding", None))
        return view

    def _get_obs(self) -> dict[str, np.ndarray]:
        view = self._view()
        active = np.zeros(self.capacity + 1, dtype=np.float32)
        active[0 if self._active_slot is None else 1 + self._active_slot] = 1.0
        # Fresh arrays every step (callers may keep them); age is the only per-step arithmetic.
        age = (np.float32(self._t) - view.last_used) * view.occupied / self.n_steps
        return {
            "similarity": self._similarity.copy(),
            "occupied": view.occupied.copy(),
            "age": np.minimum(age, 1.0, out=age),
            "usage": view.usage.copy(),
            "active": active,
            "last_accuracy": np.array([self._last_acc], dtype=np.float32),
            "task_shift": np.array([self._task_shift], dtype=np.float32),
        }

    def _get_info(self) -> dict[str, Any]:
        """Flat, numeric, deterministic: ground truth for metrics and the oracle, never for agents."""
        view = self._view()
        done = self._t >= self.n_steps
        next_task = -1 if done else self._stream.task_at(self._t)
        return {
            "next_task_id": next_task,
            "next_task_slot": view.owner_slot.get(next_task, -1),
            "next_is_phase_start": int(not done and self._t % self.phase_length == 0),
            "bank_entries": view.entries,
            "bank_bytes": view.nbytes,
            "action_mask": view.mask.copy(),
        }

    def action_masks(self) -> np.ndarray:
        """``(K + 2,)`` bool: keep and fresh always valid, ``load k`` only for occupied slots."""
        return self._view().mask.copy()

    # ------------------------------------------------------------------ reset / step
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._stream = make_stream(self.schedule_kind, self.n_tasks, self.phase_length,
                                   self.n_cycles, rng=rng)
        self.learner.reset(rng)
        self.bank = TaskKnowledgeBank(self.capacity, self.learner.key_dim, self.eviction)
        self._t = 0
        self._active_slot: int | None = None
        self._active_served: list[int] = []  # tasks the active subspace has served, in order
        self._protected: list[int] = []
        self._task_keys: dict[int, np.ndarray] = {}  # latest probe embedding per task seen
        self._last_acc = 0.0
        self._visits = np.zeros(self.n_tasks, dtype=np.int64)
        if (options or {}).get("bank") is not None:
            self.bank = self._read_bank(options["bank"])
        self._embedding = self.learner.embed(self._stream.task_at(0))
        self._similarity = self.bank.similarities(self._embedding)
        self._task_shift = 1.0
        return self._get_obs(), self._get_info()

    def _parse_action(self, action: Any) -> int:
        if type(action) is int or isinstance(action, np.integer):  # the common case, cheaply
            if 0 <= action < self.action_space.n:
                return int(action)
        arr = np.asarray(action)
        if arr.size != 1 or arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
            raise ValueError(f"action must be one integer in [0, {self.action_space.n}), got {action!r}")
        value = arr.reshape(()).item()
        if isinstance(value, float) and (not np.isfinite(value) or value != int(value)):
            raise ValueError(f"action must be an integer in [0, {self.action_space.n}), got {action!r}")
        value = int(value)
        if not 0 <= value < self.action_space.n:
            raise ValueError(
                f"action {value} is out of range: use 0 (keep), 1 (fresh) or 2..{self.action_space.n - 1} "
                f"(load slot 0..{self.capacity - 1})"
            )
        return value

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if self._stream is None or self._t >= self.n_steps:
            raise ResetNeeded("call reset() before step() (and after the episode terminated)")
        a = self._parse_action(action)
        task = self._stream.task_at(self._t)
        phase, step_in_phase = divmod(self._t, self.phase_length)
        phase_start = step_in_phase == 0
        if phase_start:
            self._visits[task] += 1

        # 1. the allocation decision
        switched, invalid_load = False, False
        if a == FRESH:
            self.learner.fresh()
            self._active_slot, self._active_served, switched = None, [], True
        elif a >= LOAD_OFFSET:
            k = a - LOAD_OFFSET
            if self.bank.slots[k] is None:
                invalid_load = True
            else:
                entry = self.bank.get(k)
                self.learner.load(entry.tensors)
                view = self._view()
                self.bank.touch(k, self._t)
                view.touched(self.bank, k)
                self._active_slot, switched = k, True
                self._active_served = list(entry.tasks_served)
        if switched or phase_start:  # a subspace chosen for this task: protect what it served
            self._protected = [t for t in self._active_served if t != task]
            self.learner.protect(self._protected)
        # What the subspace knows of this task before any update: the start of a recovery.
        zero_shot = self.learner.evaluate(task) if (switched or phase_start) else self._last_acc

        # 2. training and evaluation
        report = self.learner.train(task, self.updates_per_step)
        acc = self.learner.evaluate(task)
        reward = self.acc_weight * acc - self.lambda_switch * float(switched)
        self._last_acc = acc
        self._t += 1

        # 3. at the phase end: compress and reserve, then probe the next task
        phase_end = self._t % self.phase_length == 0
        evicted_task, gap = -1, 0.0
        if phase_end:
            evicted_task, gap = self._reserve(task)
        terminated = self._t >= self.n_steps
        if phase_end and not terminated:
            new_embedding = self.learner.embed(self._stream.task_at(self._t))
            self._task_shift = self._shift(self._embedding, new_embedding)
            self._embedding = new_embedding
        else:
            self._task_shift = 0.0
        # (similarity to the bank is refreshed by _view() when the bank or the probe changed)

        info = self._get_info()
        info.update({
            "task_id": task,
            "phase": phase,
            "step_in_phase": step_in_phase,
            "visit": int(self._visits[task]),
            "is_revisit": int(self._visits[task] > 1),
            "switched": int(switched),
            "invalid_load": int(invalid_load),
            "accuracy": acc,
            "zero_shot_accuracy": zero_shot,
            "loss": report.loss,
            "skipped_updates": report.skipped,
            "phase_end": int(phase_end),
            "evicted_task": evicted_task,
            "truncation_gap": gap,
            "reserve_skipped": int(phase_end and self._reserve_skipped),
            "protected_tasks": len(self._protected),
        })
        if self.render_mode == "ansi":
            self._last_render = self._render_line(a, task, acc, reward)
        return self._get_obs(), float(reward), bool(terminated), False, info

    def _reserve(self, task: int) -> tuple[int, float]:
        """Compress the active subspace and reserve it (by the ``reserve`` mode); returns
        ``(evicted task, eps)``."""
        if task not in self._active_served:
            self._active_served.append(task)
        self._task_keys[task] = self._embedding
        try:
            payload, gap = self.learner.snapshot(task)
        except ValueError as err:  # compress_lora refuses NaN/inf factors; anything else is a bug
            if "finite" not in str(err):
                raise
            payload, gap = None, 0.0
        self._reserve_skipped = payload is None or not validation.payload_is_finite(payload)
        if self._reserve_skipped:  # a non-finite subspace never reaches the bank
            return -1, 0.0
        view = self._view()
        if self.reserve == "owner":
            entry = BankEntry(key=self._embedding.copy(), tensors=payload, owner=task,
                              tasks_served=[task])
            slot = view.owner_slot.get(task)  # bank.slot_of_owner(task), without the slot scan
        else:  # "active": back into the slot the subspace came from, shared by what it served
            slot = self._active_slot
            if slot is not None and self.bank.slots[slot] is None:
                slot = None
            served = list(self._active_served)
            keys = [self._task_keys[t] for t in served if t in self._task_keys]
            owner = task if slot is None else self.bank.slots[slot].owner
            entry = BankEntry(key=np.mean(keys, axis=0).astype(np.float32), tensors=payload,
                              owner=owner, tasks_served=served)
        evicted_task = -1
        if slot is not None:
            old = self.bank.slots[slot]
            self.bank.update(slot, entry, self._t)
        else:
            slot, old = self.bank.insert(entry, self._t)
            if old is not None:
                evicted_task = old.owner
        if slot is not None:
            view.placed(self.bank, slot, old)
        self._active_slot = slot
        return evicted_task, gap

    @staticmethod
    def _shift(old: np.ndarray, new: np.ndarray) -> float:
        denom = float(np.linalg.norm(old) * np.linalg.norm(new))
        cos = float(old @ new) / denom if denom > 0 else 0.0
        return float(np.clip((1.0 - cos) / 2.0, 0.0, 1.0))

    # ------------------------------------------------------------------ bank files
    def save_bank(self, path: str | os.PathLike) -> None:
        """Save the bank atomically (:meth:`TaskKnowledgeBank.save`) with a ``geometry.json``
        naming the backend, backbone and capacity it was made with, for :meth:`load_bank`."""
        self.bank.save(path)
        validation.write_geometry(path, validation.env_geometry(
            self.backend, self.learner, self.capacity, self.n_tasks))

    def load_bank(self, path: str | os.PathLike) -> None:
        """Replace the bank by the one saved at ``path``, mid-episode; ``reset(options={"bank":
        path})`` starts an episode from it instead of an empty bank.

        Raises:
            BankFormatError: if the files are corrupt, or the bank was made for another backend,
                backbone, capacity or task set; the message lists each mismatch.
            ResetNeeded: before the first ``reset``.
        """
        if self._stream is None:
            raise ResetNeeded("call reset() before load_bank(), or start an episode from the "
                              "bank with reset(options={'bank': path})")
        self.bank = self._read_bank(path)
        self._active_slot = None  # the active subspace is not an entry of the new bank
        self._similarity = self.bank.similarities(self._embedding)

    def _read_bank(self, path: str | os.PathLike) -> TaskKnowledgeBank:
        bank = TaskKnowledgeBank.load(path)
        validation.check_bank_fits(bank, path, self.backend, self.learner, self.capacity,
                                   self.n_tasks)
        # Steps count from this episode's start: the most recent use becomes "now".
        latest = max((e.last_used_step for e in bank.slots if e is not None), default=0)
        for e in bank.slots:
            if e is not None:
                e.last_used_step += self._t - latest
                e.created_step += self._t - latest
        return bank

    # ------------------------------------------------------------------ render / close
    def _render_line(self, action: int, task: int, acc: float, reward: float) -> str:
        names = {KEEP: "keep", FRESH: "fresh"}
        act = names.get(action, f"load[{action - LOAD_OFFSET}]")
        occ = "".join("#" if o else "." for o in self.bank.occupied())
        return (f"t={self._t:5d} task={task} action={act:9s} acc={acc:.3f} "
                f"reward={reward:+.3f} bank=[{occ}]")

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return getattr(self, "_last_render", "(no step yet)")
        return None

    def close(self) -> None:
        self.learner.close()
