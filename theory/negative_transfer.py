"""Negative transfer: another task's head and adapter as a warm start, in the experience model.

The analytic learner (A1-A3, ``theory.fit``) predicts the regret slopes of always-fresh and
keep-current on the torch backend within a few percent but not those of the blind agents: its
LOAD of another task's entry starts the phase from that entry's experience of the current task
(positive transfer and retention only), while on torch a trained head and adapter of another
task *slow learning down*, the more so the longer that entry was trained on its own task
(fixed-slot's slot 0, trained on task 0 alone, learns the other tasks with a time constant of
about 2, 2.4 and 4 times a fresh one's at visits 1, 2 and 5). :class:`TransferModel` adds that:

* an update on task ``m`` after a *wrong load* (a LOAD of an entry whose owner ``j != m``)
  adds ``u = 1 / (1 + beta max(h_j - c h_m, 0))`` to ``h_m`` instead of 1, where ``h_j`` is
  the active adapter's current experience of the entry's task (it decays by ``gamma`` while
  ``m`` trains) and ``h_m`` its experience of ``m`` (an entry that already holds some of ``m``
  interferes less: ``c``). KEEP, FRESH and a LOAD of the task's own entry learn at ``u = 1``;
* a stored entry keeps ``kappa`` of its owner's coordinate (the effective, revisit-read
  ``kappa`` of ``theory.fit``) and ``kappa_other`` of the other tasks' (the truncation-gap
  ``kappa``: what SVD truncation alone costs).

With ``beta = 0`` and ``kappa_other = kappa`` it is the analytic learner exactly (tested against
the env to 1e-9). :func:`fit_negative_transfer` estimates ``beta, c`` from the logged wrong-load
phases (their per-cycle mean return, which is what regret slopes are made of), replaying each
logged episode's phase-start actions (:func:`replay`); :func:`predicted_slopes` then simulates
every agent afresh, with or without a capacity (``K`` slots under a retention rule, the env's
semantics as in ``theory.capacity.simulate_capacity``), and returns the regret slopes against
the Bank with an unbounded bank.

Pure numpy / scipy: nothing here imports envs, agents or the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from nsr_gym.theory.capacity import _store_slot
from nsr_gym.theory.verify import regret_slope

__all__ = ["AGENTS", "TransferModel", "fit_negative_transfer", "predicted_slopes", "replay",
           "simulate_agent"]

KEEP, FRESH, LOAD = 0, 1, 2
#: Agents :func:`simulate_agent` knows (the env's rules of the same names; ``bank`` is THEORY.md's
#: B, ``Oracle(first_visit="keep")``).
AGENTS = ("bank", "always-fresh", "keep-current", "fixed-slot", "random-slot", "similarity")


@dataclass(frozen=True)
class TransferModel:
    """The analytic learner plus negative transfer at a wrong load (module docstring)."""

    a_star: float
    D: float
    tau: float
    gamma: float
    transfer: float
    kappa: float
    """Kept share of the entry owner's experience (the effective, revisit ``kappa``)."""
    kappa_other: float
    """Kept share of the other tasks' experience (the truncation-gap ``kappa``)."""
    beta: float = 0.0
    """Slow-down per unit of the loaded entry's own-task experience."""
    c: float = 0.0
    """How much the entry's experience of the current task offsets it."""

    def acc(self, h: np.ndarray | float) -> np.ndarray:
        return np.clip(self.a_star - self.D * np.exp(-np.asarray(h, dtype=np.float64)
                                                      / self.tau), 0.0, 1.0)

    def train(self, h: np.ndarray, m: int, L: int, source: int | None) -> np.ndarray:
        """``L`` updates on task ``m`` in place; ``(L,)`` accuracies after each update."""
        out = np.empty(L)
        for s in range(L):
            own = h[m]
            u = 1.0
            if source is not None and self.beta > 0:
                u = 1.0 / (1.0 + self.beta * max(h[source] - self.c * own, 0.0))
            h *= self.gamma
            h += self.transfer
            h[m] = own + u
            out[s] = h[m]
        return self.acc(out)

    def stored(self, h: np.ndarray, owner: int) -> np.ndarray:
        out = self.kappa_other * h
        out[owner] = self.kappa * h[owner]
        return out

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _phase(model: TransferModel, h: np.ndarray, vec: list[np.ndarray | None],
           owner: list[int | None], m: int, L: int, action: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply a phase-start ``action`` and train ``L`` steps; ``(h, accuracies)``."""
    source = None
    if action == FRESH:
        h = np.zeros_like(h)
    elif action >= LOAD and vec[action - LOAD] is not None:
        h = vec[action - LOAD].copy()
        j = owner[action - LOAD]
        source = j if j != m else None
    return h, model.train(h, m, L, source)


def replay(model: TransferModel, actions: np.ndarray, schedule: np.ndarray, L: int
           ) -> np.ndarray:
    """Replay logged phase-start actions (``K >= M``: each task inserted into the lowest empty
    slot at its first phase end, updated in place after).

    Args:
        actions: ``(n_episodes, P)`` first action of every phase (0 keep, 1 fresh, ``2 + k``).
        schedule: ``(P,)`` task of every phase.

    Returns:
        ``(n_episodes, P, L)`` model accuracies.
    """
    n, P = actions.shape
    M = int(schedule.max()) + 1
    out = np.empty((n, P, L))
    for i in range(n):
        h = np.zeros(M)
        vec: list[np.ndarray | None] = [None] * M
        owner: list[int | None] = [None] * M
        for p in range(P):
            m = int(schedule[p])
            h, out[i, p] = _phase(model, h, vec, owner, m, L, int(actions[i, p]))
            slot = owner.index(m) if m in owner else owner.index(None)
            owner[slot], vec[slot] = m, model.stored(h, m)
    return out


def _choose(agent: str, p: int, m: int, owner: list[int | None], rng: np.random.Generator
            ) -> int:
    """The phase-start action of ``agent`` (the env's rules, phase level)."""
    own = owner.index(m) if m in owner else None
    occupied = [k for k, o in enumerate(owner) if o is not None]
    if agent == "bank":
        return KEEP if own is None else LOAD + own
    if agent == "always-fresh":
        return FRESH
    if agent == "keep-current" or p == 0:
        return FRESH if agent == "similarity" else KEEP
    if agent == "fixed-slot":
        return LOAD if owner[0] is not None else KEEP
    if agent == "random-slot":
        return LOAD + int(rng.choice(occupied)) if occupied else KEEP
    if agent == "similarity":
        return FRESH if own is None else LOAD + own
    raise ValueError(f"unknown agent {agent!r}; known: {AGENTS}")


def simulate_agent(model: TransferModel, agent: str, M: int, L: int, C: int, lam: float,
                   K: int | None = None, rule: str = "pin", seed: int = 0) -> np.ndarray:
    """One episode's return per cycle, ``(C,)``, on a strict cycle with ``K`` slots (default
    ``M``) under ``rule`` (``theory.capacity.RETENTION_RULES``; LRU counts loads as uses)."""
    K = M if K is None else K
    rng = np.random.default_rng(seed)
    seq = [p % M for p in range(M * C)]
    owner: list[int | None] = [None] * K
    vec: list[np.ndarray | None] = [None] * K
    last_used, order = [0] * K, [0] * K
    h, ret = np.zeros(M), np.zeros(C)
    for p, m in enumerate(seq):
        a = _choose(agent, p, m, owner, rng)
        h, acc = _phase(model, h, vec, owner, m, L, a)
        if a >= LOAD:
            last_used[a - LOAD] = p * L
        ret[p // M] += float(acc.sum()) - lam * (a != KEEP)
        slot = owner.index(m) if m in owner else _store_slot(rule, owner, last_used, order,
                                                               seq, p)
        if slot is None:
            continue
        if owner[slot] != m:
            owner[slot], order[slot] = m, p
        vec[slot], last_used[slot] = model.stored(h, m), (p + 1) * L
    return ret


def predicted_slopes(model: TransferModel, M: int, L: int, C: int, lam: float,
                     agents: tuple[str, ...] = AGENTS, K: int | None = None, rule: str = "pin",
                     n_random: int = 200) -> dict[str, float]:
    """Regret slope per cycle (cycles ``2..C``) of each agent against ``bank`` with ``K = M``;
    random-slot averages ``n_random`` episodes (the others are deterministic)."""
    ref = simulate_agent(model, "bank", M, L, C, lam)
    out = {}
    for a in agents:
        n = n_random if a == "random-slot" else 1
        ret = np.mean([simulate_agent(model, a, M, L, C, lam, K, rule, seed=s)
                       for s in range(n)], axis=0)
        out[a] = float(regret_slope(np.cumsum(ref - ret)))
    return out


def _wrong_loads(actions: np.ndarray, schedule: np.ndarray) -> np.ndarray:
    """``(n, P)`` bool: phases that start with a LOAD of another task's entry (``K >= M``: slot
    ``k`` holds the ``k``-th task to reach a phase end)."""
    first = {int(t): i for i, t in reversed(list(enumerate(schedule)))}
    slot_task = np.array(sorted(first, key=first.get))
    k = actions - LOAD
    owner = np.where(k >= 0, slot_task[np.clip(k, 0, len(slot_task) - 1)], -1)
    return (k >= 0) & (owner != schedule[None, :])


def fit_negative_transfer(model: TransferModel, logs: dict[str, dict[str, np.ndarray]],
                          schedule: np.ndarray, M: int, L: int) -> tuple[TransferModel,
                                                                         dict[str, Any]]:
    """``beta, c`` of ``model`` from the wrong-load phases of the blind agents' logs.

    Args:
        model: The fitted analytic learner (``beta = 0``) with ``kappa_other`` set.
        logs: Agent -> ``{"actions": (n, P) phase-start actions, "returns": (n, P) logged
            accuracy sums per phase}`` (fixed-slot, random-slot: whichever were logged).
        schedule: ``(P,)`` task per phase.

    Returns:
        ``(model with beta and c, diagnostics)``: the per-cycle mean wrong-load return, logged
        and modelled, per agent, and the residual before and after.
    """
    cycles = np.arange(len(schedule)) // M
    C = int(cycles.max()) + 1

    def per_cycle(mod: TransferModel) -> dict[str, np.ndarray]:
        out = {}
        for a, log in logs.items():
            wrong = _wrong_loads(log["actions"], schedule)
            model_sum = replay(mod, log["actions"], schedule, L).sum(axis=2)
            cyc = np.broadcast_to(cycles, wrong.shape)
            out[a] = np.array([[np.mean(v[wrong & (cyc == c)]) if (wrong & (cyc == c)).any()
                                else np.nan for c in range(C)]
                               for v in (model_sum, log["returns"])])
        return out

    def resid(q: np.ndarray) -> np.ndarray:
        tabs = per_cycle(replace(model, beta=float(q[0]), c=float(q[1])))
        r = np.concatenate([t[0] - t[1] for t in tabs.values()])
        return np.nan_to_num(r[np.isfinite(r)])

    before = resid(np.zeros(2))
    sol = least_squares(resid, x0=[0.1, 1.0], bounds=([0.0, 0.0], [10.0, 100.0]))
    fitted = replace(model, beta=float(sol.x[0]), c=float(sol.x[1]))
    tabs = per_cycle(fitted)
    diag = {"wrong_load_return_per_cycle": {
                a: {"logged": t[1].tolist(), "model": t[0].tolist()} for a, t in tabs.items()},
            "rmse_before": float(np.sqrt(np.mean(before**2))) if before.size else None,
            "rmse_after": float(np.sqrt(np.mean(sol.fun**2))) if sol.fun.size else None,
            "data": "per-cycle mean return (accuracy sum) of the phases that start with a LOAD "
                    "of another task's entry, replayed from each logged episode's actions"}
    return fitted, diag
