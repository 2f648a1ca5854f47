"""The allocation env: each step decides which subspace the continual learner trains."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from nsr_gym.bank import EVICTION_POLICIES, BankEntry, TaskKnowledgeBank
from nsr_gym.data import make_tasks
from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.learners.base import Learner
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig
from nsr_gym.streams import SCHEDULES, TaskStream, make_stream

BACKENDS = ("torch", "analytic")
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
    the active subspace (SVD) and reserves it in the bank: in place when the task just trained
    already has an entry, as a new entry otherwise (evicting by ``eviction`` when the bank is full).

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
        learner: dict[str, Any] | None = None,
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
            learner: Keyword overrides of ``TorchLearnerConfig`` or ``AnalyticConfig``.
            render_mode: ``None`` or ``"ansi"``.
        """
        capacity = n_tasks if capacity is None else capacity
        self._check_config(schedule, phase_length, n_cycles, capacity, eviction, lambda_switch,
                           acc_weight, updates_per_step, backend, render_mode, n_tasks)
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

        self.learner: Learner = self._make_learner(backend, tasks, n_tasks, learner or {})
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
                      acc_weight, updates_per_step, backend, render_mode, n_tasks) -> None:
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
        if render_mode not in (None, "ansi"):
            problems.append(f"render_mode must be None or 'ansi' (got {render_mode!r})")
        if problems:
            raise ValueError("invalid AllocationEnv configuration: " + "; ".join(problems))

    @staticmethod
    def _make_learner(backend: str, tasks: str, n_tasks: int, overrides: dict[str, Any]) -> Learner:
        config_cls = TorchLearnerConfig if backend == "torch" else AnalyticConfig
        known = set(config_cls.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown {backend} learner option(s) {unknown}; known: {sorted(known)}")
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        if backend == "torch":
            return TorchLearner(make_tasks(tasks, n_tasks), TorchLearnerConfig(**overrides))
        make_tasks(tasks, n_tasks)  # validates the family and size, so both backends agree
        return AnalyticLearner(n_tasks, AnalyticConfig(**overrides))

    # ------------------------------------------------------------------ observation and info
    def _get_obs(self) -> dict[str, np.ndarray]:
        K = self.capacity
        active = np.zeros(K + 1, dtype=np.float32)
        active[0 if self._active_slot is None else 1 + self._active_slot] = 1.0
        return {
            "similarity": np.clip(self._similarity, -1.0, 1.0).astype(np.float32),
            "occupied": self.bank.occupied().astype(np.float32),
            "age": np.minimum(self.bank.ages(self._t) / self.n_steps, 1.0).astype(np.float32),
            "usage": np.minimum(self.bank.usages() / self.n_phases, 1.0).astype(np.float32),
            "active": active,
            "last_accuracy": np.array([self._last_acc], dtype=np.float32),
            "task_shift": np.array([self._task_shift], dtype=np.float32),
        }

    def _get_info(self) -> dict[str, Any]:
        """Flat, numeric, deterministic: ground truth for metrics and the oracle, never for agents."""
        done = self._t >= self.n_steps
        next_task = -1 if done else self._stream.task_at(self._t)
        next_slot = self.bank.slot_of_owner(next_task) if next_task >= 0 else None
        return {
            "next_task_id": next_task,
            "next_task_slot": -1 if next_slot is None else next_slot,
            "next_is_phase_start": int(not done and self._t % self.phase_length == 0),
            "bank_entries": len(self.bank),
            "bank_bytes": self.bank.total_bytes,
            "action_mask": self.action_masks(),
        }

    def action_masks(self) -> np.ndarray:
        """``(K + 2,)`` bool: keep and fresh always valid, ``load k`` only for occupied slots."""
        return np.concatenate([[True, True], self.bank.occupied()])

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
        self._last_acc = 0.0
        self._visits = np.zeros(self.n_tasks, dtype=np.int64)
        self._embedding = self.learner.embed(self._stream.task_at(0))
        self._similarity = self.bank.similarities(self._embedding)
        self._task_shift = 1.0
        return self._get_obs(), self._get_info()

    def _parse_action(self, action: Any) -> int:
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
            self._active_slot, switched = None, True
        elif a >= LOAD_OFFSET:
            k = a - LOAD_OFFSET
            if self.bank.slots[k] is None:
                invalid_load = True
            else:
                self.learner.load(self.bank.get(k).tensors)
                self.bank.touch(k, self._t)
                self._active_slot, switched = k, True
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
        self._similarity = self.bank.similarities(self._embedding)

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
        })
        if self.render_mode == "ansi":
            self._last_render = self._render_line(a, task, acc, reward)
        return self._get_obs(), float(reward), bool(terminated), False, info

    def _reserve(self, task: int) -> tuple[int, float]:
        """Compress the active subspace and store it under ``task``; returns (evicted task, eps)."""
        payload, gap = self.learner.snapshot(task)
        entry = BankEntry(key=self._embedding.copy(), tensors=payload, owner=task, tasks_served=[task])
        slot = self.bank.slot_of_owner(task)
        evicted_task = -1
        if slot is not None:
            self.bank.update(slot, entry, self._t)
        else:
            slot, evicted = self.bank.insert(entry, self._t)
            if evicted is not None:
                evicted_task = evicted.owner
        self._active_slot = slot
        return evicted_task, gap

    @staticmethod
    def _shift(old: np.ndarray, new: np.ndarray) -> float:
        denom = float(np.linalg.norm(old) * np.linalg.norm(new))
        cos = float(old @ new) / denom if denom > 0 else 0.0
        return float(np.clip((1.0 - cos) / 2.0, 0.0, 1.0))

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
