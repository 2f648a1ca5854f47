"""Does LoRA matter? Trained adapters + head against a trained head alone on the frozen backbone.

Protocol: for every task and seed, start from a fresh subspace and run ``budget`` Adam updates
(the same data order for both arms), then evaluate on held-out data. The head-only arm is the
same learner with ``train_adapters=False``: its features are the frozen backbone's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from nsr_gym.data import make_tasks
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig


def lora_ablation(family: str = "split_digits", n_tasks: int = 5, seeds: Iterable[int] = range(5),
                  budgets: Iterable[int] = (30, 300), **config) -> pd.DataFrame:
    """Accuracy after ``budget`` updates per (arm, task, seed, budget); one row each."""
    tasks = make_tasks(family, n_tasks)
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
