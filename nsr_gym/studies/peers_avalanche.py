"""The Avalanche side of ``nsr-gym peers``: the peer model, the stream as experiences, a run.

Imports Avalanche at the top, so only :func:`nsr_gym.studies.peers.peer_unit` imports this
module, inside the unit (Avalanche is the optional ``peers`` extra). The protocol is
:mod:`nsr_gym.studies.peers`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin, SupervisedPlugin
from avalanche.training.supervised import EWC, LwF, Naive, Replay
from torch import nn

from nsr_gym.data import Task
from nsr_gym.learners.backbones import CNN1D, lora_targets
from nsr_gym.learners.torch_learner import TorchLearnerConfig, add_lora, make_backbone


def peer_features(input_dim: int, cfg: TorchLearnerConfig) -> tuple[nn.Module, int]:
    """The env learner's frozen backbone with its LoRA (same weights, layers, rank, alpha, and
    ``peft``'s initialisation); a CNN's stem stays frozen in front. Returns ``(module, dim)``."""
    backbone, dim = make_backbone(input_dim, cfg)
    stem = None
    if isinstance(backbone, CNN1D):
        stem, backbone = backbone.stem, backbone.trunk
    features = add_lora(backbone, lora_targets(backbone, cfg.lora_blocks), cfg)
    if stem is None:
        return features, dim
    for p in stem.parameters():
        p.requires_grad_(False)
    return nn.Sequential(stem, features), dim


class MultiHeadNet(MultiTaskModule):
    """Shared adapted features, one linear head per task label (created as tasks arrive)."""

    def __init__(self, features: nn.Module, dim: int, n_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = MultiHeadClassifier(dim, initial_out_features=n_classes, masking=False)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.classifier(self.features(x), task_label)


class SharedHeadNet(nn.Module):
    """Shared adapted features and one head for every task: the env's sequential fine-tuning."""

    def __init__(self, features: nn.Module, dim: int, n_classes: int) -> None:
        super().__init__()
        self.features, self.head = features, nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _CountUpdates(SupervisedPlugin):
    """Counts optimiser updates per experience (the fairness check: the same per task)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        self.counts.append(0)

    def after_update(self, strategy, *args, **kwargs) -> None:
        self.counts[-1] += 1


def _quiet_deprecations(show):
    """``warnings.showwarning`` without Avalanche 0.6's own deprecation notes (its replay buffer
    calls a deprecated method, and the decorator resets the filters at each call)."""
    def quiet(message, category, *args, **kwargs):
        if not issubclass(category, DeprecationWarning):
            show(message, category, *args, **kwargs)
    return quiet


def train_stream(tasks: Sequence[Task], updates: int, batch_size: int, seed: int):
    """Avalanche's train stream: per task, ``updates * batch_size`` training examples drawn
    uniformly with replacement (seeded), labelled with the task id."""
    rng = np.random.default_rng([seed, 16])
    datasets = []
    for t in tasks:
        idx = rng.integers(0, len(t.y_train), updates * batch_size)
        x, y = torch.as_tensor(t.x_train[idx]), torch.as_tensor(t.y_train[idx])
        datasets.append(TaskAwareSupervisedClassificationDataset(
            [torch.utils.data.TensorDataset(x, y)], data_attributes=[
                DataAttribute(y.tolist(), "targets"),
                DataAttribute([t.task_id] * len(y), "targets_task_labels", use_in_getitem=True)]))
    return with_classes_timeline(with_task_labels(benchmark_from_datasets(train=datasets)))


def strategy_of(kind: str, params: dict[str, float], model: nn.Module, cfg: TorchLearnerConfig,
                plugins: list) -> Naive:
    """The Avalanche strategy ``kind``: Adam at the learner's rate, one epoch over the stream's
    ``updates * batch_size`` examples (``updates`` steps of ``batch_size``), no logging."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified": we evaluate ourselves
        evaluator = EvaluationPlugin(loggers=[])
    common = dict(model=model, optimizer=torch.optim.Adam(trainable, lr=cfg.lr),
                  criterion=nn.CrossEntropyLoss(), train_mb_size=cfg.batch_size, train_epochs=1,
                  device="cpu", evaluator=evaluator, plugins=plugins)
    if kind == "lwf":
        return LwF(alpha=params["alpha"], temperature=params["temperature"], **common)
    if kind == "ewc":
        return EWC(ewc_lambda=params["lambda"], **common)
    if kind == "replay":
        return Replay(mem_size=int(params["mem"]), **common)
    return Naive(**common)


@torch.no_grad()
def accuracies(model: nn.Module, tasks: Sequence[Task], trained: int) -> np.ndarray:
    """``(M,)`` test accuracy per task after training tasks ``0..trained``; NaN where a
    multi-head model has no head yet."""
    model.eval()
    acc = np.full(len(tasks), np.nan)
    for t in tasks:
        x = torch.as_tensor(t.x_test)
        if isinstance(model, MultiTaskModule):
            if t.task_id > trained:
                continue
            logits = model(x, torch.full((len(x),), t.task_id))
        else:
            logits = model(x)
        pred = logits[:, :t.n_classes].argmax(1).numpy()
        acc[t.task_id] = float(np.mean(pred == t.y_test))
    model.train()
    return acc


def run_strategy(kind: str, params: dict[str, float], tasks: Sequence[Task],
                 cfg: TorchLearnerConfig, updates: int, seed: int
                 ) -> tuple[np.ndarray, list[int], float]:
    """Train ``kind`` on the tasks in order and evaluate after each (torch's global generator
    seeded by the caller).

    Returns:
        ``(R, updates per task, stored MB)``: ``R`` ``(M, M)``; stored MB is the replay buffer's
        float32 signals (NaN for the other strategies).
    """
    features, dim = peer_features(tasks[0].input_dim, cfg)
    n_classes = max(t.n_classes for t in tasks)
    net = SharedHeadNet if kind == "naive-shared-head" else MultiHeadNet
    model = net(features, dim, n_classes)
    counter = _CountUpdates()
    strategy = strategy_of(kind, params, model, cfg, [counter])
    rows = []
    for j, exp in enumerate(train_stream(tasks, updates, cfg.batch_size, seed).train_stream):
        with warnings.catch_warnings():  # restores showwarning on exit
            warnings.showwarning = _quiet_deprecations(warnings.showwarning)
            strategy.train(exp)
        rows.append(accuracies(model, tasks, j))
    stored = float("nan")
    replay = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)]
    if replay:
        stored = len(replay[0].storage_policy.buffer) * tasks[0].input_dim * 4 / 1e6
    return np.stack(rows), counter.counts, stored
