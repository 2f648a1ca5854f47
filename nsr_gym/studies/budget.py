"""Memory budget analysis: what a bank entry costs, and what a capped bank forgets.

Three studies, each returning a tidy ``pandas.DataFrame``:

* :func:`compression_sweep`: bytes per task against the SVD rank budget or energy threshold,
  against accuracy, on the torch backend. Each task trains one subspace from fresh; its exact
  factors are then recompressed at every setting with :func:`nsr_gym.bank.compress_lora`, stored
  as a real :class:`~nsr_gym.bank.BankEntry` (``nbytes`` is the bank's own accounting: factors,
  head and key) and loaded back to measure the accuracy the compressed entry keeps.
* :func:`eviction_study`: the top-``K`` cap and each eviction rule, on either backend. A policy
  (NSR's similarity rule in ``nsr-gym budget``) runs the stream; every revisit is classed by the
  state of its task's entry at the moment it returns (``retained``, ``evicted`` or ``never
  stored``) and its recovery time, zero-shot accuracy and BWT are recorded.
* :func:`vit_entry_bytes`: bytes of real bank entries shaped for ViT-B/16 (LoRA rank ``r`` on the
  query and value projections of 12 blocks of width 768, plus a 10-way head and the key), built
  by :func:`~nsr_gym.bank.compress_lora` on random factors of that shape: no training needed.
  Compared with the paper's 0.29 MB per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsr_gym.bank import BankEntry, compress_lora
from nsr_gym.metrics import BYTES_PER_MB, RECOVERY_EPS, RECOVERY_WINDOW, phase_table

#: The paper's parameter memory per task (ViT-B/16), in MB.
PAPER_MB_PER_TASK = 0.29


def _entry(key: np.ndarray, payload: dict[str, torch.Tensor], task: int) -> BankEntry:
    return BankEntry(
        key=np.asarray(key, dtype=np.float32), tensors=payload, owner=task, tasks_served=[task]
    )


def recompress(
    payload: dict[str, torch.Tensor], rank: int | None, energy: float | None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Compress every ``layer{i}.B`` / ``layer{i}.A`` pair of a payload again; heads are kept.

    Returns the new payload and the rank kept per layer.
    """
    out, ranks = {}, []
    layers = sorted(
        {k.split(".")[0] for k in payload if k.startswith("layer")},
        key=lambda s: int(s.removeprefix("layer")),
    )
    for name in layers:
        b, a = compress_lora(payload[f"{name}.B"], payload[f"{name}.A"], rank=rank, energy=energy)
        out[f"{name}.B"], out[f"{name}.A"] = b, a
        ranks.append(int(a.shape[0]))
    out.update({k: v for k, v in payload.items() if not k.startswith("layer")})
    return out, ranks


def compression_sweep(
    tasks: str = "five_domains",
    n_tasks: int = 5,
    seeds: Iterable[int] = (0, 1, 2),
    updates: int = 300,
    ranks: Iterable[int] = (1, 2, 3, 4),
    energies: Iterable[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
    learner: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Bytes per task vs rank / energy vs accuracy (see the module docstring).

    Args:
        tasks: Task family of :mod:`nsr_gym.data`.
        n_tasks: Tasks of the family.
        seeds: Seeds of the learner (data order and initialisation).
        updates: Adam updates per task, from a fresh subspace.
        ranks: Rank budgets (``compress_lora(rank=k)``).
        energies: Energy thresholds (``compress_lora(energy=e)``).
        learner: Overrides of ``TorchLearnerConfig`` (the benchmark's defaults otherwise).

    Returns:
        One row per (seed, task, setting): ``kind`` (``"exact"``, ``"rank"`` or ``"energy"``),
        ``value``, ``mean_rank`` (kept, over layers), ``bytes`` (the entry's ``nbytes``),
        ``adapter_bytes`` (factors only), ``accuracy`` and ``accuracy_full`` (uncompressed).
    """
    from nsr_gym.data import make_tasks
    from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig

    cfg = TorchLearnerConfig(
        **{
            **(learner or {}),
            "compression_rank": None,
            "compression_energy": None,
            "measure_truncation": False,
        }
    )
    model = TorchLearner(make_tasks(tasks, n_tasks), cfg)
    settings = (
        [("exact", None, None, None)]
        + [("rank", k, k, None) for k in ranks]
        + [("energy", e, None, e) for e in energies]
    )
    rows = []
    try:
        for seed in seeds:
            model.reset(np.random.default_rng(seed))
            for task in range(n_tasks):
                model.fresh()
                model.train(task, updates)
                full = model.evaluate(task)
                exact, _ = model.snapshot(task)
                key = model.embed(task)
                for kind, value, rank, energy in settings:
                    payload, kept = recompress(exact, rank, energy)
                    entry = _entry(key, payload, task)
                    model.load(payload)
                    adapter = sum(
                        t.numel() * t.element_size()
                        for n, t in payload.items()
                        if n.startswith("layer")
                    )
                    rows.append(
                        {
                            "seed": seed,
                            "task": task,
                            "kind": kind,
                            "value": value,
                            "mean_rank": float(np.mean(kept)),
                            "bytes": entry.nbytes,
                            "adapter_bytes": adapter,
                            "accuracy": model.evaluate(task),
                            "accuracy_full": full,
                        }
                    )
    finally:
        model.close()
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- eviction


#: The step log's columns the eviction study reads (``reward`` and ``status`` besides).
_STEP_KEYS = ["phase", "step_in_phase", "task_id", "visit", "accuracy", "zero_shot_accuracy",
              "switched", "bank_bytes", "bank_entries"]


def _episode(env: Any, policy: Any, seed: int) -> pd.DataFrame:
    """One episode through :func:`nsr_gym.agents.evaluation.rollout`; per step, the log's
    ``_STEP_KEYS``, ``reward`` and ``status``: the state of the served task's entry when the step
    was decided (``retained``, ``evicted`` or ``never stored``)."""
    from nsr_gym.agents.evaluation import rollout

    stored: set[int] = set()  # tasks whose entry was in the bank at the end of one of their phases
    statuses: list[str] = []
    previous: list[int] = []  # the task of the step before (none at the first decision)

    def at_decision(obs: dict[str, np.ndarray], info: dict[str, Any], action: int) -> None:
        bank = env.unwrapped.bank
        # ``info`` and the bank are as the previous step left them: was its task stored?
        if previous and info["phase_end"] and bank.slot_of_owner(previous[-1]) is not None:
            stored.add(previous[-1])
        task = int(info["next_task_id"])
        statuses.append("retained" if bank.slot_of_owner(task) is not None
                        else "evicted" if task in stored else "never stored")
        previous.append(task)

    log = rollout(env, policy, seed, before_step=at_decision)
    return log[[*_STEP_KEYS, "reward"]].assign(status=statuses)


def eviction_study(
    make_env: Callable[[int, str], Any],
    make_policy: Callable[[], Any],
    capacities: Iterable[int],
    policies: Iterable[str],
    seeds: Iterable[int],
    eps: float = RECOVERY_EPS,
    window: int = RECOVERY_WINDOW,
) -> pd.DataFrame:
    """Recovery of retained and evicted tasks under a top-``K`` cap and each eviction rule.

    Args:
        make_env: ``(capacity, eviction) -> env``.
        make_policy: Builds the allocation policy (anything with SB3's ``predict``).
        capacities: Values of ``K``.
        policies: Eviction rules (``nsr_gym.bank.EVICTION_POLICIES``).
        seeds: Episode seeds.

    Returns:
        One row per revisit phase: ``capacity``, ``eviction``, ``seed``, ``phase``, ``task_id``,
        ``visit``, ``status`` of the task's entry at its return, ``recovery`` (``R_eps``),
        ``censored``, ``zero_shot``, ``bwt``; plus ``episode_return`` and ``bank_mb`` of the run.
    """
    frames = []
    for capacity in capacities:
        for eviction in policies:
            env = make_env(capacity, eviction)
            try:
                for seed in seeds:
                    steps = _episode(env, make_policy(), seed)
                    phases = phase_table(steps, eps, window)
                    status = steps.groupby("phase")["status"].first()
                    rev = phases[phases["visit"] > 1].copy()
                    rev["status"] = rev["phase"].map(status)
                    rev = rev.assign(
                        capacity=capacity,
                        eviction=eviction,
                        seed=seed,
                        episode_return=float(steps["reward"].sum()),
                        bank_mb=float(steps["bank_bytes"].iloc[-1]) / BYTES_PER_MB,
                    )
                    frames.append(
                        rev[
                            [
                                "capacity",
                                "eviction",
                                "seed",
                                "phase",
                                "task_id",
                                "visit",
                                "status",
                                "recovery",
                                "censored",
                                "zero_shot",
                                "bwt",
                                "episode_return",
                                "bank_mb",
                            ]
                        ]
                    )
            finally:
                env.close()
    return pd.concat(frames, ignore_index=True)


def summarize_eviction(revisits: pd.DataFrame) -> pd.DataFrame:
    """Per capacity, rule and entry status: revisits, mean recovery, zero-shot accuracy, BWT."""
    g = revisits.groupby(["capacity", "eviction", "status"])
    out = g.agg(
        revisits=("recovery", "size"),
        recovery=("recovery", "mean"),
        censored=("censored", "mean"),
        zero_shot=("zero_shot", "mean"),
        bwt=("bwt", "mean"),
    )
    out = out.reset_index()
    runs = revisits.groupby(["capacity", "eviction", "seed"])[["episode_return", "bank_mb"]].first()
    per_rule = runs.groupby(["capacity", "eviction"]).mean().reset_index()
    share = (
        revisits.groupby(["capacity", "eviction"])["status"]
        .apply(lambda s: float((s == "retained").mean()))
        .rename("retained_share")
        .reset_index()
    )
    return out.merge(per_rule, on=["capacity", "eviction"]).merge(
        share, on=["capacity", "eviction"]
    )


# ----------------------------------------------------------------------------- ViT-B/16 bytes


def vit_entry_bytes(
    ranks: Iterable[int] = (1, 2, 4, 8, 16),
    width: int = 768,
    blocks: int = 12,
    targets: tuple[str, ...] = ("q", "v"),
    n_classes: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Bytes of real bank entries shaped for ViT-B/16 (see the module docstring).

    For each LoRA rank ``r``: random ``B (width, r)`` and ``A (r, width)`` per adapted layer
    (``len(targets) * blocks`` layers), compressed by ``compress_lora`` with no budget (random
    factors have full rank ``r``), a ``(n_classes, width)`` head with its bias, and a ``(width,)``
    key, in a :class:`BankEntry`. Columns: ``rank``, ``layers``, ``adapter_bytes``,
    ``head_bytes``, ``key_bytes``, ``entry_bytes`` (``BankEntry.nbytes``), ``entry_mb``,
    ``adapter_mb``, ``ratio_to_paper`` (entry MB / 0.29) and ``adapter_ratio_to_paper``.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    layers = len(targets) * blocks
    for r in ranks:
        payload: dict[str, torch.Tensor] = {}
        for i in range(layers):
            b = torch.randn(width, r, generator=gen)
            a = torch.randn(r, width, generator=gen)
            payload[f"layer{i}.B"], payload[f"layer{i}.A"] = compress_lora(b, a)
        payload["head.weight"] = torch.randn(n_classes, width, generator=gen)
        payload["head.bias"] = torch.zeros(n_classes)
        entry = _entry(np.zeros(width, dtype=np.float32), payload, 0)
        adapter = sum(
            t.numel() * t.element_size() for n, t in payload.items() if n.startswith("layer")
        )
        head = sum(t.numel() * t.element_size() for n, t in payload.items() if n.startswith("head"))
        rows.append(
            {
                "rank": r,
                "layers": layers,
                "adapter_bytes": adapter,
                "head_bytes": head,
                "key_bytes": int(entry.key.nbytes),
                "entry_bytes": entry.nbytes,
                "entry_mb": entry.nbytes / BYTES_PER_MB,
                "adapter_mb": adapter / BYTES_PER_MB,
                "ratio_to_paper": entry.nbytes / BYTES_PER_MB / PAPER_MB_PER_TASK,
                "adapter_ratio_to_paper": adapter / BYTES_PER_MB / PAPER_MB_PER_TASK,
            }
        )
    return pd.DataFrame(rows)
