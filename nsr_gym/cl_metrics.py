"""The standard continual-learning metrics, from the accuracy matrix ``R[j, i]``.

These are the metrics continual-learning papers and libraries (GEM, RWalk, Avalanche) report,
beside the *revisit* family of :mod:`nsr_gym.metrics` (return accuracy, revisit BWT and
forgetting at each task's return, recovery time). The two families answer different questions
and share names, so tables name them apart: ``bwt`` / ``forgetting`` are the revisit ones,
``std_bwt`` / ``std_forgetting`` these.

**The accuracy matrix.** ``R[j, i]`` is the accuracy on task ``i``'s test set at the end of
phase ``j`` (after the env's reserve), with the subspace the agent would serve task ``i`` with
at that moment; ``b[i]`` (row ``phase = -1``) is the accuracy of the episode's initial subspace
(the fresh one ``reset`` makes: LoRA ``B = 0``, a randomly initialised head) before any update,
the random-init baseline of FWT. Which subspace serves task ``i`` (:func:`serve_mode`):

* ``"entry"`` (agents that manage the bank: classes ``history``, ``oracle``, ``learned``,
  ``clairvoyant``): the bank entry the env's oracle would load for task ``i``, i.e. the slot
  task ``i`` owns (``oracle_info()["next_task_slot"]``), as a multi-head model selects task
  ``i``'s head from its task label. Where task ``i`` owns no slot (never trained, evicted,
  dropped; under ``reserve="active"`` a task served by another's entry) it is the active
  subspace. With ``retention="agent"`` the task just trained is served by the active subspace
  (its new entry is pending: the agent has not yet decided where, or whether, to keep it).
* ``"active"`` (memoryless agents, classes ``M0`` and ``M1``, which cannot tell which entry is
  task ``i``'s): the active subspace, as a single model is evaluated after each experience.

Recall errors therefore do not enter ``R`` (the revisit family's return accuracy measures them).
The evaluation never changes the env: it runs on a ``copy.deepcopy`` of the learner, so the
env's parameters, optimiser state and random generators are untouched (``tests/test_cl_metrics``
checks that a rollout with the matrix recorded equals one without, bit for bit).

**Definitions** for a stream of ``P`` phases over ``M`` tasks; ``f_i`` / ``l_i`` are the first /
last phase that trains task ``i``, ``S_j`` the tasks trained in phases ``0..j``, and
``D = {i : l_i < P - 1}`` the tasks not trained in the last phase. On a one-pass stream
(phase ``j`` trains task ``j``, ``P = M = T``) each reduces to its paper's formula.

* final average accuracy ``ACC = (1/M) sum_i R[P-1, i]`` (Lopez-Paz and Ranzato 2017);
* average incremental accuracy ``AIA = (1/P) sum_j (1/|S_j|) sum_{i in S_j} R[j, i]``
  (Rebuffi et al. 2017);
* ``BWT = (1/|D|) sum_{i in D} (R[P-1, i] - R[l_i, i])``; one pass:
  ``(1/(T-1)) sum_{i<T-1} (R[T-1, i] - R[i, i])`` (Lopez-Paz and Ranzato 2017);
* forgetting ``F = (1/|D|) sum_{i in D} (max_{f_i <= l <= P-2} R[l, i] - R[P-1, i])``
  (Chaudhry et al. 2018, whose max runs over every earlier row; the rows before task ``i`` was
  learned are 0 in their class-incremental setting, so starting at ``f_i`` changes nothing there);
* ``FWT = (1/|N|) sum_{i in N} (R[f_i - 1, i] - b[i])`` over ``N = {i : f_i >= 1}``; one pass:
  ``(1/(T-1)) sum_{i>=1} (R[i-1, i] - b[i])`` (Lopez-Paz and Ranzato 2017).

Each is NaN when its task set is empty. Accuracies are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.stats import mean_ci

__all__ = ["CL_COLUMNS", "MATRIX_COLUMNS", "SERVE_MODES", "MatrixRecorder",
           "average_incremental_accuracy", "backward_transfer", "cl_table", "final_accuracy",
           "forgetting", "forward_transfer", "matrix_arrays", "serve_mode", "served_accuracies",
           "standard_metrics", "summarize_matrices"]

SERVE_MODES = ("entry", "active")
#: Memory classes whose agents are evaluated with the active subspace (Theorem 1's memoryless).
ACTIVE_CLASSES = ("M0", "M1")
#: Long format of recorded matrices: one row per (phase, evaluated task); ``serve`` is the rule,
#: ``phase = -1`` the initial subspace (``b``), ``slot`` the bank slot that served the task
#: (``-1``: the active subspace).
MATRIX_COLUMNS = ["agent", "seed", "serve", "phase", "trained_task", "task", "accuracy", "slot"]
#: Per-run columns of :func:`summarize_matrices`.
CL_COLUMNS = ["agent", "seed", "serve", "std_acc", "std_aia", "std_bwt", "std_forgetting",
              "std_fwt"]


def serve_mode(memory_class: str) -> str:
    """``"active"`` for memoryless classes (``M0``, ``M1``), ``"entry"`` for every other."""
    return "active" if memory_class in ACTIVE_CLASSES else "entry"


# ----------------------------------------------------------------------------- recording


def served_accuracies(env: Any, trained_task: int, serve: str) -> tuple[np.ndarray, np.ndarray]:
    """Every task's accuracy with the subspace that serves it now, on a copy of the learner.

    Args:
        env: An nsr-gym env (wrapped or not), between steps.
        trained_task: The task of the phase that just ended (``-1`` at the episode's start).
        serve: ``"entry"`` or ``"active"`` (module docstring).

    Returns:
        ``(accuracy, slot)``: ``(M,)`` float64 accuracies and ``(M,)`` int64 serving bank slots
        (``-1``: the active subspace).
    """
    if serve not in SERVE_MODES:
        raise ValueError(f"serve must be one of {SERVE_MODES}, got {serve!r}")
    u = env.unwrapped
    learner = copy.deepcopy(u.learner)  # the env keeps its parameters, optimiser, generators
    n = u.n_tasks
    slot = np.full(n, -1, dtype=np.int64)
    if serve == "entry":
        owners = u.bank.view.owner_slot
        for i in range(n):
            if not (u.retention == "agent" and i == trained_task):
                slot[i] = owners.get(i, -1)
    acc = np.empty(n)
    for i in np.flatnonzero(slot < 0):  # the active subspace first, before any load
        acc[i] = learner.evaluate(int(i))
    for k in np.unique(slot[slot >= 0]):
        learner.load(u.bank.get(int(k)).tensors)
        for i in np.flatnonzero(slot == k):
            acc[i] = learner.evaluate(int(i))
    return acc, slot


class MatrixRecorder:
    """Wraps a policy for :func:`nsr_gym.agents.rollout` and records ``R`` as it runs.

    Everything the rollout asks of the policy goes to the wrapped one (``predict``, and
    ``reset`` / ``bind`` / ``observe`` when it has them), so the episode is the one the policy
    runs alone; the recorder reads the env once after ``reset`` (``b``) and at every phase end.

    Args:
        policy: The agent (anything ``rollout`` takes).
        serve: ``"entry"`` or ``"active"``; default by the policy's ``memory_class``.
    """

    def __init__(self, policy: Any, serve: str | None = None) -> None:
        self.policy = policy
        self.serve = serve or serve_mode(getattr(policy, "memory_class", ""))
        if self.serve not in SERVE_MODES:
            raise ValueError(f"serve must be one of {SERVE_MODES}, got {self.serve!r}")
        self._env: Any = None
        self._rows: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def __getattr__(self, name: str) -> Any:  # name, memory_class, ...: the policy's
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy.predict(*args, **kwargs)

    def reset(self, seed: int | None = None) -> None:
        self._rows = []
        if hasattr(self.policy, "reset"):
            self.policy.reset(seed)

    def bind(self, env: Any) -> None:
        self._env = env
        if hasattr(self.policy, "bind"):
            self.policy.bind(env)

    def observe(self, info: dict[str, Any]) -> None:
        if hasattr(self.policy, "observe"):
            self.policy.observe(info)
        if self._env is None:
            return
        if int(info.get("phase", -1)) < 0:  # the info of reset (phase -1): the initial subspace
            self._rows = [(-1, -1, *served_accuracies(self._env, -1, self.serve))]
        elif info["phase_end"]:
            task = int(info["task_id"])
            self._rows.append((int(info["phase"]), task,
                               *served_accuracies(self._env, task, self.serve)))

    def frame(self, agent: str, seed: int) -> pd.DataFrame:
        """The episode's matrix in the long format :data:`MATRIX_COLUMNS`."""
        rows = [{"agent": agent, "seed": seed, "serve": self.serve, "phase": p,
                 "trained_task": t, "task": i, "accuracy": float(acc[i]), "slot": int(slot[i])}
                for p, t, acc, slot in self._rows for i in range(len(acc))]
        return pd.DataFrame(rows, columns=MATRIX_COLUMNS)


# ----------------------------------------------------------------------------- the metrics


def _phases_of(trained: np.ndarray, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(f, l)``: first and last phase training each task, ``-1`` for a task never trained."""
    first, last = np.full(n_tasks, -1), np.full(n_tasks, -1)
    for j, t in enumerate(np.asarray(trained)):
        if first[t] < 0:
            first[t] = j
        last[t] = j
    return first, last


def _nan_mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def final_accuracy(R: np.ndarray) -> float:
    """``ACC = (1/M) sum_i R[P-1, i]``. ``R``: ``(P, M)`` accuracies."""
    return float(np.mean(np.asarray(R)[-1]))


def average_incremental_accuracy(R: np.ndarray, trained: np.ndarray) -> float:
    """``AIA = (1/P) sum_j mean_{i in S_j} R[j, i]``, ``S_j`` the tasks trained by phase ``j``.

    Args:
        R: ``(P, M)`` accuracies.
        trained: ``(P,)`` task trained in each phase.
    """
    seen: list[int] = []
    means = []
    for j, t in enumerate(np.asarray(trained)):
        if t not in seen:
            seen.append(int(t))
        means.append(float(np.mean(np.asarray(R)[j, seen])))
    return float(np.mean(means))


def backward_transfer(R: np.ndarray, trained: np.ndarray) -> float:
    """``BWT = mean_{i in D} (R[P-1, i] - R[l_i, i])`` (Lopez-Paz and Ranzato 2017's on a
    one-pass stream); ``D`` the tasks trained, but not in the last phase. Negative: forgetting."""
    R = np.asarray(R)
    _, last = _phases_of(trained, R.shape[1])
    return _nan_mean([R[-1, i] - R[last[i], i] for i in range(R.shape[1])
                      if 0 <= last[i] < len(R) - 1])


def forgetting(R: np.ndarray, trained: np.ndarray) -> float:
    """``F = mean_{i in D} (max_{f_i <= l <= P-2} R[l, i] - R[P-1, i])`` (Chaudhry et al. 2018);
    ``D`` as in :func:`backward_transfer`. Positive: forgetting."""
    R = np.asarray(R)
    first, last = _phases_of(trained, R.shape[1])
    return _nan_mean([R[first[i]:-1, i].max() - R[-1, i] for i in range(R.shape[1])
                      if 0 <= last[i] < len(R) - 1])


def forward_transfer(R: np.ndarray, trained: np.ndarray, b: np.ndarray) -> float:
    """``FWT = mean_{i : f_i >= 1} (R[f_i - 1, i] - b[i])`` (Lopez-Paz and Ranzato 2017's on a
    one-pass stream): accuracy on a task just before it is first trained, over random init.

    Args:
        R: ``(P, M)`` accuracies.
        trained: ``(P,)`` task trained in each phase.
        b: ``(M,)`` accuracies of the randomly initialised subspace.
    """
    R = np.asarray(R)
    first, _ = _phases_of(trained, R.shape[1])
    return _nan_mean([R[first[i] - 1, i] - b[i] for i in range(R.shape[1]) if first[i] >= 1])


def standard_metrics(R: np.ndarray, trained: np.ndarray, b: np.ndarray | None = None
                     ) -> dict[str, float]:
    """All five of one run: ``std_acc, std_aia, std_bwt, std_forgetting, std_fwt`` (NaN without
    ``b``)."""
    return {"std_acc": final_accuracy(R), "std_aia": average_incremental_accuracy(R, trained),
            "std_bwt": backward_transfer(R, trained), "std_forgetting": forgetting(R, trained),
            "std_fwt": float("nan") if b is None else forward_transfer(R, trained, b)}


# ----------------------------------------------------------------------------- tables


def matrix_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(R, trained, b)`` of one run's long-format matrix (:data:`MATRIX_COLUMNS`)."""
    init = frame[frame["phase"] < 0].sort_values("task")
    body = frame[frame["phase"] >= 0]
    R = body.pivot(index="phase", columns="task", values="accuracy").sort_index()
    trained = body.groupby("phase")["trained_task"].first().sort_index().to_numpy()
    b = init["accuracy"].to_numpy() if len(init) else None
    return R.to_numpy(dtype=np.float64), trained, b


def summarize_matrices(matrices: pd.DataFrame) -> pd.DataFrame:
    """Per ``(agent, seed)``: :data:`CL_COLUMNS` (``serve`` names the serving rule)."""
    rows = []
    for (agent, seed), g in matrices.groupby(["agent", "seed"], sort=False):
        R, trained, b = matrix_arrays(g)
        rows.append({"agent": agent, "seed": seed, "serve": g["serve"].iloc[0],
                     **standard_metrics(R, trained, b)})
    return pd.DataFrame(rows, columns=CL_COLUMNS)


def cl_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per agent: seeds, serving rule, mean ``std_acc`` with its 95% bootstrap CI, and the mean
    of the other four, in the order the agents first appear."""
    rows = []
    for agent, g in per_seed.groupby("agent", sort=False):
        acc, lo, hi = mean_ci(g["std_acc"].to_numpy())
        row = {"agent": agent, "serve": g["serve"].iloc[0], "seeds": len(g), "std_acc": acc,
               "std_acc_ci_low": lo, "std_acc_ci_high": hi}
        row.update({c: float(g[c].mean()) for c in CL_COLUMNS[4:]})
        rows.append(row)
    return pd.DataFrame(rows)


def cl_markdown(per_seed: pd.DataFrame) -> str:
    """A markdown section of :func:`cl_table`, saying which family it is and how ``R`` was read."""
    from nsr_gym.results import markdown_table

    return ("## Standard continual-learning metrics (from the accuracy matrix R[j, i])\n\n"
            f"{markdown_table(cl_table(per_seed))}\n\n"
            "Not the revisit family above (BWT / forgetting there are measured at each task's "
            "return). R[j, i]: accuracy on task i's test set at the end of phase j, served by "
            "task i's own bank entry (serve = entry: what the oracle would load; the active "
            "subspace where it owns none) or by the active subspace (serve = active: memoryless "
            "agents). std_acc: final average accuracy (95% bootstrap CI over seeds); std_aia: "
            "average incremental accuracy; std_bwt: BWT (Lopez-Paz and Ranzato 2017); "
            "std_forgetting: forgetting (Chaudhry et al. 2018); std_fwt: FWT against b_i, the "
            "accuracy of the episode's initial random subspace. Formulas: nsr_gym.cl_metrics. "
            "Per-seed matrices: accuracy_matrix.csv; per-seed metrics: cl_metrics.csv.\n")
