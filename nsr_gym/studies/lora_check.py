"""``nsr-gym lora-check``: does LoRA matter, and what does a pretrained backbone buy?

Protocol: for every task and seed, start from a fresh subspace and run ``budget`` Adam updates
(the same data order for both arms), then evaluate on held-out data. The head-only arm is the
same learner with ``train_adapters=False``: its features are the frozen backbone's.
:func:`run_study` writes the tables to ``results/lora_check/``.

Two parts:

* ``digits``: the ablation on Split-Digits with the default random MLP (``lora_check.*``).
* ``mnist1d``: the same ablation on the MNIST-1D families (``split_mnist1d``,
  ``mnist1d_domains``) for three frozen backbones: the default random MLP, the 1D CNN with
  seeded random weights (``"cnn1d"``) and that CNN pretrained by ``nsr-gym pretrain``
  (``"pretrained"``), so random and pretrained features meet on the same tasks and the same
  architecture; and the similarity rule's **recall precision** with each backbone's
  embeddings (:func:`recall_precision`): over ``revisits`` cyclic passes, the fraction of
  revisits whose argmax-cosine bank key is the task's own entry, read off the learner's
  ``embed()`` probes as the env keys its bank (``reserve="owner"``: an entry's key is the probe
  of its task's latest phase), without running an agent (``lora_check_mnist1d.*``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nsr_gym.atomic import atomic_write_text
from nsr_gym.bank import SIMILARITY_THRESHOLD
from nsr_gym.data import make_tasks
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig
from nsr_gym.results import (
    command_line,
    manifest,
    markdown_table,
    provenance_line,
    write_csv,
    write_json,
)
from nsr_gym.stats import mean_ci

#: Parts of :func:`run_study`.
PARTS = ("digits", "mnist1d")
#: MNIST-1D families and backbones of the ``mnist1d`` part.
MNIST1D_FAMILIES = ("split_mnist1d", "mnist1d_domains")
MNIST1D_BACKBONES = ("mlp", "cnn1d", "pretrained")


def lora_ablation(family: str = "split_digits", n_tasks: int = 5, seeds: Iterable[int] = range(5),
                  budgets: Iterable[int] = (30, 300), **config) -> pd.DataFrame:
    """Accuracy after ``budget`` updates per (arm, task, seed, budget); one row each."""
    tasks = make_tasks(family, n_tasks)
    seeds, budgets = list(seeds), list(budgets)
    rows = []
    for arm, adapters in (("lora+head", True), ("head-only", False)):
        learner = TorchLearner(tasks, TorchLearnerConfig(train_adapters=adapters, **config))
        for seed in seeds:
            for budget in budgets:
                for task in range(n_tasks):
                    learner.reset(np.random.default_rng([seed, task]))
                    learner.train(task, budget)
                    rows.append({"arm": arm, "seed": seed, "budget": budget, "task_id": task,
                                 "accuracy": learner.evaluate(task)})
    return pd.DataFrame(rows)


def summarize_ablation(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy (over tasks and seeds) per budget and arm, and the gap."""
    table = frame.groupby(["budget", "arm"])["accuracy"].mean().unstack("arm").reset_index()
    table["gap"] = table["lora+head"] - table["head-only"]
    return table[["budget", "lora+head", "head-only", "gap"]]


# ----------------------------------------------------------------------------- backbones


def backbone_ablation(families: Sequence[str] = MNIST1D_FAMILIES,
                      backbones: Sequence[str] = MNIST1D_BACKBONES, n_tasks: int = 5,
                      seeds: Iterable[int] = range(5),
                      budgets: Iterable[int] = (30, 300)) -> pd.DataFrame:
    """:func:`lora_ablation` per family and backbone; rows gain ``family`` and ``backbone``."""
    seeds, budgets = list(seeds), list(budgets)
    parts = [lora_ablation(family, n_tasks, seeds, budgets, backbone=backbone)
             .assign(family=family, backbone=backbone)
             for family in families for backbone in backbones]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["family", "backbone", "arm", "seed", "budget", "task_id", "accuracy"]]


def summarize_backbones(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family, backbone and budget: mean accuracy of each arm (over tasks and seeds), the
    LoRA gap, and a 95% bootstrap interval of the gap over seeds (per-seed means over tasks)."""
    rows = []
    for (family, backbone, budget), group in frame.groupby(["family", "backbone", "budget"],
                                                           sort=False):
        per_seed = group.groupby(["seed", "arm"])["accuracy"].mean().unstack("arm")
        gap, lo, hi = mean_ci((per_seed["lora+head"] - per_seed["head-only"]).to_numpy())
        rows.append({"family": family, "backbone": backbone, "budget": budget,
                     "lora+head": per_seed["lora+head"].mean(),
                     "head-only": per_seed["head-only"].mean(),
                     "gap": gap, "gap_ci_low": lo, "gap_ci_high": hi})
    return pd.DataFrame(rows)


def recall_precision(families: Sequence[str] = MNIST1D_FAMILIES,
                     backbones: Sequence[str] = MNIST1D_BACKBONES, n_tasks: int = 5,
                     seeds: Iterable[int] = range(5), revisits: int = 3) -> pd.DataFrame:
    """The similarity rule's recall with each backbone's probe embeddings; one row per revisit.

    For each seed the learner is reset as the env resets it, every task is probed once (its
    entry's key), then ``revisits`` cyclic passes probe each task again: the row records the
    argmax-cosine key (``recalled``), whether it is the task's own (``correct``), the cosine to
    the own key and the best rival's, and whether the similarity rule would load the own entry
    (``correct`` and a best cosine of at least the rule's threshold). The own key then becomes
    the new probe, as the env's reserve rewrites it.
    """
    rows = []
    for family in families:
        tasks = make_tasks(family, n_tasks)
        for backbone in backbones:
            learner = TorchLearner(tasks, TorchLearnerConfig(backbone=backbone))
            for seed in seeds:
                learner.reset(np.random.default_rng(seed))
                keys = np.stack([learner.embed(t) for t in range(n_tasks)])
                for visit in range(1, revisits + 1):
                    for task in range(n_tasks):
                        probe = learner.embed(task)
                        cos = (keys @ probe) / np.maximum(
                            np.linalg.norm(keys, axis=1) * np.linalg.norm(probe), 1e-12)
                        best = int(np.argmax(cos))
                        rival = float(np.max(np.delete(cos, task))) if n_tasks > 1 else np.nan
                        rows.append({"family": family, "backbone": backbone, "seed": seed,
                                     "revisit": visit, "task_id": task, "recalled": best,
                                     "correct": int(best == task),
                                     "loads_own": int(best == task
                                                      and cos[best] >= SIMILARITY_THRESHOLD),
                                     "own_cosine": float(cos[task]), "rival_cosine": rival})
                        keys[task] = probe
    return pd.DataFrame(rows)


def summarize_recall(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family and backbone: recall precision (mean ``correct``) with a 95% bootstrap interval
    over seeds, the rule's own-entry load rate, and the mean own and best-rival cosines."""
    rows = []
    for (family, backbone), group in frame.groupby(["family", "backbone"], sort=False):
        per_seed = group.groupby("seed")["correct"].mean().to_numpy()
        precision, lo, hi = mean_ci(per_seed)
        rows.append({"family": family, "backbone": backbone, "precision": precision,
                     "ci_low": lo, "ci_high": hi, "rule_loads_own": group["loads_own"].mean(),
                     "own_cosine": group["own_cosine"].mean(),
                     "rival_cosine": group["rival_cosine"].mean()})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the command


def findings(table: pd.DataFrame, recall: pd.DataFrame) -> list[str]:
    """The report's findings as markdown bullets, each figure read from ``table`` (of
    :func:`summarize_backbones`) and ``recall`` (of :func:`summarize_recall`), both over the
    three backbones of :data:`MNIST1D_BACKBONES`; the README quotes them whole."""
    acc = table.set_index(["family", "backbone", "budget"])
    prec = recall.set_index(["family", "backbone"])["precision"]
    lo, hi = int(table["budget"].min()), int(table["budget"].max())
    out = []
    for family in table["family"].unique():
        head = {(b, n): float(acc.loc[(family, b, n), "head-only"])
                for b in MNIST1D_BACKBONES for n in (lo, hi)}
        gap = {b: float(acc.loc[(family, b, hi), "gap"]) for b in MNIST1D_BACKBONES}
        out.append(f"- {family}: a head alone on the pretrained features reaches "
                   f"{head['pretrained', lo]:.3f} after {lo} updates (random MLP "
                   f"{head['mlp', lo]:.3f}, random CNN {head['cnn1d', lo]:.3f}) and "
                   f"{head['pretrained', hi]:.3f} after {hi}; LoRA adds {gap['pretrained']:.3f} "
                   f"there, against {gap['mlp']:.3f} on the random MLP and {gap['cnn1d']:.3f} "
                   "on the random CNN.")
        out.append(f"- {family}: the similarity rule recalls the task's own entry on "
                   f"{prec[(family, 'pretrained')]:.3f} of revisits with pretrained embeddings, "
                   f"{prec[(family, 'mlp')]:.3f} with the random MLP's and "
                   f"{prec[(family, 'cnn1d')]:.3f} with the random CNN's.")
    return out


def _digits(seeds: list[int], budgets: list[int], out: Path) -> str:
    t0 = time.perf_counter()
    raw = lora_ablation(seeds=seeds, budgets=budgets)
    table = summarize_ablation(raw)
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, tasks="split_digits")
    write_csv(out / "lora_check_raw.csv", raw)
    write_csv(out / "lora_check.csv", table)
    md = (f"# Does LoRA matter? (Split-Digits, torch backend)\n\n{provenance_line(meta)}\n\n"
          f"{markdown_table(table)}\n\nMean held-out accuracy over 5 tasks x seeds after `budget` "
          "Adam updates from a fresh subspace; head-only trains the head on the frozen features.\n")
    atomic_write_text(out / "lora_check.md", md)
    write_json(out / "manifest.json", meta)
    return md


def _mnist1d(seeds: list[int], budgets: list[int], out: Path, revisits: int) -> str:
    t0 = time.perf_counter()
    raw = backbone_ablation(seeds=seeds, budgets=budgets)
    table = summarize_backbones(raw)
    recall_raw = recall_precision(seeds=seeds, revisits=revisits)
    recall = summarize_recall(recall_raw)
    meta = manifest(command_line(), seeds, time.perf_counter() - t0,
                    tasks=list(MNIST1D_FAMILIES), backbones=list(MNIST1D_BACKBONES),
                    budgets=budgets, revisits=revisits)
    write_csv(out / "lora_check_mnist1d_raw.csv", raw)
    write_csv(out / "lora_check_mnist1d.csv", table)
    write_csv(out / "recall_mnist1d_raw.csv", recall_raw)
    write_csv(out / "recall_mnist1d.csv", recall)
    md = (f"# What pretraining buys (MNIST-1D, torch backend)\n\n{provenance_line(meta)}\n\n"
          + "\n".join(findings(table, recall)) + "\n\n"
          "Frozen backbones: `mlp` is the benchmarks' default random-features MLP (40-64-32); "
          "`cnn1d` is a 1D CNN (three stride-2 convolutions of 32 channels, then Linear 160-64-32) "
          "with seeded random weights; `pretrained` is the same CNN with the weights shipped in "
          "`nsr_gym/weights/` (`nsr-gym pretrain`, on MNIST-1D signals no task uses: "
          "`results/pretrain/`). LoRA sits on the Linear layers.\n\n"
          "## Random vs pretrained features, head-only vs LoRA + head\n\n"
          f"{markdown_table(table)}\n\nMean held-out accuracy over 5 tasks x seeds after `budget` "
          "Adam updates from a fresh subspace; `gap` = LoRA + head minus head-only, with a 95% "
          "bootstrap interval over seeds. `split_mnist1d`: five binary class splits; "
          "`mnist1d_domains`: ten classes under five signal transforms (original, reversed, "
          "negated, permuted, differenced).\n\n"
          "## The similarity rule's recall precision\n\n"
          f"{markdown_table(recall)}\n\n"
          f"`precision`: fraction of revisits ({revisits} cyclic passes x 5 tasks x seeds) whose "
          "argmax-cosine bank key is the task's own (95% bootstrap interval over seeds); "
          "`rule_loads_own`: the own key is the argmax and reaches the rule's threshold "
          f"({SIMILARITY_THRESHOLD}); cosines are the mean to the own key and to the best "
          "rival key. Keys and probes are the learner's `embed()` (mean centred frozen feature "
          "of a 64-input probe batch), as the env keys its bank.\n")
    atomic_write_text(out / "lora_check_mnist1d.md", md)
    write_json(out / "manifest_mnist1d.json", meta)
    return md


def run_study(seeds: Iterable[int], budgets: Iterable[int], out: Path,
              parts: Sequence[str] = PARTS, revisits: int = 3) -> str:
    """Run the named parts and write their files under ``out``.

    ``digits``: ``lora_check_raw.csv``, ``lora_check.csv``, ``lora_check.md``, ``manifest.json``.
    ``mnist1d``: ``lora_check_mnist1d_raw.csv``, ``lora_check_mnist1d.csv``,
    ``recall_mnist1d_raw.csv``, ``recall_mnist1d.csv``, ``lora_check_mnist1d.md``,
    ``manifest_mnist1d.json``.

    Args:
        seeds: Learner seeds (data order and initialisation; probe batches for recall).
        budgets: Adam updates per task from a fresh subspace.
        out: Output directory (created).
        parts: Which of :data:`PARTS` to run.
        revisits: Cyclic passes of probes after the first, for the recall precision.

    Returns:
        The markdown reports, one after the other.

    Raises:
        ValueError: for an unknown part.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown lora-check part(s) {unknown}; choose from {list(PARTS)}")
    seeds, budgets, out = list(seeds), list(budgets), Path(out)
    reports = []
    if "digits" in parts:
        reports.append(_digits(seeds, budgets, out))
    if "mnist1d" in parts:
        reports.append(_mnist1d(seeds, budgets, out, revisits))
    return "\n".join(reports)
