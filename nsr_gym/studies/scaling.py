"""Measurements of how NSR's recall scales with the number of stored tasks (issue 8).

Each measurement is a *unit function* ``fn(unit) -> list of row dicts`` over an
:class:`~nsr_gym.executors.Unit`, so ``nsr-gym study scaling`` can fan them out on any executor
(local or Ray) and resume finished units; all randomness comes from ``unit.seed``.

* :func:`torch_recall_unit`: precision@1 of recall with real torch-backend task embeddings
  (``TorchLearner.embed`` on permuted digits) against the number of stored tasks and the probe size.
* :func:`torch_similarity_unit`: the same against the similarity between tasks, controlled by
  permuting only a fraction of the pixels (:func:`partial_permutation_tasks`).
* :func:`analytic_recall_unit`: the analytic backend's embeddings against ``task_similarity``
  and the key dimension.
* :func:`env_unit`: one env episode (any registered id, either backend, any capacity and
  eviction rule) summarised: return, recovery time, recall precision@1 at revisits, how often a
  new task is taken for a stored one, hit rate, bank bytes.
* :func:`recall_stats`: the recall metrics of a set of keys and queries, through
  :class:`~nsr_gym.bank.TaskKnowledgeBank` itself.

The disk-bank measurement is :mod:`nsr_gym.studies.scaling_diskbank`'s.

:func:`env_unit` takes the policy factories, so the same unit serves every study's agents; its
episode runs through :func:`nsr_gym.agents.evaluation.rollout`. The study's plan, sections and
files are in :mod:`nsr_gym.studies.scaling_study`, its report in
:mod:`nsr_gym.studies.scaling_report`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from nsr_gym.bank import SIMILARITY_THRESHOLD, BankEntry, TaskKnowledgeBank
from nsr_gym.data import Task, load_digits_split, permuted_digits
from nsr_gym.envs import env_id
from nsr_gym.envs.allocation import LOAD_OFFSET
from nsr_gym.executors import Unit
from nsr_gym.threads import torch_threads

Rows = list[dict[str, Any]]

#: The long-horizon benchmark of the scaling and novelty studies.
LONG = env_id("LongHorizonPermutedDigits")


# ----------------------------------------------------------------------------- recall metrics


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def recall_stats(keys: np.ndarray, queries: np.ndarray, novel: np.ndarray | None = None,
                 threshold: float = SIMILARITY_THRESHOLD) -> dict[str, float]:
    """Recall quality of ``n`` stored keys probed by a fresh embedding of the same tasks.

    Args:
        keys: ``(n, d)`` stored embeddings (task ``m`` in slot ``m``).
        queries: ``(n, d)`` new probe embeddings of the same tasks.
        novel: ``(u, d)`` probe embeddings of tasks that are not stored.
        threshold: The similarity rule's novelty threshold.

    Returns:
        ``precision_at_1`` (the bank's own top-1 recall is the query's task), ``self_cos`` (mean
        cosine of a query with its own key), ``rival_cos`` (mean of a query's highest cosine with
        another task's key), ``error_margin`` (5th percentile of self minus rival: negative means
        more than 5% errors), ``pairwise_cos`` (mean cosine between stored keys: how similar the
        tasks are), and for ``novel``: ``novel_max_cos`` and ``false_recall`` (the fraction of
        new tasks whose best match reaches ``threshold``, which the rule warm-starts from an
        unrelated entry instead of a fresh subspace).
    """
    n, d = keys.shape
    bank = TaskKnowledgeBank(n, d)
    for m in range(n):
        bank.insert(BankEntry(key=keys[m], tensors={}, owner=m, tasks_served=[m]), step=m)
    top1 = np.array([bank.recall(q, 1)[0][0] for q in queries])
    k, q = _unit_rows(keys), _unit_rows(queries)
    sims = q @ k.T
    self_cos = np.diag(sims).copy()
    np.fill_diagonal(sims, -np.inf)
    rival = sims.max(1) if n > 1 else np.full(n, -1.0)
    kk = k @ k.T
    out = {
        "precision_at_1": float(np.mean(top1 == np.arange(n))),
        "self_cos": float(self_cos.mean()),
        "rival_cos": float(rival.mean()),
        "error_margin": float(np.quantile(self_cos - rival, 0.05)),
        "pairwise_cos": float((kk.sum() - n) / (n * (n - 1))) if n > 1 else float("nan"),
    }
    if novel is not None and len(novel):
        best = (_unit_rows(novel) @ k.T).max(1)
        out.update(novel_max_cos=float(best.mean()), false_recall=float(np.mean(best >= threshold)))
    return out


def _embeddings(learner: Any, task_ids: range | list[int]) -> np.ndarray:
    return np.stack([learner.embed(m) for m in task_ids])


# ----------------------------------------------------------------------------- torch embeddings


def torch_recall_unit(unit: Unit) -> Rows:
    """Precision@1 with TorchLearner embeddings against the number of stored tasks and the probe
    size, for one seed (the probe batches).

    Setting: ``n_stored`` (list), ``probe_sizes`` (list), ``n_novel`` (tasks never stored).
    One learner serves every row: tasks ``0 .. max(n_stored) - 1`` are the stored pool, the next
    ``n_novel`` the new tasks; the pool centre is that of all of them, as in a benchmark of that
    many tasks.
    """
    with torch_threads(1):
        return _torch_recall_rows(unit)


def _torch_recall_rows(unit: Unit) -> Rows:
    from nsr_gym.learners.torch_learner import TorchLearner

    s = unit.setting
    n_max, n_novel = max(s["n_stored"]), int(s["n_novel"])
    learner = TorchLearner(permuted_digits(n_max + n_novel))
    rows = []
    try:
        for probe in s["probe_sizes"]:
            learner.config = dataclasses.replace(learner.config, probe_size=int(probe))
            learner.reset(np.random.default_rng([unit.seed, int(probe)]))
            keys = _embeddings(learner, range(n_max))
            queries = _embeddings(learner, range(n_max))
            novel = _embeddings(learner, range(n_max, n_max + n_novel))
            for n in s["n_stored"]:
                rows.append({"backend": "torch", "probe_size": int(probe), "n_stored": int(n),
                             "seed": unit.seed,
                             **recall_stats(keys[:n], queries[:n], novel)})
        cache = sum(t.numel() * t.element_size() for d in learner._data for t in d)
        cache += sum(f.numel() * f.element_size() for f in learner._features)
        rows.append({"backend": "torch", "probe_size": -1, "n_stored": n_max + n_novel,
                     "seed": unit.seed, "learner_cache_bytes": int(cache)})
    finally:
        learner.close()
    return rows


def partial_permutation_tasks(n_tasks: int, fraction: float, seed: int = 0) -> list[Task]:
    """Permuted digits whose permutation moves only ``round(fraction * 64)`` pixels (task 0: the
    identity): the smaller ``fraction``, the more alike the tasks (``1.0``: full permutations)."""
    x_tr, y_tr, x_te, y_te = load_digits_split()
    moved = int(round(fraction * 64))
    tasks = []
    for t in range(n_tasks):
        perm = np.arange(64)
        if t > 0 and moved > 1:
            g = np.random.default_rng([seed, t, moved])
            which = g.choice(64, size=moved, replace=False)
            perm[which] = which[g.permutation(moved)]
        tasks.append(Task(t, f"partial{moved}-{t}", np.ascontiguousarray(x_tr[:, perm]),
                          y_tr.copy(), np.ascontiguousarray(x_te[:, perm]), y_te.copy(), 10))
    return tasks


def torch_similarity_unit(unit: Unit) -> Rows:
    """Precision@1 with TorchLearner embeddings against how alike the tasks are.

    Setting: ``fraction`` (of pixels each task permutes), ``n_stored`` (list), ``n_novel``,
    ``probe_size``.
    """
    with torch_threads(1):
        return _torch_similarity_rows(unit)


def _torch_similarity_rows(unit: Unit) -> Rows:
    from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig, build_backbone

    s = unit.setting
    n_max, n_novel = max(s["n_stored"]), int(s["n_novel"])
    tasks = partial_permutation_tasks(n_max + n_novel, float(s["fraction"]))
    cfg = TorchLearnerConfig(probe_size=int(s["probe_size"]))
    learner = TorchLearner(tasks, cfg)
    try:
        learner.reset(np.random.default_rng(unit.seed))
        keys, queries = _embeddings(learner, range(n_max)), _embeddings(learner, range(n_max))
        novel = _embeddings(learner, range(n_max, n_max + n_novel))
    finally:
        learner.close()
    # How alike the tasks are as the backbone sees them: the cosine between the raw (uncentred)
    # mean features of two tasks. Centring removes the shared part, so the keys' own mean cosine
    # is ~0 whatever the tasks; their similarity shows instead as a small distance between task
    # means next to the probe noise (a low self cosine).
    backbone = build_backbone(tasks[0].input_dim, cfg.hidden, cfg.backbone_seed)
    with torch.no_grad():
        raw = _unit_rows(np.stack([backbone(torch.from_numpy(t.x_train)).mean(0).numpy()
                                   for t in tasks[:n_max]]))
    rows = []
    for n in s["n_stored"]:
        cos = raw[:n] @ raw[:n].T
        rows.append({"backend": "torch", "fraction": float(s["fraction"]),
                     "probe_size": int(s["probe_size"]), "n_stored": int(n), "seed": unit.seed,
                     "raw_task_cos": float((cos.sum() - n) / (n * (n - 1))),
                     **recall_stats(keys[:n], queries[:n], novel)})
    return rows


def analytic_recall_unit(unit: Unit) -> Rows:
    """Precision@1 with the analytic backend's embeddings against ``task_similarity`` and the
    number of stored tasks. Setting: ``key_dim``, ``similarities`` (list), ``n_stored`` (list),
    ``n_novel``, ``probe_noise``."""
    from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner

    s = unit.setting
    n_max, n_novel = max(s["n_stored"]), int(s["n_novel"])
    rows = []
    for sim in s["similarities"]:
        cfg = AnalyticConfig(key_dim=int(s["key_dim"]), task_similarity=float(sim),
                             probe_noise=float(s["probe_noise"]), embedding_seed=unit.seed)
        learner = AnalyticLearner(n_max + n_novel, cfg)
        learner.reset(np.random.default_rng(unit.seed))
        keys, queries = _embeddings(learner, range(n_max)), _embeddings(learner, range(n_max))
        novel = _embeddings(learner, range(n_max, n_max + n_novel))
        for n in s["n_stored"]:
            rows.append({"backend": "analytic", "key_dim": int(s["key_dim"]),
                         "task_similarity": float(sim), "probe_noise": float(s["probe_noise"]),
                         "n_stored": int(n), "seed": unit.seed,
                         **recall_stats(keys[:n], queries[:n], novel)})
    return rows


# ----------------------------------------------------------------------------- env episodes


def env_unit(unit: Unit, policies: Mapping[str, Callable[[], Any]]) -> Rows:
    """One episode of ``unit.agent`` on ``setting["env_id"]`` with ``setting["env_kwargs"]``.

    Pass the policy factories with ``functools.partial(env_unit, policies=RULE_AGENTS)``.

    Returns:
        One row: ``unit.setting["tags"]`` (labels for the tables), the metrics of
        :func:`nsr_gym.metrics.summarize_run`, and the recall events of the episode:
        ``precision_at_1`` (the bank's top-1 key is the returning task's own entry, over revisits
        whose entry is stored), ``hit_rate`` (revisits whose entry is stored), ``false_recall``
        (first visits whose best match reaches the fixed novelty threshold), what the agent did
        with them: ``warm_start_rate`` (first visits it warm-started from a stored entry) and
        ``revisit_recall_rate`` (revisits with a stored entry where it loaded that entry), the
        mean accuracy of first visits and of revisits, ``bytes_per_entry`` and the wall time.
    """
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs in a fresh worker
    from nsr_gym import metrics

    s = unit.setting
    with torch_threads(1):
        t0 = time.perf_counter()
        env = gym.make(s["env_id"], **s["env_kwargs"])
        capacity = env.unwrapped.capacity
        policy = policies[unit.agent]()
        try:
            steps, events = _episode(env, policy, unit.seed)
        finally:
            env.close()
        wall = time.perf_counter() - t0
    summary = metrics.summarize_run(steps).as_dict()
    phases = metrics.phase_table(steps)
    revisit = events[events["revisit"]]
    stored = revisit[revisit["true_slot"] >= 0]
    first = events[~events["revisit"] & (events["n_occupied"] > 0)]
    last = steps.iloc[-1]
    ends = steps[steps["step_in_phase"] == steps["step_in_phase"].max()]
    distance = stack_distances(events["task"].to_numpy())
    revisit_d = distance[distance > 0]
    return [{
        **dict(s.get("tags", {})), "agent": unit.agent, "seed": unit.seed, **summary,
        "precision_at_1": _rate(stored["top1"] == stored["true_slot"]),
        "hit_rate": float(len(stored) / len(revisit)) if len(revisit) else np.nan,
        "false_recall": _rate(first["max_cos"] >= SIMILARITY_THRESHOLD),
        "warm_start_rate": _rate(first["action"] >= LOAD_OFFSET),
        "revisit_recall_rate": _rate(stored["action"] == LOAD_OFFSET + stored["true_slot"]),
        "acc_first_visits": float(phases.loc[phases["visit"] == 1, "acc_mean"].mean()),
        "acc_revisits": float(phases.loc[phases["visit"] > 1, "acc_mean"].mean()),
        "return_zero_shot": float(phases.loc[phases["visit"] > 1, "zero_shot"].mean()),
        "truncation_gap": float(ends["truncation_gap"].mean()),
        "capacity": int(capacity),
        "lru_hit_bound": float(np.mean(revisit_d < capacity)) if len(revisit_d) else np.nan,
        "stack_distance_median": float(np.median(revisit_d)) if len(revisit_d) else np.nan,
        "n_phases": len(phases), "n_tasks_seen": int(phases["task_id"].nunique()),
        "bank_entries": int(last["bank_entries"]), "bank_bytes": int(last["bank_bytes"]),
        "bytes_per_entry": float(last["bank_bytes"]) / max(int(last["bank_entries"]), 1),
        "wall_s": round(wall, 2),
    }]


def _rate(flags: Any) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def stack_distances(tasks: np.ndarray) -> np.ndarray:
    """Per phase, how many distinct other tasks were served since the task's previous phase
    (``0`` for a first visit). An LRU bank of ``K`` slots still holds the task iff ``d < K``."""
    stack: list[int] = []
    out = np.zeros(len(tasks), dtype=np.int64)
    for p, t in enumerate(int(x) for x in tasks):
        if t in stack:
            out[p] = stack.index(t)
            stack.remove(t)
        stack.insert(0, t)
    return out


#: The step log's columns that :func:`env_unit` reads (``reward`` besides).
_STEP_KEYS = ["phase", "step_in_phase", "task_id", "visit", "accuracy", "zero_shot_accuracy",
              "switched", "bank_entries", "bank_bytes", "truncation_gap"]


def _episode(env: Any, policy: Any, seed: int) -> tuple[Any, Any]:
    """One episode through :func:`nsr_gym.agents.evaluation.rollout`, and, at each phase start,
    what recall saw and what the policy did with it.

    Returns:
        The step log (``_STEP_KEYS`` and ``reward``, one row per step) and one row per phase:
        ``task``, ``revisit``, ``true_slot`` (the task's entry, ``-1`` when none),
        ``n_occupied``, ``top1`` (the best slot by cosine), ``max_cos`` and ``action``.
    """
    import pandas as pd

    from nsr_gym.agents.evaluation import rollout

    events: list[dict[str, Any]] = []
    seen: set[int] = set()

    def at_decision(obs: dict[str, np.ndarray], info: dict[str, Any], action: int) -> None:
        if not info["next_is_phase_start"]:
            return
        truth = env.unwrapped.oracle_info()  # privileged: the study measures recall against it
        task = int(truth["next_task_id"])
        occ = obs["occupied"] > 0
        sims = np.where(occ, obs["similarity"], -np.inf)
        events.append({"task": task, "revisit": task in seen,
                       "true_slot": int(truth["next_task_slot"]), "n_occupied": int(occ.sum()),
                       "top1": int(np.argmax(sims)) if occ.any() else -1,
                       "max_cos": float(sims.max()) if occ.any() else np.nan, "action": action})
        seen.add(task)

    log = rollout(env, policy, seed, before_step=at_decision)
    return log[[*_STEP_KEYS, "reward"]], pd.DataFrame(events)
