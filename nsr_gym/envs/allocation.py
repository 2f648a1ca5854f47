"""The allocation env: each step decides which subspace the continual learner trains.

:class:`AllocationEnv` holds a learner (:func:`nsr_gym.learners.make_learner`), a
:class:`~nsr_gym.bank.TaskKnowledgeBank` and a task stream, and reads top to bottom as
Gymnasium's envs do: ``metadata``, ``__init__``, ``_get_obs``, ``_get_info``, ``action_masks``,
``reset``, ``step``, ``render``, ``close``; then saving and loading the bank, the privileged
:meth:`~AllocationEnv.task_schedule`, and the parts of a step (retain, allocate, protect, reserve
at a phase end).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from nsr_gym import validation
from nsr_gym.bank import BankEntry, TaskKnowledgeBank, check_bank_fits, env_geometry
from nsr_gym.learners import AnalyticLearner, Learner, make_learner
from nsr_gym.learners.base import UpdateReport
from nsr_gym.learners.factory import BACKENDS
from nsr_gym.streams import TaskStream, make_stream

__all__ = ["BACKENDS", "DROP", "FRESH", "KEEP", "LOAD_OFFSET", "RESERVE_MODES",
           "RETENTION_MODES", "TASK_FREE_HIDDEN", "WRITE_OFFSET", "AllocationEnv",
           "RetentionInfo", "StepInfo"]

#: Where the env reserves the active subspace at a phase end (see ``AllocationEnv``).
RESERVE_MODES = ("owner", "active")
#: Who decides what the bank keeps: the env's ``eviction`` policy, or the agent's action.
RETENTION_MODES = ("env", "agent")
KEEP = 0
FRESH = 1
#: Offset of the first ``LOAD`` action: action ``LOAD_OFFSET + k`` loads bank slot ``k``.
LOAD_OFFSET = 2
#: Retention actions (``retention="agent"``, the action's second part): drop the pending entry,
#: or ``WRITE_OFFSET + k``: write it into slot ``k``.
DROP = 0
WRITE_OFFSET = 1
_ALWAYS_VALID = np.ones(LOAD_OFFSET, dtype=bool)  # keep and fresh, first in every action mask
#: Info keys a task-free env (``task_free=True``) leaves out unless ``privileged_info=True``:
#: each names the task or times a boundary, which a task-free agent must find by itself.
TASK_FREE_HIDDEN = ("next_is_phase_start", "task_id", "phase", "step_in_phase", "visit",
                    "is_revisit", "phase_end", "zero_shot_accuracy", "evicted_task")


class StepInfo(NamedTuple):
    """What one step did: the keys ``step`` adds to the info dict, in this order (all numbers).

    Attributes:
        task_id: The task trained this step (ground truth, never in the observation).
        phase: Phase index, from 0.
        step_in_phase: Step within the phase, from 0.
        visit: Phases of this task begun so far, this one included.
        is_revisit: 1 from the task's second phase on.
        switched: 1 when the action changed the active subspace (fresh, or a load).
        invalid_load: 1 when the action loaded an empty slot (a no-op).
        accuracy: Held-out accuracy after this step's updates.
        zero_shot_accuracy: The chosen subspace's accuracy before any update (when kept: the
            previous step's accuracy).
        loss: Mean training loss of this step's updates.
        skipped_updates: Updates skipped for a non-finite loss or gradient.
        phase_end: 1 at the last step of a phase (the env reserved the subspace).
        evicted_task: Owner of the entry the reserve evicted, or -1.
        truncation_gap: Accuracy the SVD compression cost at the reserve (``eps``), or 0.
        reserve_skipped: 1 when a non-finite subspace was kept out of the bank.
        protected_tasks: Tasks the distillation term protects during this step.
    """

    task_id: int
    phase: int
    step_in_phase: int
    visit: int
    is_revisit: int
    switched: int
    invalid_load: int
    accuracy: float
    zero_shot_accuracy: float
    loss: float
    skipped_updates: int
    phase_end: int
    evicted_task: int
    truncation_gap: float
    reserve_skipped: int
    protected_tasks: int

    @classmethod
    def before_first_step(cls) -> StepInfo:
        """The values ``reset``'s info carries, so that it has every key ``step``'s has (clients
        such as TorchRL read a fixed set of keys): ``-1`` for the task, phase and step, ``nan``
        for the loss, 0 elsewhere."""
        return cls(-1, -1, -1, 0, 0, 0, 0, 0.0, 0.0, float("nan"), 0, 0, -1, 0.0, 0, 0)


class RetentionInfo(NamedTuple):
    """What the retention part of a step did (``retention="agent"`` only): the keys ``step`` adds
    to the info dict after :class:`StepInfo`'s, in this order.

    Attributes:
        retention: The retention action applied (``0`` drop, ``1 + k`` write into slot ``k``), or
            -1 when no entry was pending.
        stored_slot: The slot the pending entry was written into, or -1 (dropped, or none).
        invalid_retention: 1 when the action asked to write while no entry was pending (a no-op,
            like loading an empty slot; the action mask marks it).
    """

    retention: int
    stored_slot: int
    invalid_retention: int

    @classmethod
    def before_first_step(cls) -> RetentionInfo:
        """``reset``'s values: nothing decided (``-1``), nothing stored, nothing invalid."""
        return cls(-1, -1, 0)


class _StepPlan(NamedTuple):
    """A step up to its training: what :meth:`AllocationEnv._begin_step` decided, which
    :meth:`AllocationEnv._finish_step` completes once the learner has trained and evaluated
    ``task`` (by itself, or batched with other envs' learners)."""

    action: int
    task: int
    phase: int
    step_in_phase: int
    switched: bool
    invalid_load: bool
    zero_shot: float | None
    retained: RetentionInfo | None
    written_over: int
    reserved: tuple[float, bool] | None = None  # task-free: a write's (truncation gap, skipped)


class AllocationEnv(gym.Env[dict[str, np.ndarray], Any]):
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

    Who decides what the bank keeps is the ``retention`` mode:

    * ``"env"`` (the default): the env stores the subspace at the phase end as above, and a new
      entry that meets a full bank evicts by ``eviction``.
    * ``"agent"`` (needs ``reserve="owner"``): at the phase end the env compresses the subspace
      into a *pending* entry (exactly the entry ``"owner"`` mode would store: owner the task just
      trained, key its probe embedding) and stores nothing. At the next step, before the
      allocation, the action's second part decides: drop it, or write it into a slot of the
      agent's choice, overwriting what is there (writing it over its own task's entry updates
      that entry in place, keeping its usage). The env never evicts by itself; ``eviction`` is
      ignored. The last phase's pending entry is never decided: the episode ends first.

    With the torch learner's ``distill_weight > 0``, training protects the tasks the active
    subspace already served: when a subspace is chosen (a load, a fresh one, or a new phase) the
    env calls ``learner.protect(tasks_served - {current task})``, where ``tasks_served`` is the
    loaded entry's (in ``"owner"`` mode just its task), plus every task trained since.

    ``task_free=True`` (needs ``retention="agent"``) is task-free continual learning: the env
    gives no boundary signal and reserves nothing by itself. Phase lengths are drawn from the seed
    (:func:`~nsr_gym.streams.random_phase_lengths`: from ``L // 3`` steps to several times ``L``,
    the episode's length unchanged). Every step the learner embeds a fresh probe batch of the
    data it is about to train on (``embedding`` is then that noisy batch's, not a phase's), so
    ``similarity`` and ``task_shift`` move at every step, and the agent detects a shift from them
    and from its own accuracy. Reserving is the agent's action: the retention part writes the
    *active subspace*, compressed at that moment, into a slot (the pending entry is the active
    subspace itself, with key the mean batch embedding of the steps it trained since it was
    chosen, plus the loaded entry's key when it came from the bank). Distillation protects what
    the chosen subspace served only when the agent chooses it. The info's keys that name the
    task or time a boundary (:data:`TASK_FREE_HIDDEN`) are left out unless
    ``privileged_info=True``.

    ## Action Space
    ``Discrete(K + 2)``: ``0`` keep the active subspace, ``1`` start a fresh one, ``2 + k`` load
    bank slot ``k``. Loading an empty slot is a no-op (no switching cost) flagged by
    ``info["invalid_load"] = 1``; :meth:`action_masks` marks those actions ``False``. Any other
    value (out of range, not an integer, NaN) raises ``ValueError``.

    With ``retention="agent"``: ``MultiDiscrete([K + 2, K + 1])``, an int array
    ``[allocation, retention]``. ``allocation`` is the action above; ``retention`` decides the
    pending entry first: ``0`` drops it, ``1 + k`` writes it into slot ``k``. A load in the same
    step sees the bank after the write. While nothing is pending only ``retention = 0`` is valid;
    another value is a no-op flagged by ``info["invalid_retention"] = 1`` (so unmasked learners
    and the env checkers can sample freely). :meth:`action_masks` returns sb3-contrib's
    ``MultiDiscrete`` mask, both parts concatenated: ``(K + 2) + (K + 1)`` booleans, ``load k``
    valid where slot ``k`` is occupied before this step's write, every retention value while an
    entry is pending and only ``0`` otherwise. Any other shape or value (out of range, NaN, not
    integers) raises ``ValueError``. With ``task_free=True`` the same action, where the
    retention part ``1 + k`` writes the active subspace into slot ``k`` (valid once it has
    trained a step since it was chosen) and ``0`` writes nothing.

    ## Observation Space
    A ``Dict`` of float32 ``Box`` parts; none names the task:

    | key           | shape    | meaning                                                          |
    |---------------|----------|------------------------------------------------------------------|
    | similarity    | (K,)     | cosine of the current task's embedding with each slot's key      |
    | occupied      | (K,)     | 1 where the slot holds an entry                                  |
    | age           | (K,)     | steps since the slot was last written or loaded / episode steps  |
    | usage         | (K,)     | times the slot was loaded / phases per episode                   |
    | active        | (K + 1,) | one-hot: 0 = an unsaved subspace, 1 + k = the entry in slot k    |
    | last_accuracy | (1,)     | accuracy after the previous step                                 |
    | task_shift    | (1,)     | ``(1 - cos) / 2`` between this and the previous probe embedding  |

    With ``retention="agent"``, three more (all 0 while nothing is pending); ``similarity``,
    ``occupied``, ``age`` and ``usage`` describe the bank before the pending write:

    | key                | shape | meaning                                                       |
    |--------------------|-------|---------------------------------------------------------------|
    | pending            | (1,)  | 1 while a subspace awaits the retention decision              |
    | pending_similarity | (K,)  | cosine of the pending entry's key with each slot's key (0 for |
    |                    |       | an empty slot): where its own task's entry is, if anywhere    |
    | similarity_pending | (1,)  | cosine of the current task's embedding with the pending key:  |
    |                    |       | what ``similarity[k]`` reads once it is written into slot k   |

    ``usage`` counts loads, which are the revisits an agent observed, so no separate hit count
    is needed. With ``task_free=True`` the pending entry is the active subspace (see above),
    pending while it has trained since it was chosen, and one more key:

    | key           | shape | meaning                                                         |
    |---------------|-------|-----------------------------------------------------------------|
    | trained_steps | (1,)  | steps the active subspace trained since it was chosen, over L,  |
    |               |       | clipped at 1                                                    |

    ## Rewards
    ``acc_weight * accuracy - lambda_switch * switched`` where ``switched`` is 1 for any action
    other than keep that took effect. A retention decision costs nothing by itself: an agent that
    writes each pending entry where ``eviction`` would have put it gets the env's own rewards.

    ## Starting State
    An empty bank and a fresh subspace; the stream (and, for ``recurring``, its draw) and all
    data order come from the seed.

    ## Episode End
    ``terminated`` when the task stream ends (``n_phases * phase_length`` steps). No truncation
    of its own; wrap with ``TimeLimit`` as usual.

    ## Info
    ``reset`` and ``step`` return the same flat keys (:meth:`_get_info`): the bank's size, the
    action mask, and what the step did (:class:`StepInfo`; at ``reset`` its
    :meth:`~StepInfo.before_first_step` values): the task, phase and visit, whether it switched,
    the accuracy before and after training, the loss, and at a phase end what the reserve
    evicted or skipped. With ``retention="agent"`` also :class:`RetentionInfo` (the retention
    applied and the slot written), and ``evicted_task`` (the owner of another task's entry that
    a write overwrote) comes at the step of the write. ``task_id`` names the task *just*
    trained, which every continual-learning metric needs; what the *coming* step trains is the
    oracle's answer, privileged information for reference agents: :meth:`oracle_info` (in the
    info only with ``privileged_info=True``) and :meth:`task_schedule` (the whole future
    stream); neither is part of the observation.

    ## Arguments
    See ``__init__``. ``retention="agent"`` (with ``reserve="owner"``) makes retention part of
    the action (see Action Space). ``backend="torch"`` is the real learner (``peft`` LoRA on a
    frozen MLP); ``backend="analytic"`` the closed-form model of THEORY.md with the same API
    (:func:`nsr_gym.learners.make_learner` builds either)::

        >>> import gymnasium as gym, nsr_gym
        >>> env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic")
        >>> env.action_space, sorted(env.observation_space)[:2]
        (Discrete(7), ['active', 'age'])
        >>> gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", capacity=3,
        ...          retention="agent").action_space
        MultiDiscrete([5 4])

    ## Version History
    * v0: initial release.
    * v0: ``retention="agent"`` added; the default (``"env"``) is unchanged.
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
        retention: str = "env",
        render_mode: str | None = None,
        capacity_bytes: int | None = None,
        privileged_info: bool = False,
        task_free: bool = False,
    ) -> None:
        """
        Args:
            tasks: Task family: ``"split_digits"``, ``"five_domains"``, ``"permuted_digits"``,
                ``"split_mnist1d"`` or ``"mnist1d_domains"`` (``nsr_gym.data.task_families()``).
            n_tasks: ``M``, distinct tasks.
            schedule: ``"cyclic"``, ``"sequential"`` or ``"recurring"``.
            phase_length: ``L``, steps per phase.
            n_cycles: ``C``; a recurring stream has ``C * M`` phases.
            capacity: ``K``, bank slots (default ``M``).
            eviction: Bank eviction policy when full (see ``nsr_gym.bank``); ignored with
                ``retention="agent"``.
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
            retention: ``"env"`` (the bank evicts by ``eviction``) or ``"agent"`` (the action's
                second part writes or drops each reserved subspace; needs ``reserve="owner"``);
                see the class docstring.
            render_mode: ``None`` or ``"ansi"``.
            capacity_bytes: Byte budget of the bank (``None``, the default: slots only): the
                entries' exact bytes never sum to more, and a reserve that would exceed it evicts
                by ``eviction`` as often as it takes (see ``nsr_gym.bank.TaskKnowledgeBank``).
                Smaller entries (``learner={"payload_dtype": "auto"}``, lower SVD ranks) then
                hold more tasks in the same bytes. Needs ``retention="env"``.
            privileged_info: ``True`` adds the oracle's ground truth (``next_task_id``,
                ``next_task_slot``) to every info, for reference agents and studies that
                measure against it. Off by default, so that a client that feeds ``info`` to its
                agent does not leak the task's identity; :meth:`oracle_info` reads the same
                values on demand. With ``task_free=True`` it also keeps the keys of
                :data:`TASK_FREE_HIDDEN`.
            task_free: Task-free continual learning (needs ``retention="agent"``): random phase
                lengths, no boundary signal, a probe batch per step, and reserving is the
                agent's action; see the class docstring.
        """
        # ---- configuration
        if isinstance(learner, Learner) and n_tasks != learner.n_tasks:
            raise ValueError(f"n_tasks={n_tasks} but the learner passed has {learner.n_tasks} "
                             f"tasks; pass n_tasks={learner.n_tasks}")
        capacity = n_tasks if capacity is None else capacity
        problems = validation.env_config_problems(
            n_tasks=n_tasks, phase_length=phase_length, n_cycles=n_cycles, capacity=capacity,
            updates_per_step=updates_per_step, lambda_switch=lambda_switch, acc_weight=acc_weight,
            schedule=schedule, eviction=eviction, backend=backend, reserve=reserve,
            reserve_modes=RESERVE_MODES, render_mode=render_mode,
            render_modes=self.metadata["render_modes"], retention=retention,
            retention_modes=RETENTION_MODES, learner=learner)
        if problems:
            raise ValueError("invalid AllocationEnv configuration: " + "; ".join(problems))
        self.n_tasks = int(n_tasks)
        self.schedule_kind = schedule
        self.phase_length = int(phase_length)
        self.n_cycles = int(n_cycles)
        self.capacity = int(capacity)
        self.eviction = eviction
        self.lambda_switch = float(lambda_switch)
        self.acc_weight = float(acc_weight)
        self.updates_per_step = int(updates_per_step)
        self.reserve = reserve
        self.retention = retention
        self.render_mode = render_mode
        if not isinstance(privileged_info, (bool, np.bool_)):
            raise ValueError(f"invalid AllocationEnv configuration: privileged_info must be True "
                             f"or False, got {privileged_info!r}")
        self.privileged_info = bool(privileged_info)
        if not isinstance(task_free, (bool, np.bool_)):
            raise ValueError(f"invalid AllocationEnv configuration: task_free must be True or "
                             f"False, got {task_free!r}")
        if task_free and retention != "agent":
            raise ValueError("invalid AllocationEnv configuration: task_free=True needs "
                             "retention='agent' (no boundary tells the env when to reserve, so "
                             "the agent's action writes the active subspace into the bank)")
        self.task_free = bool(task_free)
        self.n_phases = self.n_tasks * self.n_cycles
        self.n_steps = self.n_phases * self.phase_length

        # ---- learner and bank handles (the bank is emptied by every reset)
        if isinstance(learner, Learner):  # a ready learner names its own kind
            self.learner: Learner = learner
            self.backend = "analytic" if isinstance(learner, AnalyticLearner) else "torch"
        else:
            self.learner = make_learner(backend, learner, tasks, n_tasks)
            self.backend = backend
        if capacity_bytes is not None and retention == "agent":
            raise ValueError("invalid AllocationEnv configuration: capacity_bytes needs "
                             "retention='env' (one write may have to evict several entries)")
        self.capacity_bytes = capacity_bytes
        self.bank = TaskKnowledgeBank(self.capacity, self.learner.key_dim, eviction,
                                      capacity_bytes=capacity_bytes)
        self._stream: TaskStream | None = None  # set by reset
        self._pending: BankEntry | None = None  # retention="agent": the entry awaiting a decision
        self._begin_candidate(None)  # task_free: the active subspace's key so far (reset again)
        self._last_trained = -1  # task_free: the task of the latest update (a write's owner)

        # ---- spaces
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
        self.action_space: spaces.Space = spaces.Discrete(K + LOAD_OFFSET)
        if self.retention == "agent":
            self.observation_space = spaces.Dict({
                **self.observation_space.spaces,
                "pending": unit(1),
                "pending_similarity": spaces.Box(-1.0, 1.0, (K,), np.float32),
                "similarity_pending": spaces.Box(-1.0, 1.0, (1,), np.float32),
            })
            self.action_space = spaces.MultiDiscrete([K + LOAD_OFFSET, K + WRITE_OFFSET])
        if self.task_free:
            self.observation_space = spaces.Dict({**self.observation_space.spaces,
                                                  "trained_steps": unit(1)})

    def _get_obs(self) -> dict[str, np.ndarray]:
        """The observation: fresh float32 arrays every step (callers may keep them)."""
        view = self.bank.view
        active = np.zeros(self.capacity + 1, dtype=np.float32)
        active[0 if self._active_slot is None else 1 + self._active_slot] = 1.0
        age = (np.float32(self._t) - view.last_used) * view.occupied / self.n_steps
        obs = {
            "similarity": view.similarities(self._embedding).copy(),
            "occupied": view.occupied.copy(),
            "age": np.minimum(age, 1.0, out=age),
            "usage": np.minimum(view.usage / self.n_phases, 1.0),
            "active": active,
            "last_accuracy": np.array([self._last_acc], dtype=np.float32),
            "task_shift": np.array([self._task_shift], dtype=np.float32),
        }
        if self.retention == "agent":
            obs.update(self._pending_obs())
        if self.task_free:
            obs["trained_steps"] = np.array(
                [min(self._candidate_steps / self.phase_length, 1.0)], dtype=np.float32)
        return obs

    def _pending_obs(self) -> dict[str, np.ndarray]:
        """The observation's ``retention="agent"`` parts (zeros while nothing is pending)."""
        if not self._has_pending():
            return {"pending": np.zeros(1, np.float32),
                    "pending_similarity": np.zeros(self.capacity, np.float32),
                    "similarity_pending": np.zeros(1, np.float32)}
        key = self._candidate_key() if self.task_free else self._pending.key
        return {"pending": np.ones(1, np.float32),
                "pending_similarity": self.bank.similarities(key),
                "similarity_pending": np.array([_cosine(self._embedding, key)],
                                               dtype=np.float32)}

    def _has_pending(self) -> bool:
        """Whether an entry awaits the retention decision: the reserved subspace of the last
        phase, or (``task_free``) the active subspace once it has trained since chosen."""
        return self._candidate_steps > 0 if self.task_free else self._pending is not None

    def _candidate_key(self) -> np.ndarray:
        """``task_free``: the key the active subspace would be written with, ``(key_dim,)``
        float32: the mean batch embedding of its steps (and the loaded entry's key)."""
        return (self._candidate_sum / self._candidate_count).astype(np.float32)

    def _get_info(self, step: StepInfo | None = None,
                  retained: RetentionInfo | None = None) -> dict[str, Any]:
        """Flat, numeric, deterministic, the same keys after ``reset`` and every ``step``.

        Keys: ``next_is_phase_start``, ``bank_entries``, ``bank_bytes``, ``action_mask``; with
        ``privileged_info=True`` the oracle's ground truth (:meth:`oracle_info`); then those of
        ``step`` (:class:`StepInfo`; at ``reset``, :meth:`StepInfo.before_first_step`'s values)
        and, with ``retention="agent"``, of ``retained`` (:class:`RetentionInfo`).

        Every value has a dtype, as readers that batch infos into arrays want (TorchRL's
        ``default_info_dict_reader`` reads ``value.dtype``): counts, ids and 0/1 flags are
        ``np.int64``, accuracies and losses ``np.float64`` (a ``float``, exactly the value it
        was), ``action_mask`` a bool array. ``np.int64`` is not an ``int``: JSON needs
        ``int(value)``.
        """
        view = self.bank.view
        info: dict[str, Any] = {
            "next_is_phase_start": np.int64(self._stream.is_phase_start(self._t)),
            "bank_entries": np.int64(view.entries),
            "bank_bytes": np.int64(view.nbytes),
            "action_mask": self.action_masks(),
        }
        parts: list[dict[str, Any]] = [(step or StepInfo.before_first_step())._asdict()]
        if self.privileged_info:
            parts.insert(0, self.oracle_info())
        if self.retention == "agent":
            parts.append((retained or RetentionInfo.before_first_step())._asdict())
        integer = (int, np.integer, np.bool_)  # bool is an int; the rest are float or np.floating
        for part in parts:
            info.update({k: np.int64(v) if isinstance(v, integer) else np.float64(v)
                         for k, v in part.items()})
        if self.task_free and not self.privileged_info:
            for k in TASK_FREE_HIDDEN:
                del info[k]
        return info

    def oracle_info(self) -> dict[str, int]:
        """The oracle's ground truth before the coming step: ``next_task_id`` (the task it
        trains, -1 once done) and ``next_task_slot`` (the slot that task owns, or -1; with
        ``retention="agent"``, before the pending write).

        Privileged information, as :meth:`task_schedule`: in the info only with
        ``privileged_info=True``; an agent compared with the others must not read it.
        """
        if self._stream is None:
            raise ResetNeeded("call reset() before oracle_info(): reset draws the stream")
        next_task = -1 if self._t >= self.n_steps else self._stream.task_at(self._t)
        return {"next_task_id": next_task,
                "next_task_slot": self.bank.view.owner_slot.get(next_task, -1)}

    def action_masks(self) -> np.ndarray:
        """``(K + 2,)`` bool: keep and fresh always valid, ``load k`` only for occupied slots.

        With ``retention="agent"``, ``(K + 2) + (K + 1)`` bool (sb3-contrib's ``MultiDiscrete``
        convention, the parts concatenated): the allocation part as above, for the bank before
        this step's write; then the retention part, all valid while an entry is pending and only
        ``0`` (drop) otherwise.
        """
        allocation = np.concatenate((_ALWAYS_VALID, self.bank.view.occupied > 0))
        if self.retention == "env":
            return allocation
        retention = np.zeros(self.capacity + WRITE_OFFSET, dtype=bool)
        retention[slice(None) if self._has_pending() else DROP] = True
        return np.concatenate((allocation, retention))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: a new stream, learner state and empty bank, all from ``seed``.

        Args:
            seed: Seed of ``self.np_random``, from which every draw of the episode comes.
            options: ``{"bank": path}`` starts from the bank saved there instead of an empty one
                (see :meth:`load_bank`).
        """
        super().reset(seed=seed)
        self._stream = make_stream(self.schedule_kind, self.n_tasks, self.phase_length,
                                   self.n_cycles, rng=self.np_random,
                                   random_lengths=self.task_free)
        self.learner.reset(self.np_random)
        if (self.bank.eviction, self.bank.capacity_bytes) != (self.eviction, self.capacity_bytes):
            # a bank loaded last episode kept its own policy and budget: back to the env's
            self.bank = TaskKnowledgeBank(self.capacity, self.learner.key_dim, self.eviction,
                                          capacity_bytes=self.capacity_bytes)
        self.bank.clear()
        self._pending = None
        self._t = 0
        self._active_slot: int | None = None  # bank slot of the active subspace, None: unsaved
        self._active_served: list[int] = []  # tasks the active subspace has served, in order
        self._protected: list[int] = []
        self._task_keys: dict[int, np.ndarray] = {}  # latest probe embedding per task seen
        self._last_acc = 0.0
        self._visits = np.zeros(self.n_tasks, dtype=np.int64)
        self._begin_candidate(None)
        self._last_trained = -1  # task_free: the task of the latest update (a write's owner)
        if (options or {}).get("bank") is not None:
            self.bank = self._read_bank(options["bank"])
        self._embedding = self.learner.embed(self._stream.task_at(0))
        self._task_shift = 1.0
        return self._get_obs(), self._get_info()

    def step(self, action: Any
             ) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        """(Retain,) allocate, train ``updates_per_step`` updates, evaluate; at a phase end,
        reserve."""
        plan = self._begin_step(action)
        report = self.learner.train(plan.task, self.updates_per_step)
        reward, terminated, done, retained = self._finish_step(
            plan, report, self.learner.evaluate(plan.task))
        return self._get_obs(), reward, terminated, False, self._get_info(done, retained)

    def _begin_step(self, action: Any, measure_zero_shot: bool = True) -> _StepPlan:
        """The step before its training: check the action, (retain,) allocate, and measure the
        chosen subspace's zero-shot accuracy. :class:`~nsr_gym.envs.batched.BatchedAllocationEnv`
        calls it and :meth:`_finish_step` around one batched update of all its learners;
        ``measure_zero_shot=False`` leaves the plan's ``zero_shot`` at ``None`` where it needs
        an evaluation, which the batch then runs for all its envs at once (the learner does not
        change before training)."""
        if self._stream is None or self._t >= self.n_steps:
            raise ResetNeeded("call reset() before step() (and after the episode terminated)")
        retained = None
        if self.retention == "agent":
            a, r = validation.parse_retention_action(action, self.capacity)
        else:
            a = validation.parse_action(action, self.action_space.n)
        phase, step_in_phase = self._stream.phase_at(self._t)
        task = int(self._stream.schedule[phase])
        if step_in_phase == 0:
            self._visits[task] += 1

        # 0. retention="agent": the pending entry (task_free: the active subspace) is written or
        #    dropped before the allocation
        written_over, reserved = -1, None
        if self.task_free:
            retained, written_over, reserved = self._write_active(r)
        elif self.retention == "agent":
            retained, written_over = self._retain(r)

        # 1. the allocation decision, and what the chosen subspace knows before any update
        switched, invalid_load = self._allocate(a)
        if switched or (step_in_phase == 0 and not self.task_free):
            zero_shot = self._choose_subspace(task, measure_zero_shot)
        elif step_in_phase == 0:  # task_free: measured for the metrics; the learner is not told
            zero_shot = self.learner.evaluate(task) if measure_zero_shot else None
        else:
            zero_shot = self._last_acc
        return _StepPlan(a, task, phase, step_in_phase, switched, invalid_load, zero_shot,
                         retained, written_over, reserved)

    def _finish_step(self, plan: _StepPlan, report: UpdateReport, acc: float,
                     snapshot: tuple[dict[str, Any], float] | None = None
                     ) -> tuple[float, bool, StepInfo, RetentionInfo | None]:
        """The step after the learner trained ``plan.task`` (``report``) and evaluated it
        (``acc``): the reward and the phase end's reserve. ``snapshot``: at a phase end,
        ``learner.snapshot(plan.task)`` already taken (the batched env takes all its learners'
        at once); ``None`` takes it here.

        Returns:
            ``(reward, terminated, what the step did, what its retention did)``, from which
            :meth:`step` (or the batched env, for all its envs at once) makes the info.
        """
        # 2. the reward of what training reached
        a, task, phase, step_in_phase, switched, invalid_load, zero_shot, retained, \
            written_over, reserved = plan
        reward = self._reward(acc, switched)
        self._last_acc = acc
        self._t += 1

        # 3. at the phase end: compress and reserve, then probe the next task (task_free: no
        #    reserve, and a probe of the next step's batch at every step)
        phase_end = self._phase_ends_at(self._t)
        if self.task_free:
            evicted_task, (gap, skipped) = -1, reserved or (0.0, False)
            self._trained_on(task)
        else:
            self._task_shift = 0.0
            evicted_task, gap, skipped = self._end_phase(task, snapshot) if phase_end \
                else (-1, 0.0, False)
        evicted_task = max(evicted_task, written_over)  # one of them: an agent's env never evicts
        terminated = self._t >= self.n_steps

        visit = int(self._visits[task])
        done = StepInfo(task, phase, step_in_phase, visit, int(visit > 1), int(switched),
                        int(invalid_load), acc, zero_shot, report.loss, report.skipped,
                        int(phase_end), evicted_task, gap, int(skipped), len(self._protected))
        if self.render_mode == "ansi":
            self._last_render = self._render_line(a, task, acc, reward, retained)
        return float(reward), bool(terminated), done, retained

    def _reward(self, acc: float, switched: bool) -> float:
        """``acc_weight * accuracy - lambda_switch * switched`` (the class docstring)."""
        return self.acc_weight * acc - self.lambda_switch * float(switched)

    def _phase_ends_at(self, t: int) -> bool:
        """Whether a phase ends just before global step ``t`` (a new one starts, or the stream
        ends)."""
        return t == self.n_steps or self._stream.is_phase_start(t)

    def _reserves_after_step(self) -> bool:
        """Whether the step being taken ends in the env's own reserve (a phase end; never with
        ``task_free``, where reserving is the agent's)."""
        return not self.task_free and self._phase_ends_at(self._t + 1)

    def render(self) -> str | None:
        """``"ansi"``: one line for the last step (time, task, action, accuracy, reward, bank)."""
        if self.render_mode == "ansi":
            return getattr(self, "_last_render", "(no step yet)")
        return None

    def close(self) -> None:
        self.learner.close()

    # ------------------------------------------------------------------ bank files
    def save_bank(self, path: str | os.PathLike) -> None:
        """Save the bank atomically (:meth:`TaskKnowledgeBank.save`) with a ``geometry.json``
        naming the backend, backbone and capacity it was made with, for :meth:`load_bank`."""
        self.bank.save(path, geometry=env_geometry(self.backend, self.learner, self.capacity,
                                                   self.n_tasks))

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

    def task_schedule(self) -> np.ndarray:
        """``(n_phases,)`` int64: the task id of every phase of this episode's stream.

        Privileged information, for reference agents that plan with the future (the
        clairvoyant): it is never part of the observation or the info, and an agent compared
        with the others must not read it.

        Raises:
            ResetNeeded: before the first ``reset`` (the stream is drawn there).
        """
        if self._stream is None:
            raise ResetNeeded("call reset() before task_schedule(): reset draws the stream")
        return self._stream.schedule.astype(np.int64, copy=True)

    def phase_starts(self) -> np.ndarray:
        """``(n_phases,)`` int64: the step at which each phase of this episode begins (``L``
        apart, except with ``task_free``, whose lengths are drawn).

        Privileged information, as :meth:`task_schedule` (with ``task_free`` it times every
        boundary the agent has to detect).

        Raises:
            ResetNeeded: before the first ``reset``.
        """
        if self._stream is None:
            raise ResetNeeded("call reset() before phase_starts(): reset draws the stream")
        return self._stream.phase_starts()

    def _read_bank(self, path: str | os.PathLike) -> TaskKnowledgeBank:
        bank = TaskKnowledgeBank.load(path)
        check_bank_fits(bank, path, self.backend, self.learner, self.capacity, self.n_tasks)
        # Steps count from this episode's start: the most recent use becomes "now".
        latest = max((e.last_used_step for e in bank.slots if e is not None), default=0)
        bank.shift_steps(self._t - latest)
        return bank

    # ------------------------------------------------------------------ the parts of a step
    def _retain(self, r: int) -> tuple[RetentionInfo, int]:
        """Apply retention action ``r`` to the pending entry (``retention="agent"``).

        Returns:
            ``(what it did, owner of another task's entry the write overwrote or -1)``.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return RetentionInfo(-1, -1, int(r != DROP)), -1
        if r == DROP:
            self._active_slot = None  # the active subspace is not an entry (as a rejected insert)
            return RetentionInfo(DROP, -1, 0), -1
        slot = r - WRITE_OFFSET
        old = self.bank.write(slot, pending, self._t)
        self._active_slot = slot
        return RetentionInfo(r, slot, 0), -1 if old is None else old.owner

    def _write_active(self, r: int) -> tuple[RetentionInfo, int, tuple[float, bool] | None]:
        """``task_free``: apply retention action ``r`` to the active subspace: ``0`` writes
        nothing, ``1 + k`` compresses it now and writes it into slot ``k`` (owner: the task of
        its latest update, for the metrics; key: :meth:`_candidate_key`).

        Returns:
            ``(what it did, owner of another task's entry the write overwrote or -1, (truncation
            gap, skipped) of a write or None)``; a non-finite subspace is not written.
        """
        if not self._has_pending():
            return RetentionInfo(-1, -1, int(r != DROP)), -1, None
        if r == DROP:
            return RetentionInfo(DROP, -1, 0), -1, None
        payload, gap = self._compress(self._last_trained)
        if payload is None:
            return RetentionInfo(r, -1, 0), -1, (0.0, True)
        slot = r - WRITE_OFFSET
        entry = BankEntry(key=self._candidate_key(), tensors=payload, owner=self._last_trained,
                          tasks_served=list(self._active_served))
        old = self.bank.write(slot, entry, self._t)
        self._active_slot = slot
        written_over = -1 if old is None or old.owner == entry.owner else old.owner
        return RetentionInfo(r, slot, 0), written_over, (gap, False)

    def _begin_candidate(self, key: np.ndarray | None) -> None:
        """``task_free``: a subspace was chosen (``key``: the loaded entry's, None: a fresh
        one); the key it would be written with starts from there."""
        self._candidate_steps, self._candidate_count = 0, 0 if key is None else 1
        self._candidate_sum = np.zeros(self.learner.key_dim) if key is None \
            else key.astype(np.float64)

    def _trained_on(self, task: int) -> None:
        """``task_free``: the active subspace trained a step on ``task`` (with the batch of
        ``embedding``); then probe the next step's batch."""
        self._candidate_sum += self._embedding
        self._candidate_count += 1
        self._candidate_steps += 1
        self._last_trained = task
        if task not in self._active_served:
            self._active_served.append(task)
        if self._t < self.n_steps:
            new_embedding = self.learner.embed(self._stream.task_at(self._t))
            self._task_shift = _task_shift(self._embedding, new_embedding)
            self._embedding = new_embedding

    def _allocate(self, a: int) -> tuple[bool, bool]:
        """Apply action ``a`` to the active subspace; returns ``(switched, invalid_load)``."""
        if a == FRESH:
            self.learner.fresh()
            self._active_slot, self._active_served = None, []
            if self.task_free:
                self._begin_candidate(None)
            return True, False
        if a >= LOAD_OFFSET:
            k = a - LOAD_OFFSET
            if self.bank.slots[k] is None:
                return False, True
            entry = self.bank.get(k)
            self.learner.load(entry.tensors)
            self.bank.touch(k, self._t)
            self._active_slot, self._active_served = k, list(entry.tasks_served)
            if self.task_free:
                self._begin_candidate(entry.key)
            return True, False
        return False, False

    def _choose_subspace(self, task: int, evaluate: bool = True) -> float | None:
        """A subspace was chosen for ``task`` (a switch or a new phase): protect the other tasks
        it served, and return its accuracy on ``task`` before any update (where a recovery
        starts; ``None`` when not ``evaluate``: the caller measures it)."""
        self._protected = [t for t in self._active_served if t != task]
        self.learner.protect(self._protected)
        return self.learner.evaluate(task) if evaluate else None

    def _end_phase(self, task: int, snapshot: tuple[dict[str, Any], float] | None = None
                   ) -> tuple[int, float, bool]:
        """Reserve the subspace trained on ``task`` (``snapshot``: its snapshot, if taken
        already), then probe the next task (if any).

        Returns:
            ``(evicted task or -1, truncation gap, whether the reserve was skipped)``.
        """
        evicted_task, gap, skipped = self._reserve(task, snapshot)
        if self._t < self.n_steps:
            new_embedding = self.learner.embed(self._stream.task_at(self._t))
            self._task_shift = _task_shift(self._embedding, new_embedding)
            self._embedding = new_embedding
        return evicted_task, gap, skipped

    def _reserve(self, task: int, snapshot: tuple[dict[str, Any], float] | None = None
                 ) -> tuple[int, float, bool]:
        """Compress the active subspace (unless ``snapshot`` is its compressed snapshot already)
        and reserve it (by the ``reserve`` mode).

        Returns:
            ``(evicted task or -1, eps, skipped)``; a non-finite subspace never reaches the bank
            (``skipped``).
        """
        if task not in self._active_served:
            self._active_served.append(task)
        self._task_keys[task] = self._embedding
        payload, gap = self._compress(task) if snapshot is None else _finite(snapshot)
        if payload is None:
            return -1, 0.0, True
        if self.reserve == "owner":
            entry = BankEntry(key=self._embedding.copy(), tensors=payload, owner=task,
                              tasks_served=[task])
            if self.retention == "agent":  # the agent decides at the next step
                self._pending = entry
                return -1, gap, False
            slot = self.bank.view.owner_slot.get(task)  # bank.slot_of_owner(task), no slot scan
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
            self.bank.update(slot, entry, self._t)
        else:
            slot, old = self.bank.insert(entry, self._t)
            if old is not None:
                evicted_task = old.owner
        self._active_slot = slot
        return evicted_task, gap, False

    def _compress(self, task: int) -> tuple[dict[str, Any] | None, float]:
        """``learner.snapshot(task)``: the active subspace compressed and the accuracy on
        ``task`` it cost; ``(None, 0.0)`` for a non-finite subspace (never stored)."""
        try:
            return _finite(self.learner.snapshot(task))
        except ValueError as err:  # compress_lora refuses NaN/inf factors; anything else is a bug
            if "finite" not in str(err):
                raise
            return None, 0.0

    def _render_line(self, action: int, task: int, acc: float, reward: float,
                     retained: RetentionInfo | None = None) -> str:
        names = {KEEP: "keep", FRESH: "fresh"}
        act = names.get(action, f"load[{action - LOAD_OFFSET}]")
        occ = "".join("#" if o else "." for o in self.bank.occupied())
        kept = ""
        if retained is not None and retained.retention >= 0:
            kept = " drop" if retained.stored_slot < 0 else f" write[{retained.stored_slot}]"
        return (f"t={self._t:5d} task={task} action={act:9s} acc={acc:.3f} "
                f"reward={reward:+.3f} bank=[{occ}]{kept}")


def _finite(snapshot: tuple[dict[str, Any] | None, float]
            ) -> tuple[dict[str, Any] | None, float]:
    """A snapshot ``(payload, gap)``, or ``(None, 0.0)`` when its payload is not finite."""
    payload, gap = snapshot
    if payload is None or not validation.payload_is_finite(payload):
        return None, 0.0
    return payload, gap


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors in [-1, 1], 0 when one is zero (as the bank's recall)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(np.clip(a64 @ b64 / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _task_shift(old: np.ndarray, new: np.ndarray) -> float:
    """``(1 - cos) / 2`` between two probe embeddings, in [0, 1] (0.5 when one is zero)."""
    denom = float(np.linalg.norm(old) * np.linalg.norm(new))
    cos = float(old @ new) / denom if denom > 0 else 0.0
    return float(np.clip((1.0 - cos) / 2.0, 0.0, 1.0))
