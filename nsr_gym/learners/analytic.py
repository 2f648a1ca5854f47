"""The analytic learner: THEORY.md's experience model in closed form, thousands of times faster.

State: an experience vector ``h`` (one entry per task) for the active subspace.

* Accuracy on task ``m`` is ``g_m(h_m) = a*_m - D_m exp(-h_m / tau_m)`` (assumption A1); with
  ``eval_samples > 0`` the env sees ``Binomial(eval_samples, g) / eval_samples`` instead.
* FRESH sets ``h = 0``. An update on task ``m`` adds 1 to ``h_m`` (plus ``transfer[m, j]`` to
  every other ``h_j``) after multiplying the others by ``gamma`` (A2: ``gamma = 0`` is complete
  forgetting).
* A bank entry stores ``kappa * h`` (A3: SVD truncation as an experience haircut); loading it
  sets ``h`` to that vector.
* Task embeddings are fixed unit vectors with a tunable shared component (``task_similarity``)
  plus Gaussian probe noise, so recall can be made as easy or as hard as a study needs.

With ``eval_samples = 0`` and ``transfer = 0`` the simulated rewards equal the closed forms of
``theory.theorem1`` exactly; ``tests/test_analytic_backend.py`` checks that to 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nsr_gym.learners.base import Learner, UpdateReport
from nsr_gym.learners.config import NON_NEGATIVE, Rule, in_range, int_at_least, per_task, setting

_PROBABILITY = per_task(lambda x: 0 <= x <= 1, "in [0, 1]")


@dataclass(frozen=True)
class AnalyticConfig:
    """Parameters of the analytic learner; scalars apply to every task, sequences per task.

    The defaults approximate the torch backend on Split-Digits (``nsr-gym fit`` re-estimates
    them from logged torch runs).
    """

    a_star: float | tuple[float, ...] = setting(0.97, _PROBABILITY)
    """Asymptotic accuracy ``a*``."""
    D: float | tuple[float, ...] = setting(0.47, per_task(lambda x: x >= 0, ">= 0"))
    """Initial deficit: a fresh subspace's accuracy is ``a* - D``."""
    tau: float | tuple[float, ...] = setting(8.0, per_task(lambda x: x > 0, "> 0"))
    """Learning time constant in updates."""
    gamma: float = setting(0.0, in_range(lambda x: 0 <= x <= 1, "in [0, 1]"))
    """Forgetting: the other tasks' experience is multiplied by ``gamma`` per update."""
    kappa: float = setting(1.0, in_range(lambda x: 0 < x <= 1, "in (0, 1]"))
    """Compression: a stored entry keeps ``kappa * h``."""
    transfer: float = setting(0.0, NON_NEGATIVE)
    """Experience added to every other task per update (cross-task transfer)."""
    eval_samples: int = setting(0, int_at_least(0))
    """Held-out examples per evaluation; 0 evaluates the exact expected accuracy (no noise)."""
    key_dim: int = setting(16, int_at_least(1))
    """Length of the task embeddings."""
    task_similarity: float = setting(0.0, in_range(lambda x: 0 <= x < 1, "in [0, 1)"))
    """Shared component of the task embeddings, in ``[0, 1)``: the mean cosine between tasks."""
    probe_noise: float = setting(0.05, NON_NEGATIVE)
    """Standard deviation of the probe noise added to each embedding coordinate."""
    embedding_seed: int = setting(0, int_at_least(0))
    """Seed of the task embeddings; part of the benchmark, not of a run."""
    extra: dict = setting({}, Rule(lambda v: isinstance(v, dict), "a dict"))
    """Free-form provenance (e.g. the fit it came from); ignored by the model."""


def _per_task(value: float | tuple[float, ...], n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n,))
    if arr.shape != (n,):
        raise ValueError(f"analytic parameter {name} has {arr.shape[0]} values for {n} tasks")
    return arr.copy()


class AnalyticLearner(Learner):
    """Closed-form learner of THEORY.md (assumptions A1-A3).

    Args:
        n_tasks: ``M``.
        config: Model parameters.
    """

    def __init__(self, n_tasks: int, config: AnalyticConfig | None = None) -> None:
        self.config = cfg = config or AnalyticConfig()
        self.n_tasks = n_tasks
        self.a_star = _per_task(cfg.a_star, n_tasks, "a_star")
        self.D = _per_task(cfg.D, n_tasks, "D")
        self.tau = _per_task(cfg.tau, n_tasks, "tau")
        if np.any(self.tau <= 0) or np.any(self.D < 0) or np.any(self.a_star > 1) \
                or np.any(self.a_star - self.D < 0):
            raise ValueError("analytic parameters need tau > 0, D >= 0 and 0 <= a* - D <= a* <= 1")
        if not 0.0 <= cfg.gamma <= 1.0 or not 0.0 < cfg.kappa <= 1.0:
            raise ValueError("analytic parameters need gamma in [0, 1] and kappa in (0, 1]")
        if not 0.0 <= cfg.task_similarity < 1.0:
            raise ValueError("task_similarity must be in [0, 1)")
        self.key_dim = cfg.key_dim
        g = np.random.default_rng(cfg.embedding_seed)
        common = g.standard_normal(cfg.key_dim)
        own = g.standard_normal((n_tasks, cfg.key_dim))
        vecs = np.sqrt(cfg.task_similarity) * common / np.linalg.norm(common) + np.sqrt(
            1 - cfg.task_similarity
        ) * own / np.linalg.norm(own, axis=1, keepdims=True)
        self._keys = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        self.h = np.zeros(n_tasks)
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = np.random.default_rng(rng.integers(0, 2**63 - 1))
        self.h = np.zeros(self.n_tasks)

    def fresh(self) -> None:
        self.h = np.zeros(self.n_tasks)

    def load(self, payload: dict[str, torch.Tensor]) -> None:
        h = payload["h"].numpy().astype(np.float64)
        if h.shape != (self.n_tasks,):
            raise ValueError(f"bank entry holds experience for {h.shape[0]} tasks, this learner "
                             f"has {self.n_tasks}")
        self.h = h.copy()

    def snapshot(self, task_id: int | None = None) -> tuple[dict[str, torch.Tensor], float]:
        stored = self.config.kappa * self.h
        gap = 0.0
        if task_id is not None:
            gap = (self._expected_acc(task_id, self.h[task_id])
                   - self._expected_acc(task_id, stored[task_id]))
        return {"h": torch.from_numpy(stored.copy())}, float(gap)

    def payload_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """``{"h": (n_tasks,)}``: a payload is the stored experience vector."""
        return {"h": (self.n_tasks,)}

    def train(self, task_id: int, n_updates: int) -> UpdateReport:
        cfg = self.config
        h = self.h
        for _ in range(n_updates):
            own = h[task_id]
            if cfg.gamma != 1.0:
                h *= cfg.gamma
            if cfg.transfer:
                h += cfg.transfer
            h[task_id] = own + 1.0
        return UpdateReport(loss=float(np.exp(-h[task_id] / self.tau[task_id])))

    def _expected_acc(self, task_id: int, h: float) -> float:
        return float(self.a_star[task_id] - self.D[task_id] * np.exp(-h / self.tau[task_id]))

    def evaluate(self, task_id: int) -> float:
        acc = self._expected_acc(task_id, self.h[task_id])
        n = self.config.eval_samples
        if n > 0:
            return float(self._rng.binomial(n, min(max(acc, 0.0), 1.0)) / n)
        return acc

    def embed(self, task_id: int) -> np.ndarray:
        noise = self.config.probe_noise
        key = self._keys[task_id]
        if noise > 0:
            key = key + noise * self._rng.standard_normal(self.key_dim)
        return key.astype(np.float32)
