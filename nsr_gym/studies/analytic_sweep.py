"""A vectorised re-statement of the analytic env, kept for the perf figure: many analytic
episodes at once, numpy over runs.

This is a benchmark device, not an env. :func:`simulate_analytic` runs ``B`` episodes of
:class:`~nsr_gym.envs.allocation.AllocationEnv` with ``backend="analytic"`` side by side (one seed,
and optionally one analytic setting, per run) under one of the rule policies, every per-step
operation a numpy operation over the ``B`` runs, so that ``nsr-gym perf`` can report what a
batched analytic sweep costs (:func:`nsr_gym.studies.perf.batched_throughput`). It restates, on
the batch's arrays, what the env, the bank and the rules do one run at a time: the same task
stream (:func:`nsr_gym.streams.make_stream`) and probe embeddings from the same seeds, the same
bank semantics (reserve in place for a returning task, insert in the lowest empty slot, evict by
``lru``/``fifo``/``lfu``, ``reject``; loads count as uses), the rules' thresholds
(:data:`nsr_gym.bank.SIMILARITY_THRESHOLD`, :data:`nsr_gym.agents.policies.SHIFT_THRESHOLD`) and
the same rewards. ``tests/test_perf_batched.py`` checks it against the real env (``gymnasium.make``
rollouts of the agents through :func:`nsr_gym.agents.evaluation.rollout`) to 1e-12; for anything
else use the env.

What it does not cover: ``eval_samples > 0`` draws its binomial evaluation noise from one batch
generator (statistically, not bitwise, the env's), ``least_unique`` eviction, pinned entries,
and learned policies.

Policies, by the names of ``agents.RULE_AGENTS``: ``keep-current``, ``always-fresh``,
``fixed-slot``, ``random-slot`` (its generator seeded with the run's seed, as ``rollout`` does),
``round-robin``, ``similarity`` (recall at ``SIMILARITY_THRESHOLD``), ``oracle`` (fresh at a
first visit) and ``oracle-keep`` (keep at a first visit: THEORY.md's comparator B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium.utils import seeding

from nsr_gym.agents.policies import SHIFT_THRESHOLD
from nsr_gym.bank import EVICTION_POLICIES, SIMILARITY_THRESHOLD
from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.streams import make_stream

#: The rules :func:`simulate_analytic` restates.
POLICIES = ("keep-current", "always-fresh", "fixed-slot", "random-slot", "round-robin",
            "similarity", "oracle", "oracle-keep")


@dataclass
class BatchResult:
    """Per-step arrays of ``B`` episodes, shape ``(B, T)``.

    Attributes:
        reward, accuracy: As the env's ``reward`` and ``info["accuracy"]``.
        action, switched, task_id: The action taken (after the rule), whether it switched, and
            the task served.
    """

    reward: np.ndarray
    accuracy: np.ndarray
    action: np.ndarray
    switched: np.ndarray
    task_id: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        """``(B,)`` episode returns."""
        return self.reward.sum(axis=1)


def _per_run(value, n_runs: int, n_tasks: int) -> np.ndarray:
    """A scalar, a per-task sequence, or a ``(B, M)`` array of per-run settings -> ``(B, M)``."""
    arr = np.asarray(value, dtype=np.float64)
    return np.broadcast_to(arr if arr.ndim == 2 else arr.reshape(-1)[None, :] if arr.ndim == 1
                           else arr, (n_runs, n_tasks)).copy()


def simulate_analytic(policy: str, seeds: Sequence[int], n_tasks: int = 5, schedule: str = "cyclic",
                      phase_length: int = 30, n_cycles: int = 4, capacity: int | None = None,
                      eviction: str = "lru", lambda_switch: float = 0.05, acc_weight: float = 1.0,
                      updates_per_step: int = 1, a_star=None, D=None, tau=None,
                      **config) -> BatchResult:
    """Run ``len(seeds)`` analytic episodes of one policy at once.

    Args:
        policy: One of :data:`POLICIES`.
        seeds: One ``reset`` seed per run.
        n_tasks, schedule, phase_length, n_cycles, capacity, eviction, lambda_switch, acc_weight,
            updates_per_step: As ``AllocationEnv``'s (shared by all runs).
        a_star, D, tau: As ``AnalyticConfig``'s; also ``(B, M)`` arrays, one setting per run.
        **config: Other ``AnalyticConfig`` fields (``gamma``, ``kappa``, ``transfer``,
            ``eval_samples``, ``key_dim``, ``task_similarity``, ``probe_noise``,
            ``embedding_seed``), shared by all runs.

    Returns:
        The per-step arrays of every run.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    if eviction not in EVICTION_POLICIES or eviction == "least_unique":
        raise ValueError("simulate_analytic supports eviction lru, fifo, lfu, reject; "
                         f"got {eviction!r}")
    cfg = AnalyticConfig(**config)
    B, M, L = len(seeds), int(n_tasks), int(phase_length)
    runs = _Runs(seeds, M, M if capacity is None else int(capacity), cfg, schedule, L, n_cycles)
    params = [_per_run(getattr(cfg, name) if value is None else value, B, M)
              for name, value in (("a_star", a_star), ("D", D), ("tau", tau))]
    T = runs.schedule.shape[1] * L
    out = BatchResult(np.zeros((B, T)), np.zeros((B, T)), np.zeros((B, T), np.int64),
                      np.zeros((B, T), bool), np.repeat(runs.schedule, L, axis=1))
    for t in range(T):
        phase, step_in_phase = divmod(t, L)
        task = runs.schedule[:, phase]
        action = runs.rule(policy, task, step_in_phase == 0)
        switched = runs.apply(action, t)
        acc = runs.train_and_evaluate(task, updates_per_step, *params)
        out.accuracy[:, t] = acc
        out.reward[:, t] = acc_weight * acc - lambda_switch * switched
        out.action[:, t], out.switched[:, t] = action, switched
        if (t + 1) % L == 0:  # phase end: reserve, then probe the next task
            runs.reserve(task, t + 1, eviction)
            runs.probe(runs.schedule[:, phase + 1] if t + 1 < T else None)
        else:
            runs.shift = np.zeros(B)
    return out


class _Runs:
    """The state of ``B`` episodes: experience vectors, banks, probes, active slots."""

    def __init__(self, seeds: Sequence[int], M: int, K: int, cfg: AnalyticConfig, schedule: str,
                 L: int, n_cycles: int) -> None:
        B = len(seeds)
        self.cfg, self.B, self.K, self.rows = cfg, B, K, np.arange(B)
        self.model = AnalyticLearner(M, cfg)  # validates the parameters; holds the task keys
        # Streams and probe generators exactly as reset(seed) draws them, per run.
        streams, self.probe_rngs = [], []
        for seed in seeds:
            rng, _ = seeding.np_random(int(seed))
            streams.append(make_stream(schedule, M, L, n_cycles, rng=rng).schedule)
            self.probe_rngs.append(np.random.default_rng(rng.integers(0, 2**63 - 1)))
        self.schedule = np.stack(streams)  # (B, phases)
        self.noise_rng = np.random.default_rng(list(map(int, seeds)))
        self.h = np.zeros((B, M))
        self.bank_h = np.zeros((B, K, M))
        self.keys = np.zeros((B, K, cfg.key_dim), np.float32)  # normalised, as the bank's
        self.occupied = np.zeros((B, K), bool)
        self.owner = np.full((B, K), -1)
        self.usage = np.zeros((B, K), np.int64)
        self.last_used = np.zeros((B, K), np.int64)
        self.order = np.zeros((B, K), np.int64)
        self.next_order = np.zeros(B, np.int64)
        self.active = np.full(B, -1)
        self.rr_phase = np.zeros(B, np.int64)  # round-robin's counter
        self.policy_rngs = [np.random.default_rng(int(seed)) for seed in seeds]  # random-slot's
        self.embedding = self._embed(self.schedule[:, 0])
        self.shift = np.ones(B)

    def _embed(self, tasks: np.ndarray) -> np.ndarray:
        keys = self.model._keys[tasks]
        if self.cfg.probe_noise > 0:
            noise = np.stack([g.standard_normal(self.cfg.key_dim) for g in self.probe_rngs])
            keys = keys + self.cfg.probe_noise * noise
        return keys.astype(np.float32)

    def _similarities(self) -> np.ndarray:
        e64 = self.embedding.astype(np.float64)
        q = (e64 / np.sqrt(np.einsum("bd,bd->b", e64, e64))[:, None]).astype(np.float32)
        return np.clip(np.einsum("bkd,bd->bk", self.keys, q), -1.0, 1.0)

    def rule(self, policy: str, task: np.ndarray, phase_start: bool) -> np.ndarray:
        """The rule's action in every run, from what the env would show it."""
        rows, occupied, active = self.rows, self.occupied, self.active
        shifted = self.shift > SHIFT_THRESHOLD
        action = np.zeros(self.B, np.int64)
        if policy == "always-fresh":
            action[shifted] = 1
        elif policy == "fixed-slot":
            action[shifted & occupied[:, 0]] = 2
        elif policy == "random-slot":
            for b in np.flatnonzero(shifted & occupied.any(axis=1)):
                action[b] = 2 + int(self.policy_rngs[b].choice(np.flatnonzero(occupied[b])))
        elif policy == "round-robin":
            slot = self.rr_phase % self.K
            action[shifted] = np.where(occupied[rows, slot], 2 + slot, 1)[shifted]
            self.rr_phase += shifted
        elif policy == "similarity":
            sims = np.where(occupied, self._similarities(), -np.inf)
            best = np.argmax(sims, axis=1)
            known = sims[rows, best] >= SIMILARITY_THRESHOLD
            action[known] = np.where(best == active, 0, 2 + best)[known]
            action[~known & shifted] = 1
        elif policy in ("oracle", "oracle-keep") and phase_start:
            match = occupied & (self.owner == task[:, None])
            has = match.any(axis=1)
            slot = np.argmax(match, axis=1)
            action[has] = np.where(slot == active, 0, 2 + slot)[has]
            if policy == "oracle":
                action[~has] = 1
        return action

    def apply(self, action: np.ndarray, t: int) -> np.ndarray:
        """Fresh and loads (a load of an empty slot is a no-op); returns ``switched``."""
        fresh = action == 1
        slot = action - 2
        loading = (action >= 2) & self.occupied[self.rows, np.maximum(slot, 0)]
        self.h[fresh] = 0.0
        self.active[fresh] = -1
        if loading.any():
            b, k = self.rows[loading], slot[loading]
            self.h[b] = self.bank_h[b, k]
            self.usage[b, k] += 1
            self.last_used[b, k] = t
            self.active[b] = k
        return fresh | loading

    def train_and_evaluate(self, task: np.ndarray, n_updates: int, a_star: np.ndarray,
                           D: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """``AnalyticLearner.train`` then ``evaluate``, in every run."""
        cfg, rows, h = self.cfg, self.rows, self.h
        for _ in range(n_updates):
            own = h[rows, task]
            if cfg.gamma != 1.0:
                h *= cfg.gamma
            if cfg.transfer:
                h += cfg.transfer
            h[rows, task] = own + 1.0
        acc = a_star[rows, task] - D[rows, task] * np.exp(-h[rows, task] / tau[rows, task])
        if cfg.eval_samples > 0:
            n = cfg.eval_samples
            acc = self.noise_rng.binomial(n, np.clip(acc, 0.0, 1.0)) / n
        return acc

    def probe(self, tasks: np.ndarray | None) -> None:
        """The next phase's probe embedding and the task-shift signal (``None``: episode end)."""
        if tasks is None:
            self.shift = np.zeros(self.B)
            return
        new = self._embed(tasks)
        o64, n64 = self.embedding.astype(np.float64), new.astype(np.float64)
        denom = np.linalg.norm(o64, axis=1) * np.linalg.norm(n64, axis=1)
        dot = np.einsum("bd,bd->b", o64, n64)
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
        self.shift = np.clip((1.0 - cos) / 2.0, 0.0, 1.0)
        self.embedding = new

    def reserve(self, task: np.ndarray, t: int, eviction: str) -> None:
        """The env's phase-end reserve (``AllocationEnv._reserve``), in every run."""
        occupied, rows = self.occupied, self.rows
        match = occupied & (self.owner == task[:, None])
        new = ~match.any(axis=1)
        slot = np.argmax(match, axis=1)
        empty = ~occupied
        has_empty = empty.any(axis=1)
        slot = np.where(new & has_empty, np.argmax(empty, axis=1), slot)
        full = new & ~has_empty
        if full.any() and eviction != "reject":
            # the victim: lexicographic minimum of the policy's keys (TaskKnowledgeBank._victim)
            by = {"lru": (self.last_used, self.order), "fifo": (self.order,),
                  "lfu": (self.usage, self.last_used, self.order)}
            cand = occupied.copy()
            for key in by[eviction]:
                low = np.where(cand, key, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
                cand &= key == low
            slot = np.where(full, np.argmax(cand, axis=1), slot)
        stores = ~full if eviction == "reject" else np.ones(self.B, bool)
        self.active[~stores] = -1  # a rejected insert leaves the active subspace unsaved
        b, k = rows[stores], slot[stores]
        self.bank_h[b, k] = self.cfg.kappa * self.h[b]
        emb = self.embedding[b]
        norm = np.linalg.norm(emb.astype(np.float64), axis=1).astype(np.float32)[:, None]
        self.keys[b, k] = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
        self.owner[b, k] = task[b]
        self.last_used[b, k] = t
        inserted = stores & new
        bi, ki = rows[inserted], slot[inserted]
        self.usage[bi, ki] = 0
        self.order[bi, ki] = self.next_order[bi]
        self.next_order[bi] += 1
        occupied[b, k] = True
        self.active[b] = k
