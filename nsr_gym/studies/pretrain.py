"""``nsr-gym pretrain``: train the backbone that ships in :mod:`nsr_gym.weights`, deterministically.

What it trains: a :class:`~nsr_gym.learners.backbones.CNN1D` (three stride-2 convolutions of 32
channels, then ``Linear`` layers of 64 and 32 units) plus a 10-way linear classifier, on the
MNIST-1D *pretraining sample* (:func:`nsr_gym.data_mnist1d.pretrain_split`: its own seed, so no
signal of it is in any task's train or test data), with Adam on a cosine learning-rate schedule.
The classifier is dropped, every layer is rescaled to unit-RMS activations on the pretraining
signals (:func:`unit_rms_`: the same features up to one factor), and the CNN's state dict is the
shipped file.

Determinism: every random draw (initial weights, batch order) comes from ``seed`` through
``torch.Generator``, the run is pinned to one CPU thread, and the safetensors bytes depend only on
the tensors, so the same configuration writes a byte-identical file on the same CPU
(``tests/test_pretrain.py`` reruns a tiny configuration twice; ``nsr-gym pretrain --check``
retrains the full one into a temporary folder and compares its sha256 with the shipped record).
Floating-point kernels can differ between CPU families and torch versions, so the check is
against the shipped bytes on a machine like the one that made them (the record names the torch
version).

The weights and their record go to ``nsr_gym/weights/`` (:func:`nsr_gym.weights.write_weights`);
the training curve and the manifest (command, seed, git revision) to ``results/pretrain/``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym import weights
from nsr_gym.atomic import atomic_write_text
from nsr_gym.data_mnist1d import PRETRAIN_SAMPLES, PRETRAIN_SEED, SIGNAL_LENGTH, pretrain_split
from nsr_gym.results import command_line, manifest, markdown_table, write_csv, write_json
from nsr_gym.threads import limited_threads


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run; the defaults made the shipped weights."""

    name: str = "mnist1d_cnn"
    """Weights name: the files are ``<name>.safetensors`` and ``<name>.json``."""
    seed: int = 0
    """Seed of the initial weights and the batch order."""
    samples: int = PRETRAIN_SAMPLES
    """Signals drawn from the pretraining sample's generator (80% train, 20% validation)."""
    epochs: int = 20
    """Passes over the training signals."""
    batch_size: int = 128
    """Signals per Adam update."""
    lr: float = 3e-3
    """Peak Adam learning rate; it follows a cosine from ``lr`` to 0 over the run."""
    channels: tuple[int, ...] = (32, 32, 32)
    """Channels of the stride-2 convolutions."""
    kernel: int = 5
    """Convolution kernel width."""
    hidden: tuple[int, ...] = (64, 32)
    """Widths of the ``Linear -> ReLU`` trunk; the last is the feature dimension."""


def _accuracy(net: Any, head: Any, x: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        return float((head(net(x)).argmax(1) == y).float().mean())


def train_backbone(cfg: PretrainConfig) -> tuple[Any, pd.DataFrame]:
    """Train the CNN of ``cfg``; returns it (trainable, on CPU) and its per-epoch curve.

    The curve has one row per epoch: ``epoch``, ``lr`` (at the epoch's last update),
    ``train_loss`` (mean over the epoch's updates), ``train_accuracy`` and ``val_accuracy``
    (after the epoch, on the pretraining sample's training and validation signals).
    """
    import torch
    from torch import nn

    from nsr_gym.learners.backbones import CNN1D

    x_tr, y_tr, x_va, y_va = (torch.as_tensor(a) for a in pretrain_split(cfg.samples))
    gen = torch.Generator().manual_seed(cfg.seed)
    net = CNN1D(SIGNAL_LENGTH, cfg.channels, cfg.kernel, cfg.hidden, seed=cfg.seed)
    head = nn.Linear(net.feature_dim, 10)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / net.feature_dim**0.5)
        head.bias.zero_()
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=cfg.lr)
    per_epoch = math.ceil(len(y_tr) / cfg.batch_size)
    total, k = cfg.epochs * per_epoch, 0
    rows = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(y_tr), generator=gen)
        losses = []
        for start in range(0, len(y_tr), cfg.batch_size):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * k / total))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(head(net(x_tr[idx])), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            k += 1
        rows.append({"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)),
                     "train_accuracy": _accuracy(net, head, x_tr, y_tr),
                     "val_accuracy": _accuracy(net, head, x_va, y_va)})
    return net, pd.DataFrame(rows)


def unit_rms_(net: Any, x: Any) -> list[float]:
    """Rescale every convolution and ``Linear`` of ``net`` in place so that its ReLU output has
    root mean square 1 on the inputs ``x``; returns the factors.

    Each layer's weight and bias are divided by its output's RMS ``s`` and the next layer's
    weight multiplied by ``s``: the ReLU is positively homogeneous, so every pre-activation keeps
    its sign pattern and the features change by one overall factor. The frozen features then sit
    on a fixed scale (the trained network's are ~9 times larger than unit RMS, which a fresh
    head would first have to unlearn).
    """
    import torch
    from torch import nn

    factors = []
    carry = 1.0
    h = x
    with torch.no_grad():
        for module in [*net.stem, *net.trunk]:
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                module.weight.mul_(carry)  # its input arrives divided by the previous factor
                scale = float(torch.relu(module(h)).pow(2).mean().sqrt())
                module.weight.div_(scale)
                module.bias.div_(scale)
                carry = scale
                factors.append(scale)
            h = module(h)
    return factors


def pretrain(cfg: PretrainConfig, weights_dir: str | Path | None = None
             ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train as ``cfg`` says on one CPU thread and write the weights and their record.

    Args:
        cfg: The run's settings.
        weights_dir: Where ``<name>.safetensors`` and ``<name>.json`` go (default: the
            package's :data:`nsr_gym.weights.WEIGHTS_DIR`, i.e. replace the shipped weights).

    Returns:
        ``(record, curve)``: the weights record written (with the sha256) and the curve.
    """
    import torch

    with limited_threads(1):
        net, curve = train_backbone(cfg)
        factors = unit_rms_(net, torch.as_tensor(pretrain_split(cfg.samples)[0]))
    last = curve.iloc[-1]
    record = {
        "input_dim": SIGNAL_LENGTH,
        "architecture": net.architecture(),
        "pretraining": {
            "config": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(cfg).items()},
            "data": {"generator": "mnist1d.data.make_dataset", "seed": PRETRAIN_SEED,
                     "num_samples": cfg.samples,
                     "note": "its own seed: disjoint from every MNIST-1D task's data"},
            "unit_rms_factors": [round(f, 6) for f in factors],
            "final_train_accuracy": round(float(last["train_accuracy"]), 6),
            "final_val_accuracy": round(float(last["val_accuracy"]), 6),
            "torch": torch.__version__,
        },
    }
    return weights.write_weights(cfg.name, net.state_dict(), record, weights_dir), curve


def check_shipped(cfg: PretrainConfig | None = None) -> tuple[bool, str]:
    """Retrain ``cfg`` (default: the shipped configuration) into a temporary folder and compare
    its sha256 with the shipped record's; returns ``(equal, message)``."""
    cfg = cfg or PretrainConfig()
    shipped = weights.read_record(cfg.name)["sha256"]
    with tempfile.TemporaryDirectory() as tmp:
        record, _ = pretrain(cfg, tmp)
    same = record["sha256"] == shipped
    return same, (f"{'OK' if same else 'MISMATCH'}: retrained {cfg.name} has sha256 "
                  f"{record['sha256']}; {weights.weights_path(cfg.name)} records {shipped}")


def run_study(cfg: PretrainConfig, out: str | Path, weights_dir: str | Path | None = None) -> str:
    """``nsr-gym pretrain``: pretrain, write the weights, and write ``pretrain_curve.csv``,
    ``pretrain.md`` and ``manifest.json`` under ``out``; returns the markdown report."""
    out = Path(out)
    t0 = time.perf_counter()
    record, curve = pretrain(cfg, weights_dir)
    meta = manifest(command_line(), [cfg.seed], time.perf_counter() - t0,
                    weights=weights.weights_path(cfg.name, weights_dir).name,
                    sha256=record["sha256"], bytes=record["bytes"],
                    architecture=record["architecture"], pretraining=record["pretraining"])
    write_csv(out / "pretrain_curve.csv", curve)
    pt = record["pretraining"]
    path = weights.weights_path(cfg.name, weights_dir)
    shown_path = (f"nsr_gym/weights/{path.name}" if path.parent == weights.WEIGHTS_DIR
                  else str(path))
    shown = curve[curve["epoch"].isin(sorted({1, 2, 5, 10, 15, cfg.epochs}))].copy()
    shown["lr"] = shown["lr"].map(lambda v: f"{v:.2e}")
    md = (f"# Pretrained MNIST-1D backbone ({cfg.name})\n\n"
          f"Written by `{meta['command']}` (seed {cfg.seed}, git {meta['git_revision'][:12]}, "
          f"{meta['created_utc']}).\n\n"
          f"A 1D CNN (convolutions {list(cfg.channels)}, kernel {cfg.kernel}, stride 2; trunk "
          f"{list(cfg.hidden)}) trained for {cfg.epochs} epochs on {cfg.samples} MNIST-1D "
          f"signals of the pretraining sample (generator seed {PRETRAIN_SEED}, 80% train / 20% "
          "validation; no task uses them). Held-out accuracy after the last epoch: "
          f"**{pt['final_val_accuracy']:.3f}** (train {pt['final_train_accuracy']:.3f}). The "
          "classifier is then dropped and each layer rescaled to unit-RMS activations on the "
          "pretraining signals (factors "
          f"{', '.join(f'{f:.3g}' for f in pt['unit_rms_factors'])}).\n\n"
          f"{markdown_table(shown)}\n\n"
          f"Weights: `{shown_path}`, {record['bytes']} bytes, sha256 "
          f"`{record['sha256']}`; the full curve is `pretrain_curve.csv`.\n")
    atomic_write_text(out / "pretrain.md", md)
    write_json(out / "manifest.json", meta)
    return md
