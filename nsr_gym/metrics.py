"""Continual-learning metrics from an env's per-step log.

Input: a ``pandas.DataFrame`` with one row per step and at least the columns ``phase``,
``step_in_phase``, ``task_id``, ``visit``, ``accuracy``, ``zero_shot_accuracy``, ``reward``,
``switched``, ``bank_bytes`` and ``bank_entries`` (what ``agents.rollout`` writes) for one
``(agent, seed)`` run.

These are the *revisit* family (tables name them ``revisit BWT`` / ``revisit forgetting`` where
both families meet); the standard continual-learning metrics (Lopez-Paz and Ranzato's BWT and
FWT, Chaudhry et al.'s forgetting, from the accuracy matrix ``R[phase, task]``) are
:mod:`nsr_gym.cl_metrics`'s, named ``std_*``.

Definitions (the policy's own allocation decisions included, since they are what is evaluated):

* **Accuracy matrix** ``A[v, m]``: accuracy on task ``m`` at the end of its ``v``-th visit.
* **Return accuracy** ``Z[v, m]`` (``v >= 2``): accuracy on task ``m`` when it returns, after the
  policy's allocation action at the first step of the visit and before any update: what the
  system retained of task ``m`` across the intervening phases.
* **BWT** = mean over returns of ``Z[v, m] - A[v-1, m]`` (0 is no forgetting; negative is
  forgetting). **Forgetting** = mean over returns of ``max_{u<v} A[u, m] - Z[v, m]``.
* **Recovery time** (THEORY.md): ``R_eps = min{s in 1..L : acc_s >= a_pre - eps} - 1``, censored
  at ``L``, where ``a_pre`` is the mean accuracy of the last ``w`` steps of the task's previous
  phase and ``acc_s`` the accuracy after the ``s``-th step's updates. 0 means recovered at once.
* **Online accuracy**: mean accuracy over all steps; **final accuracy**: mean over tasks of the
  accuracy at the end of their last visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nsr_gym.stats import mean_ci

__all__ = ["BYTES_PER_MB", "PHASE_COLUMNS", "RECOVERY_EPS", "RECOVERY_WINDOW", "RunSummary",
           "accuracy_matrix", "leaderboard", "phase_table", "recovery_convention",
           "recovery_time", "summarize", "summarize_run"]

#: Default tolerance and window of the recovery time.
RECOVERY_EPS = 0.02
RECOVERY_WINDOW = 5
BYTES_PER_MB = 1_000_000
#: Columns of :func:`phase_table`, in order.
PHASE_COLUMNS = ["phase", "task_id", "visit", "length", "acc_mean", "acc_first", "acc_end",
                 "zero_shot", "return", "switches", "recovery", "censored", "bwt", "forgetting"]


def recovery_convention(eps: float = RECOVERY_EPS, window: int = RECOVERY_WINDOW) -> str:
    """The counting convention, to print next to every recovery figure."""
    return (f"R_eps: steps of a revisit before accuracy is within eps={eps} of the mean of the "
            f"last {window} steps of the task's previous visit (0 = recovered at the first step; "
            "censored at L)")


def recovery_time(acc: np.ndarray, a_pre: float,
                  eps: float = RECOVERY_EPS) -> tuple[int, bool]:
    """``R_eps`` of one revisit.

    Args:
        acc: ``(L,)`` accuracy after each step of the revisit phase.
        a_pre: Reference accuracy from the previous visit.
        eps: Tolerance.

    Returns:
        ``(R, censored)``: ``R`` in ``0 .. L``; ``censored`` when the phase never got there
        (then ``R = L``).
    """
    hit = np.flatnonzero(np.asarray(acc) >= a_pre - eps)
    if hit.size == 0:
        return len(acc), True
    return int(hit[0]), False


def phase_table(steps: pd.DataFrame, eps: float = RECOVERY_EPS,
                window: int = RECOVERY_WINDOW) -> pd.DataFrame:
    """One row per phase of one run's step log (the module docstring has the definitions).

    Args:
        steps: One ``(agent, seed)`` run's per-step log, in any row order.
        eps: Tolerance of the recovery time.
        window: Steps of a task's previous visit that give the recovery reference ``a_pre``.

    Returns:
        :data:`PHASE_COLUMNS`: ``phase, task_id, visit, length, acc_mean, acc_first, acc_end,
        zero_shot, return, switches, recovery, censored, bwt, forgetting``; the last four are
        NaN on a task's first visit.
    """
    if steps.empty:
        return pd.DataFrame(columns=PHASE_COLUMNS)
    steps = steps.sort_values(["phase", "step_in_phase"])
    phase = steps["phase"].to_numpy()
    starts = np.flatnonzero(np.r_[True, phase[1:] != phase[:-1]])
    ends = np.r_[starts[1:], len(phase)]
    acc = steps["accuracy"].to_numpy()
    reward, switched = steps["reward"].to_numpy(), steps["switched"].to_numpy()
    task = steps["task_id"].to_numpy()[starts]
    zero_shot = steps["zero_shot_accuracy"].to_numpy()[starts].astype(np.float64)
    n = len(starts)
    acc_mean, ret = np.empty(n), np.empty(n)
    switches = np.empty(n, dtype=np.int64)
    recovery, censored = np.full(n, np.nan), np.full(n, np.nan)
    bwt, forgetting = np.full(n, np.nan), np.full(n, np.nan)
    last_end: dict[int, list[float]] = {}  # task -> end accuracies of its visits so far
    last_pre: dict[int, float] = {}
    for p, (s, e) in enumerate(zip(starts, ends, strict=True)):
        a, m = acc[s:e], int(task[p])
        acc_mean[p], ret[p], switches[p] = a.mean(), reward[s:e].sum(), switched[s:e].sum()
        if m in last_end:
            r, cens = recovery_time(a, last_pre[m], eps)
            recovery[p], censored[p] = r, float(cens)
            bwt[p] = zero_shot[p] - last_end[m][-1]
            forgetting[p] = max(last_end[m]) - zero_shot[p]
        last_end.setdefault(m, []).append(float(a[-1]))
        last_pre[m] = float(a[-window:].mean())
    values = [phase[starts], task, steps["visit"].to_numpy()[starts], ends - starts, acc_mean,
              acc[starts].astype(np.float64), acc[ends - 1].astype(np.float64), zero_shot, ret,
              switches, recovery, censored, bwt, forgetting]
    return pd.DataFrame(dict(zip(PHASE_COLUMNS, values, strict=True)))


def accuracy_matrix(phases: pd.DataFrame, value: str = "acc_end") -> np.ndarray:
    """``(V, M)`` matrix of ``value`` by visit (rows) and task (columns); NaN where not visited."""
    n_visits = int(phases["visit"].max())
    n_tasks = int(phases["task_id"].max()) + 1
    mat = np.full((n_visits, n_tasks), np.nan)
    for r in phases.itertuples():
        mat[r.visit - 1, r.task_id] = getattr(r, value)
    return mat


@dataclass(frozen=True)
class RunSummary:
    """Scalar metrics of one ``(agent, seed)`` run."""

    episode_return: float
    acc_online: float
    acc_final: float
    bwt: float
    forgetting: float
    recovery: float
    recovery_censored: float
    n_revisits: int
    switches: int
    bank_mb: float
    mb_per_task: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def summarize_run(steps: pd.DataFrame, eps: float = RECOVERY_EPS,
                  window: int = RECOVERY_WINDOW) -> RunSummary:
    """Scalar metrics of one run's step log (see the module docstring for the definitions)."""
    phases = phase_table(steps, eps, window)
    revisits = phases[phases["visit"] > 1]
    last_visits = phases.sort_values("phase").groupby("task_id").tail(1)
    last = steps.iloc[-1]
    entries = int(last["bank_entries"])
    nan_mean = lambda s: float(s.mean()) if len(s) else float("nan")  # noqa: E731
    return RunSummary(
        episode_return=float(steps["reward"].sum()),
        acc_online=float(steps["accuracy"].mean()),
        acc_final=float(last_visits["acc_end"].mean()),
        bwt=nan_mean(revisits["bwt"]),
        forgetting=nan_mean(revisits["forgetting"]),
        recovery=nan_mean(revisits["recovery"]),
        recovery_censored=nan_mean(revisits["censored"]),
        n_revisits=len(revisits),
        switches=int(steps["switched"].sum()),
        bank_mb=float(last["bank_bytes"]) / BYTES_PER_MB,
        mb_per_task=float(last["bank_bytes"]) / BYTES_PER_MB / entries if entries else 0.0,
    )


def summarize(steps: pd.DataFrame, reference: str | None = "oracle", eps: float = RECOVERY_EPS,
              window: int = RECOVERY_WINDOW) -> pd.DataFrame:
    """Per-``(agent, seed)`` metrics, plus ``regret`` against ``reference`` on the same seed."""
    rows = []
    for (agent, seed), g in steps.groupby(["agent", "seed"], sort=False):
        rows.append({"agent": agent, "seed": seed, **summarize_run(g, eps, window).as_dict()})
    runs = pd.DataFrame(rows)
    if reference is not None and reference in set(runs["agent"]):
        ref = runs[runs["agent"] == reference].set_index("seed")["episode_return"]
        runs["regret"] = runs["seed"].map(ref) - runs["episode_return"]
    return runs


def leaderboard(runs: pd.DataFrame, classes: dict[str, str] | None = None) -> pd.DataFrame:
    """Aggregate per-seed metrics into one row per agent, sorted by mean return."""
    out = []
    for agent, g in runs.groupby("agent", sort=False):
        ret, lo, hi = mean_ci(g["episode_return"].to_numpy())
        row = {"agent": agent, "class": (classes or {}).get(agent, ""), "seeds": len(g),
               "return": ret, "return_ci_low": lo, "return_ci_high": hi}
        for col in ("regret", "acc_online", "acc_final", "bwt", "forgetting", "recovery",
                    "recovery_censored", "switches", "bank_mb", "mb_per_task"):
            if col in g:
                row[col] = float(g[col].mean())
        out.append(row)
    return pd.DataFrame(out).sort_values("return", ascending=False, ignore_index=True)
