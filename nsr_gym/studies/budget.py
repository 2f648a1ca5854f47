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
* :func:`precision_sweep`: float16 payloads and per-entry SVD ranks by energy, on the torch
  backend at several LoRA ranks, by the compression sweep's procedure; each row also carries the
  entry's bytes at ViT-B/16's shape (:func:`vit_bytes`), and :func:`summarize_precision` gives
  bytes per task against the paper's 0.29 MB with the accuracy each setting costs.
* :func:`byte_budget_study`: a bank bounded in bytes (``capacity_bytes``), float32 against
  per-entry float16 payloads: how many tasks the same bytes hold, and what that returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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


def vit_bytes(mean_rank: float, itemsize: int, width: int = 768, layers: int = 24,
              n_classes: int = 10) -> tuple[float, float]:
    """``(entry_bytes, adapter_bytes)`` of a ViT-B/16-shaped entry: ``layers`` LoRA pairs
    ``B (width, k)``, ``A (k, width)`` with mean kept rank ``mean_rank``, a ``(n_classes, width)``
    head and its bias, all ``itemsize`` bytes per element, and the float32 ``(width,)`` key (the
    same accounting as :attr:`BankEntry.nbytes`; exact for an integer rank)."""
    adapter = layers * 2 * width * mean_rank * itemsize
    return adapter + (n_classes * width + n_classes) * itemsize + 4 * width, adapter


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
        for seed, task, full, exact, key in _trained_subspaces(model, seeds, n_tasks, updates):
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
        task = int(env.unwrapped.oracle_info()["next_task_id"])
        statuses.append("retained" if bank.slot_of_owner(task) is not None
                        else "evicted" if task in stored else "never stored")
        previous.append(task)

    log = rollout(env, policy, seed, before_step=at_decision)
    return log[[*_STEP_KEYS, "reward"]].assign(status=statuses)


#: Columns of :func:`eviction_study`, in order.
_REVISIT_COLUMNS = ["capacity", "eviction", "seed", "phase", "task_id", "visit", "status",
                    "recovery", "censored", "zero_shot", "bwt", "episode_return", "bank_mb"]


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
                    frames.append(rev[_REVISIT_COLUMNS])
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
    dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """Bytes of real bank entries shaped for ViT-B/16 (see the module docstring).

    For each LoRA rank ``r``: random ``B (width, r)`` and ``A (r, width)`` per adapted layer
    (``len(targets) * blocks`` layers), compressed by ``compress_lora`` with no budget (random
    factors have full rank ``r``), a ``(n_classes, width)`` head with its bias, and a ``(width,)``
    key, in a :class:`BankEntry`. Columns: ``rank``, ``layers``, ``adapter_bytes``,
    ``head_bytes``, ``key_bytes``, ``entry_bytes`` (``BankEntry.nbytes``), ``entry_mb``,
    ``adapter_mb``, ``ratio_to_paper`` (entry MB / 0.29) and ``adapter_ratio_to_paper``.
    ``dtype`` is the payload's (factors and head; the key stays float32).
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
        payload = {name: t.to(dtype) for name, t in payload.items()}
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


# ----------------------------------------------------------------------------- float16, energy


def precision_sweep(tasks: str = "five_domains", n_tasks: int = 5, seeds: Iterable[int] = (0, 1),
                    updates: int = 300, lora_ranks: Iterable[int] = (1, 2, 4, 8, 16),
                    energies: Iterable[float | None] = (None, 0.999, 0.99),
                    tolerance: float = 0.01, learner: dict[str, Any] | None = None
                    ) -> pd.DataFrame:
    """float16 payloads and per-entry ranks by energy, measured as :func:`compression_sweep`.

    For each LoRA rank ``r`` a torch learner (``lora_rank = r``) trains each task from fresh for
    ``updates`` Adam updates; its exact factors are recompressed at each energy threshold
    (``None``: no truncation; each layer of each entry keeps its own rank), stored as a real
    :class:`BankEntry` in float32 and in float16 (factors and head; the key stays float32), loaded
    back and evaluated on the task's held-out data. ``"auto"`` is the per-entry check of
    ``TorchLearner(payload_dtype="auto")``: float16 where its accuracy is within ``tolerance`` of
    the float32 payload's, float32 otherwise.

    Returns:
        One row per (lora_rank, seed, task, energy, dtype): ``mean_rank`` (kept, over layers),
        ``bytes`` (the entry's ``nbytes``), ``stored_dtype``, ``accuracy``, ``accuracy_float32``
        (same energy, float32), ``accuracy_full`` (uncompressed float32), and ``vit_bytes`` /
        ``vit_adapter_bytes``: the entry at ViT-B/16's shape with that mean kept rank and dtype
        (:func:`vit_bytes`).
    """
    from nsr_gym.data import make_tasks
    from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig, half_payload

    rows = []
    for r in lora_ranks:
        cfg = TorchLearnerConfig(**{**(learner or {}), "lora_rank": r, "compression_rank": None,
                                    "compression_energy": None, "measure_truncation": False})
        model = TorchLearner(make_tasks(tasks, n_tasks), cfg)
        try:
            for seed, task, full, exact, key in _trained_subspaces(model, seeds, n_tasks,
                                                                   updates):
                for energy in energies:
                    payload, kept = recompress(exact, None, energy)
                    base = {"lora_rank": r, "seed": seed, "task": task, "energy": energy,
                            "mean_rank": float(np.mean(kept)), "accuracy_full": full}
                    rows += _precision_rows(model, task, key, payload, half_payload(payload),
                                            tolerance, base)
        finally:
            model.close()
    return pd.DataFrame(rows)



def _trained_subspaces(model: Any, seeds: Iterable[int], n_tasks: int, updates: int
                       ) -> Iterator[tuple[int, int, float, dict[str, torch.Tensor], np.ndarray]]:
    """For each seed and task: a fresh subspace trained ``updates`` Adam updates on the task.

    Yields ``(seed, task, accuracy, exact payload, key)``; the caller may load and evaluate other
    payloads on ``model`` before asking for the next one (each starts from ``fresh()``).
    """
    for seed in seeds:
        model.reset(np.random.default_rng(seed))
        for task in range(n_tasks):
            model.fresh()
            model.train(task, updates)
            full = model.evaluate(task)
            exact, _ = model.snapshot(task)
            yield seed, task, full, exact, model.embed(task)

def _precision_rows(model: Any, task: int, key: np.ndarray, payload: dict[str, torch.Tensor],
                    half: dict[str, torch.Tensor] | None, tolerance: float,
                    base: dict[str, Any]) -> list[dict[str, Any]]:
    """The float32, float16 and auto rows of one entry at one energy."""
    measured = {}
    for dtype, p in (("float32", payload), ("float16", half)):
        if p is not None:
            model.load(p)
            measured[dtype] = (p, model.evaluate(task))
    acc32 = measured["float32"][1]
    ok16 = "float16" in measured and acc32 - measured["float16"][1] <= tolerance
    measured["auto"] = measured["float16" if ok16 else "float32"]
    rows = []
    for dtype, (p, acc) in measured.items():
        entry = _entry(key, p, task)
        stored = str(p["head.weight"].dtype).removeprefix("torch.")
        vit, vit_adapter = vit_bytes(base["mean_rank"], p["head.weight"].element_size())
        rows.append({**base, "dtype": dtype, "stored_dtype": stored, "bytes": entry.nbytes,
                     "accuracy": acc, "accuracy_float32": acc32, "vit_bytes": vit,
                     "vit_adapter_bytes": vit_adapter})
    return rows


def summarize_precision(rows: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Per (lora_rank, energy, dtype): mean kept rank, share stored in float16, bytes (this
    learner's and at ViT-B/16's shape, in MB = 10^6 bytes, and against the paper's 0.29 MB),
    and the accuracy loss against the uncompressed float32 entry: mean, worst entry, and the
    share of entries that lose more than ``tolerance``."""
    d = rows.assign(loss=rows["accuracy_full"] - rows["accuracy"],
                    half=rows["stored_dtype"] == "float16",
                    energy=rows["energy"].astype(object).where(rows["energy"].notna(), "none"))
    out = d.groupby(["lora_rank", "energy", "dtype"], sort=False).agg(
        mean_rank=("mean_rank", "mean"), float16_share=("half", "mean"), bytes=("bytes", "mean"),
        vit_mb=("vit_bytes", "mean"), vit_adapter_mb=("vit_adapter_bytes", "mean"),
        accuracy=("accuracy", "mean"), accuracy_loss=("loss", "mean"),
        worst_loss=("loss", "max"),
        over_tolerance=("loss", lambda x: float((x > tolerance).mean())))
    out[["vit_mb", "vit_adapter_mb"]] /= BYTES_PER_MB
    out["ratio_to_paper"] = out["vit_mb"] / PAPER_MB_PER_TASK
    out["adapter_ratio_to_paper"] = out["vit_adapter_mb"] / PAPER_MB_PER_TASK
    return out.reset_index()


def byte_budget_study(make_env: Callable[[int, str], Any], make_policy: Callable[[], Any],
                      budgets: Iterable[int], dtypes: Iterable[str],
                      seeds: Iterable[int]) -> pd.DataFrame:
    """What a bank bounded in bytes holds, with float32 or per-entry float16 payloads.

    Args:
        make_env: ``(capacity_bytes, payload_dtype) -> env``.
        make_policy: Builds the allocation policy.
        budgets: Byte budgets (``capacity_bytes``).
        dtypes: ``payload_dtype`` values of the torch learner (``"float32"``, ``"auto"``).
        seeds: Episode seeds.

    Returns:
        One row per (budget, dtype, seed): ``entries`` (mean tasks held at phase ends),
        ``entry_bytes`` (mean bytes per held entry there), ``retained_share`` (revisits whose
        entry was held), ``episode_return``.
    """
    rows = []
    for budget in budgets:
        for dtype in dtypes:
            env = make_env(budget, dtype)
            try:
                for seed in seeds:
                    steps = _episode(env, make_policy(), seed)
                    ends = steps.groupby("phase").last()
                    revisits = steps[steps["visit"] > 1].groupby("phase")["status"].first()
                    rows.append({"capacity_bytes": budget, "payload_dtype": dtype, "seed": seed,
                                 "entries": float(ends["bank_entries"].mean()),
                                 "entry_bytes": float((ends["bank_bytes"] / ends["bank_entries"]
                                                       .clip(lower=1)).mean()),
                                 "retained_share": float((revisits == "retained").mean()),
                                 "episode_return": float(steps["reward"].sum())})
            finally:
                env.close()
    return pd.DataFrame(rows)
