"""The real continual learner: a frozen MLP backbone, LoRA adapters through ``peft``, task heads.

Where the backbone's weights come from: a seeded Gaussian initialisation (``backbone_seed``,
scaled by ``1/sqrt(fan_in)``), fixed for the benchmark and frozen. It is a random-features
backbone, deliberately weak for the tasks, so that what the adapters learn is what separates a
trained subspace from a fresh one; ``nsr-gym lora-check`` measures how far a trained head alone
on the frozen features falls behind (the numbers live in ``results/``).

The active subspace is the LoRA factors on every ``Linear`` of the backbone plus a linear head
that maps the backbone's features to the current task's classes. LoRA's ``B`` starts at zero, so
a fresh adapter computes exactly the frozen backbone. Switching subspaces copies factors into
the same preallocated ``peft`` parameters (no module is rebuilt) and clears the Adam state, since
moments estimated for another subspace mean nothing for this one.

Bank payloads hold, per adapted layer, the SVD-compressed factors (``layer{i}.B``: ``(out, k)``,
``layer{i}.A``: ``(k, in)``, with the LoRA scaling folded in) and the head (``head.weight``,
``head.bias``). Loading pads rank ``k < r`` back to ``r`` with zero columns of ``B`` and freshly
drawn rows of ``A``, which leaves the function unchanged but keeps those directions trainable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nsr_gym.bank import compress_lora
from nsr_gym.data import Task
from nsr_gym.learners.base import Learner, UpdateReport


@dataclass(frozen=True)
class TorchLearnerConfig:
    """Settings of the torch backend; the defaults are the registered benchmarks'."""

    hidden: tuple[int, ...] = (64, 32)
    """Widths of the backbone's hidden layers; the last one is the feature dimension."""
    lora_rank: int = 4
    """LoRA rank ``r`` on every backbone ``Linear``."""
    lora_alpha: float = 4.0
    """LoRA ``alpha``; the update is ``(alpha / r) B A``."""
    lr: float = 5e-3
    """Adam learning rate for adapter and head."""
    batch_size: int = 32
    """Training examples per update."""
    probe_size: int = 64
    """Examples in the probe batch whose mean frozen feature is the task embedding."""
    compression_rank: int | None = None
    """Rank budget of the bank's SVD compression (``None``: no budget)."""
    compression_energy: float | None = 0.99
    """Energy threshold of the SVD compression (``None``: keep every nonzero direction)."""
    backbone_seed: int = 0
    """Seed of the frozen backbone's weights; part of the benchmark, not of a run."""
    device: str = "cpu"
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present)."""
    measure_truncation: bool = True
    """Evaluate the compressed subspace at store time to report the truncation gap ``eps``."""
    train_adapters: bool = True
    """``False`` trains the head alone on the frozen features (the "does LoRA matter" control)."""


def resolve_device(device: str) -> torch.device:
    """Map ``"cpu" | "cuda" | "auto"`` to a device, with a clear error when CUDA is missing."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but torch sees no CUDA device; use device='cpu' "
            "or 'auto'."
        )
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'")
    return torch.device(device)


def build_backbone(input_dim: int, hidden: tuple[int, ...], seed: int) -> nn.Sequential:
    """The frozen backbone: ``Linear -> ReLU`` blocks with seeded Gaussian weights, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = input_dim
    for width in hidden:
        lin = nn.Linear(fan_in, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) / fan_in**0.5)
            lin.bias.zero_()
        layers += [lin, nn.ReLU()]
        fan_in = width
    backbone = nn.Sequential(*layers)
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


class TorchLearner(Learner):
    """Frozen backbone + ``peft`` LoRA + per-subspace head, trained with Adam.

    Args:
        tasks: The benchmark's tasks; all must share ``input_dim``.
        config: Backend settings.
    """

    def __init__(self, tasks: list[Task], config: TorchLearnerConfig | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        self.config = cfg = config or TorchLearnerConfig()
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self.device = resolve_device(cfg.device)
        input_dim = tasks[0].input_dim
        if any(t.input_dim != input_dim for t in tasks):
            raise ValueError("all tasks of a torch learner must share the same input dimension")
        self.n_classes = max(t.n_classes for t in tasks)
        backbone = build_backbone(input_dim, cfg.hidden, cfg.backbone_seed)
        targets = [str(i) for i, m in enumerate(backbone) if isinstance(m, nn.Linear)]
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets,
                          lora_dropout=0.0, bias="none")
        self.model = get_peft_model(backbone, lora).to(self.device)
        # (A, B, scaling) per adapted layer, in forward order; these Parameters are never replaced.
        self._lora: list[tuple[nn.Parameter, nn.Parameter, float]] = []
        for name in targets:
            layer = self.model.base_model.model[int(name)]
            self._lora.append((layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                               float(layer.scaling["default"])))
        self.head = nn.Linear(cfg.hidden[-1], self.n_classes).to(self.device)
        params = [p for a, b, _ in self._lora for p in (a, b)] if cfg.train_adapters else []
        params += list(self.head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)

        # Data on the device once; the frozen features of every training input are cached once
        # (under no_grad, not inference_mode, so nothing here is barred from autograd later).
        self._data = [
            tuple(torch.as_tensor(a, device=self.device) for a in (t.x_train, t.y_train, t.x_test, t.y_test))
            for t in tasks
        ]
        with torch.no_grad(), self.model.disable_adapter():
            feats = [self.model(d[0]) for d in self._data]
        # Centre by the mean feature of the whole pool: raw ReLU features of different tasks all
        # point the same way (cosine ~0.9); centred ones separate, and the keys stay stable.
        centre = torch.cat(feats).mean(0)
        self._features = [f - centre for f in feats]
        self.key_dim = int(centre.numel())
        self._gen = torch.Generator()  # data order: batches and probe batches
        self._init_gen = torch.Generator()  # fresh adapters and heads
        self._rank = cfg.lora_rank

    # ------------------------------------------------------------------ subspace management
    def reset(self, rng: np.random.Generator) -> None:
        seeds = rng.integers(0, 2**63 - 1, size=2)
        self._gen.manual_seed(int(seeds[0]))
        self._init_gen.manual_seed(int(seeds[1]))
        self.fresh()

    def _new_A(self, shape: torch.Size) -> torch.Tensor:
        # Kaiming-uniform with a = sqrt(5), as peft and nn.Linear initialise lora_A.
        bound = 1.0 / shape[1] ** 0.5
        return (torch.rand(shape, generator=self._init_gen) * 2 - 1) * bound

    def fresh(self) -> None:
        with torch.no_grad():
            for a, b, _ in self._lora:
                a.copy_(self._new_A(a.shape))
                b.zero_()
            bound = 1.0 / self.head.in_features**0.5
            w = (torch.rand(self.head.weight.shape, generator=self._init_gen) * 2 - 1) * bound
            bias = (torch.rand(self.head.bias.shape, generator=self._init_gen) * 2 - 1) * bound
            self.head.weight.copy_(w)
            self.head.bias.copy_(bias)
        self.optimizer.state.clear()

    def _write_factors(self, payload: dict[str, torch.Tensor], pad_random: bool) -> None:
        """Copy stored factors into the LoRA parameters, padding rank ``k < r`` back to ``r``."""
        with torch.no_grad():
            for i, (a, b, scaling) in enumerate(self._lora):
                bk, ak = payload[f"layer{i}.B"], payload[f"layer{i}.A"]
                k = int(ak.shape[0])
                if k > self._rank or bk.shape[0] != b.shape[0] or ak.shape[1] != a.shape[1]:
                    raise ValueError(
                        f"bank entry layer {i} has factors {tuple(bk.shape)} x {tuple(ak.shape)}, "
                        f"which do not fit this backbone's LoRA ({tuple(b.shape)} x {tuple(a.shape)})"
                    )
                b.zero_()
                b[:, :k] = bk.to(self.device) / scaling
                if pad_random:
                    a.copy_(self._new_A(a.shape))
                else:
                    a.zero_()
                a[:k] = ak.to(self.device)
            self.head.weight.copy_(payload["head.weight"].to(self.device))
            self.head.bias.copy_(payload["head.bias"].to(self.device))

    def load(self, payload: dict[str, torch.Tensor]) -> None:
        self._write_factors(payload, pad_random=True)
        self.optimizer.state.clear()

    def snapshot(self, task_id: int | None = None) -> tuple[dict[str, torch.Tensor], float]:
        cfg = self.config
        payload: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for i, (a, b, scaling) in enumerate(self._lora):
                bk, ak = compress_lora(b.detach().cpu() * scaling, a.detach().cpu(),
                                       rank=cfg.compression_rank, energy=cfg.compression_energy)
                payload[f"layer{i}.B"], payload[f"layer{i}.A"] = bk, ak
            payload["head.weight"] = self.head.weight.detach().cpu().clone()
            payload["head.bias"] = self.head.bias.detach().cpu().clone()
            gap = 0.0
            if cfg.measure_truncation and task_id is not None:
                # eps of THEORY.md: evaluate the compressed subspace, then put the exact one back.
                saved = [(a.clone(), b.clone()) for a, b, _ in self._lora]
                acc_full = self.evaluate(task_id)
                self._write_factors(payload, pad_random=False)
                gap = acc_full - self.evaluate(task_id)
                for (a, b, _), (a0, b0) in zip(self._lora, saved):
                    a.copy_(a0)
                    b.copy_(b0)
        return payload, float(gap)

    # ------------------------------------------------------------------ training and evaluation
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))

    def train(self, task_id: int, n_updates: int) -> UpdateReport:
        x, y, _, _ = self._data[task_id]
        n_classes = self.tasks[task_id].n_classes
        losses: list[float] = []
        skipped = 0
        for _ in range(n_updates):
            idx = torch.randint(len(x), (self.config.batch_size,), generator=self._gen).to(self.device)
            logits = self._logits(x[idx])[:, :n_classes]
            loss = nn.functional.cross_entropy(logits, y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            loss.backward()
            grads_ok = all(p.grad is None or torch.isfinite(p.grad).all()
                           for g in self.optimizer.param_groups for p in g["params"])
            if not grads_ok:
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return UpdateReport(float(np.mean(losses)) if losses else float("nan"), skipped)

    def evaluate(self, task_id: int) -> float:
        _, _, x, y = self._data[task_id]
        n_classes = self.tasks[task_id].n_classes
        with torch.no_grad():
            pred = self._logits(x)[:, :n_classes].argmax(1)
            return float((pred == y).float().mean())

    def embed(self, task_id: int) -> np.ndarray:
        feats = self._features[task_id]
        idx = torch.randperm(len(feats), generator=self._gen)[: self.config.probe_size].to(self.device)
        return feats[idx].mean(0).cpu().numpy().astype(np.float32)

    def close(self) -> None:
        self._data.clear()
        self._features.clear()
