"""The real continual learner: a frozen backbone, LoRA adapters through ``peft``, task heads.

Where the backbone's weights come from: a seeded Gaussian initialisation (``backbone_seed``,
scaled by ``1/sqrt(fan_in)``), fixed for the benchmark and frozen. It is a random-features
backbone, deliberately weak for the tasks, so that what the adapters learn is what separates a
trained subspace from a fresh one; ``nsr-gym lora-check`` measures how far a trained head alone
on the frozen features falls behind (the numbers live in ``results/``). For MNIST-1D's 40-sample
signals, ``backbone="pretrained"`` is instead a small 1D CNN pretrained by ``nsr-gym pretrain``
on signals no task uses and shipped in :mod:`nsr_gym.weights` (loaded only after its sha256
matches); ``backbone="cnn1d"`` is the same CNN with seeded random weights, its control. A CNN's
convolutional stem has no adapter, so the learner runs it once per input at construction and
adapts the ``Linear`` layers above it.

The active subspace is the LoRA factors on every ``Linear`` of the backbone plus a linear head
that maps the backbone's features to the current task's classes. LoRA's ``B`` starts at zero, so
a fresh adapter computes exactly the frozen backbone. Switching subspaces copies factors into
the same preallocated ``peft`` parameters (no module is rebuilt) and clears the Adam state, since
moments estimated for another subspace mean nothing for this one.

Bank payloads hold, per adapted layer, the SVD-compressed factors (``layer{i}.B``: ``(out, k)``,
``layer{i}.A``: ``(k, in)``, with the LoRA scaling folded in) and the head (``head.weight``,
``head.bias``). Loading pads rank ``k < r`` back to ``r`` with zero columns of ``B`` and freshly
drawn rows of ``A``, which leaves the function unchanged but keeps those directions trainable.
Payloads are float32 by default; ``payload_dtype="float16"`` stores them in half precision and
``"auto"`` does so per entry, only where the float16 payload's accuracy on the task's held-out
data is within ``payload_dtype_tolerance`` of the float32 payload's (checked at every snapshot;
:attr:`TorchLearner.last_snapshot` says what was chosen, the kept rank and energy of each layer).
Loading casts any payload to the parameters' float32 before it is unscaled.

Two paths compute the same learner. ``fast=False`` is the straightforward reference: the ``peft``
model's forward, ``loss.backward()`` and ``torch.optim.Adam``. ``fast=True`` (the default) runs
the same arithmetic on the same ``peft`` parameters without ``peft``'s per-call overhead, from
cached frozen activations, with a flat-buffer Adam (:mod:`nsr_gym.learners.fast`); on the MLP
backbone the two agree bit for bit, on the ViT to float32 rounding (``tests/test_fast_path.py``).
Backbones (the default MLP and a ViT-tiny-shaped transformer) live in
:mod:`nsr_gym.learners.backbones`.

Distillation (``distill_weight > 0``) protects the tasks an active subspace already served while
it trains on another one: :meth:`TorchLearner.protect` freezes the subspace's current softmax
outputs (at temperature ``T``) on a few anchor inputs of each protected task, and every update
then adds ``distill_weight * T**2 * KL(teacher || student)`` over those anchors to the
cross-entropy, as in Learning without Forgetting but on the protected tasks' own inputs, since
the subspace's one head serves all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nsr_gym.bank import truncate_lora
from nsr_gym.data import Task
from nsr_gym.learners.backbones import (
    BACKBONES,
    CNN1D,
    build_cnn1d,
    build_mlp,
    build_vit,
    frozen_prefix,
    load_pretrained,
    lora_targets,
)
from nsr_gym.learners.base import Learner, UpdateReport
from nsr_gym.learners.config import (
    BOOL,
    STR,
    AdapterConfig,
    Rule,
    in_range,
    int_at_least,
    is_int,
    setting,
)
from nsr_gym.learners.draws import BatchDraws
from nsr_gym.learners.fast import FastForward, FlatAdam
from nsr_gym.threads import single_threaded

#: Options that only describe the torch learner's network. The analytic backend ignores them, so
#: a registered backbone variant (e.g. ``CyclicSplitDigitsViT``) runs on both backends.
BACKBONE_OPTIONS = ("backbone", "hidden", "vit_patch", "vit_dim", "vit_depth", "vit_heads",
                    "lora_blocks")


#: Values of ``payload_dtype``: what the bank stores of a snapshot.
PAYLOAD_DTYPES = ("float32", "float16", "auto")
#: float16's largest finite value: a payload beyond it stays float32.
_HALF_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True)
class SnapshotInfo:
    """What the latest :meth:`TorchLearner.snapshot` stored, per entry.

    Attributes:
        dtype: ``"float32"`` or ``"float16"``, the payload's dtype.
        ranks: Kept SVD rank of each adapted layer, in forward order.
        energy: Fraction of each layer's ``||dW||_F^2`` the kept directions carry.
        accuracy_float32: Held-out accuracy of the float32 compressed payload (nan: not measured).
        accuracy_float16: Held-out accuracy of the float16 payload (nan: not measured).
    """

    dtype: str
    ranks: tuple[int, ...]
    energy: tuple[float, ...]
    accuracy_float32: float = float("nan")
    accuracy_float16: float = float("nan")


_WIDTHS = Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0
              and all(is_int(w) and w >= 1 for w in v),
              "a non-empty list of layer widths >= 1, e.g. [64, 32]")


@dataclass(frozen=True)
class TorchLearnerConfig(AdapterConfig):
    """Settings of the torch backend (LoRA, optimiser, compression and distillation fields are
    :class:`~nsr_gym.learners.config.AdapterConfig`'s); the defaults are the registered
    benchmarks'."""

    backbone: str = setting("mlp", STR)
    """``"mlp"`` (``hidden`` widths), ``"vit"`` (a ViT-tiny-shaped transformer, ``vit_*``),
    ``"cnn1d"`` (a 1D CNN with seeded random weights, for 40-sample signals) or
    ``"pretrained"`` (that CNN with the weights shipped for the tasks' input width, see
    :mod:`nsr_gym.weights`; ``backbone_seed`` does not apply)."""
    hidden: tuple[int, ...] = setting((64, 32), _WIDTHS)
    """MLP: widths of the hidden layers; the last one is the feature dimension."""
    vit_patch: int = setting(2, int_at_least(1))
    """ViT: patch side in pixels (2: an 8x8 digit is 16 tokens of 4 pixels)."""
    vit_dim: int = setting(32, int_at_least(1))
    """ViT: token width, also the feature dimension."""
    vit_depth: int = setting(12, int_at_least(1))
    """ViT: transformer blocks (ViT-Ti's 12)."""
    vit_heads: int = setting(2, int_at_least(1))
    """ViT: attention heads."""
    lora_blocks: int = setting(2, int_at_least(1))
    """ViT: LoRA on ``qkv``, ``proj``, ``fc1``, ``fc2`` of the top ``lora_blocks`` blocks (the
    MLP has LoRA on every ``Linear``)."""
    backbone_seed: int = setting(0, int_at_least(0))
    """Seed of the frozen backbone's weights; part of the benchmark, not of a run."""
    train_adapters: bool = setting(True, BOOL)
    """``False`` trains the head alone on the frozen features (the "does LoRA matter" control)."""
    fast: bool = setting(True, BOOL)
    """Hand-written forward on cached frozen activations and a flat Adam (same function and
    parameters as ``peft``); ``False`` runs the straightforward ``peft`` path, the reference."""
    payload_dtype: str = setting("float32", Rule(lambda v: v in PAYLOAD_DTYPES,
                                                 f"one of {PAYLOAD_DTYPES}"))
    """dtype of the bank payloads (factors and head; keys stay float32): ``"float32"`` (the
    registered benchmarks'), ``"float16"`` (half the bytes), or ``"auto"``: float16 for an entry
    whose float16 payload's held-out accuracy is within ``payload_dtype_tolerance`` of its float32
    payload's, float32 otherwise (two extra evaluations per snapshot)."""
    payload_dtype_tolerance: float = setting(0.01, in_range(lambda x: 0 <= x <= 1, "in [0, 1]"))
    """``"auto"``: most accuracy (a fraction: 0.01 = 1 point) float16 may cost an entry."""


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
    """The frozen MLP backbone (see :func:`nsr_gym.learners.backbones.build_mlp`)."""
    return build_mlp(input_dim, hidden, seed)


def make_backbone(input_dim: int, cfg: TorchLearnerConfig) -> tuple[nn.Module, int]:
    """The frozen backbone ``cfg`` names and its feature dimension.

    Raises:
        ValueError: for an unknown backbone, or ``"pretrained"`` with no weights for
            ``input_dim``.
        nsr_gym.weights.WeightsError: when the shipped weights fail their checksum.
    """
    if cfg.backbone == "mlp":
        return build_mlp(input_dim, cfg.hidden, cfg.backbone_seed), cfg.hidden[-1]
    if cfg.backbone == "vit":
        return build_vit(input_dim, cfg.vit_patch, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads,
                         cfg.backbone_seed), cfg.vit_dim
    if cfg.backbone in ("cnn1d", "pretrained"):
        net = (build_cnn1d(input_dim, cfg.backbone_seed) if cfg.backbone == "cnn1d"
               else load_pretrained(input_dim))
        return net, net.feature_dim
    raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {BACKBONES}")


def add_lora(backbone: nn.Module, targets: list[str], cfg: AdapterConfig) -> nn.Module:
    """``backbone`` wrapped by ``peft`` with rank-``cfg.lora_rank`` LoRA (no dropout, no bias) on
    the named ``targets``; the backbone's own weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets,
                      lora_dropout=0.0, bias="none")
    return get_peft_model(backbone, lora)


class TorchLearner(Learner):
    """Frozen backbone + ``peft`` LoRA + per-subspace head, trained with Adam.

    ``config.fast`` picks the fast path or the ``peft`` reference path (same function, same
    parameters, same random draws).

    Every public method (and a subclass's override of one) runs under the env's thread policy
    (:mod:`nsr_gym.threads`): one torch intra-op thread by default, always one in a forked
    worker, and the caller's count restored on return.

    Args:
        tasks: The benchmark's tasks; all must share ``input_dim``.
        config: Backend settings.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _apply_thread_policy(cls)

    def __init__(self, tasks: list[Task], config: TorchLearnerConfig | None = None) -> None:
        self.config = cfg = config or TorchLearnerConfig()
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self.device = resolve_device(cfg.device)
        input_dim = tasks[0].input_dim
        if any(t.input_dim != input_dim for t in tasks):
            raise ValueError("all tasks of a torch learner must share the same input dimension")
        self.n_classes = max(t.n_classes for t in tasks)
        backbone, feature_dim = make_backbone(input_dim, cfg)
        # A CNN's stem has no adapter: it runs once per input below, and LoRA adapts its trunk.
        self._stem = backbone.stem.to(self.device) if isinstance(backbone, CNN1D) else None
        if isinstance(backbone, CNN1D):
            backbone = backbone.trunk
        targets = lora_targets(backbone, cfg.lora_blocks)
        self.model = add_lora(backbone, targets, cfg).to(self.device)
        # (A, B, scaling) per adapted layer, in forward order; these Parameters are never replaced.
        self._lora: list[tuple[nn.Parameter, nn.Parameter, float]] = []
        inner = self.model.base_model.model
        for name in targets:
            layer = inner.get_submodule(name)
            self._lora.append((layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                               float(layer.scaling["default"])))
        self.head = nn.Linear(feature_dim, self.n_classes).to(self.device)
        params = [p for a, b, _ in self._lora for p in (a, b)] if cfg.train_adapters else []
        params += list(self.head.parameters())
        self.optimizer: torch.optim.Adam | FlatAdam
        if cfg.fast:
            self.optimizer = FlatAdam(params, lr=cfg.lr)
            self._fast = FastForward(inner, frozen_prefix(backbone, cfg.lora_blocks), self.head)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr)

        # Data on the device once; the frozen features of every training input are cached once
        # (under no_grad, not inference_mode, so nothing here is barred from autograd later).
        self._data = [(self._inputs(t.x_train), torch.as_tensor(t.y_train, device=self.device),
                       self._inputs(t.x_test), torch.as_tensor(t.y_test, device=self.device))
                      for t in tasks]
        with torch.no_grad(), self.model.disable_adapter():
            if cfg.fast:
                # Frozen activations entering the lowest adapted layer, per task: (train, test);
                # the frozen features continue from them (the same operations as a full pass).
                self._cache = [(self._fast.prefix(d[0]), self._fast.prefix(d[2]))
                               for d in self._data]
                feats = [self._fast.frozen_features(c[0]) for c in self._cache]
                self._n_test = [np.float32(len(d[3])) for d in self._data]
            else:
                feats = [self.model(d[0]) for d in self._data]
        self._init_probe_state(feats)

    def _inputs(self, x: np.ndarray) -> torch.Tensor:
        """A task's inputs on the device, through the CNN stem when there is one (frozen, so
        computed once)."""
        out = torch.as_tensor(x, device=self.device)
        if self._stem is None:
            return out
        with torch.no_grad():
            return self._stem(out).contiguous()

    def _init_probe_state(self, feats: list[torch.Tensor]) -> None:
        """The state set after the backbone, shared with subclasses: task keys from each task's
        frozen features ``feats`` (``(n_t, feature_dim)`` per task), the generators and the
        (empty) distillation targets."""
        # Centre by the mean feature of the whole pool: raw ReLU features of different tasks all
        # point the same way (cosine ~0.9); centred ones separate, and the keys stay stable.
        centre = torch.cat(feats).mean(0)
        self._features = [f - centre for f in feats]
        self.key_dim = int(centre.numel())
        # Distillation targets set by protect(): (anchor inputs, n_classes, teacher probs) per
        # group of protected tasks with the same number of classes.
        self._teacher: list[tuple[tuple[torch.Tensor, ...], int, torch.Tensor]] = []
        self._gen = torch.Generator()  # data order: batches and probe batches
        self._draws = BatchDraws(self._gen, self.config.batch_size)  # batches, read ahead
        self._init_gen = torch.Generator()  # fresh adapters and heads
        self._rank = self.config.lora_rank
        self.last_snapshot: SnapshotInfo | None = None  # set by every snapshot()

    # ------------------------------------------------------------------ subspace management
    def reset(self, rng: np.random.Generator) -> None:
        seeds = rng.integers(0, 2**63 - 1, size=2)
        self._gen.manual_seed(int(seeds[0]))
        self._draws.discard()
        self._init_gen.manual_seed(int(seeds[1]))
        self._teacher = []
        self.fresh()

    def _draw_uniform(self, t: torch.Tensor, bound: float) -> None:
        """Fill ``t`` with ``U(-bound, bound)`` from the init generator, in place: the values of
        ``(torch.rand(t.shape, generator) * 2 - 1) * bound`` (the same draw and the same three
        operations; a contiguous CPU tensor draws straight into its storage)."""
        if t.device.type == "cpu" and t.is_contiguous():
            t.uniform_(0, 1, generator=self._init_gen)
        else:  # the generator lives on the CPU
            t.copy_(torch.rand(t.shape, generator=self._init_gen))
        t.mul_(2).sub_(1).mul_(bound)

    def _new_A(self, a: torch.Tensor) -> None:
        # Kaiming-uniform with a = sqrt(5), as peft and nn.Linear initialise lora_A.
        self._draw_uniform(a, 1.0 / a.shape[1] ** 0.5)

    def fresh(self) -> None:
        with torch.no_grad():
            for a, b, _ in self._lora:
                self._new_A(a)
                b.zero_()
            bound = 1.0 / self.head.in_features**0.5
            self._draw_uniform(self.head.weight, bound)
            self._draw_uniform(self.head.bias, bound)
        self._reset_optimizer()

    def _reset_optimizer(self) -> None:
        """A new active subspace: Adam's moments for the old one mean nothing for it."""
        if isinstance(self.optimizer, FlatAdam):
            self.optimizer.reset()
        else:
            self.optimizer.state.clear()

    def _write_factors(self, payload: dict[str, torch.Tensor], pad_random: bool) -> None:
        """Copy stored factors into the LoRA parameters, padding rank ``k < r`` back to ``r``
        (``A``'s padding rows drawn fresh with ``pad_random``, else zero; ``B``'s columns zero).
        Every write is in place and touches each element once: a load is a switch's main cost."""
        with torch.no_grad():
            for i, (a, b, scaling) in enumerate(self._lora):
                bk, ak = payload[f"layer{i}.B"], payload[f"layer{i}.A"]
                k = int(ak.shape[0])
                if k > self._rank or bk.shape[0] != b.shape[0] or ak.shape[1] != a.shape[1]:
                    raise ValueError(
                        f"bank entry layer {i} has factors {tuple(bk.shape)} x {tuple(ak.shape)}, "
                        "which do not fit this backbone's LoRA "
                        f"({tuple(b.shape)} x {tuple(a.shape)})"
                    )
                if bk.ndim != 2 or ak.ndim != 2 or bk.shape[1] != k:
                    raise ValueError(f"bank entry layer {i} has B {tuple(bk.shape)} and A "
                                     f"{tuple(ak.shape)}: their ranks must agree")
                if pad_random:  # the whole A is drawn (the generator advances as before)
                    self._new_A(a)
                if k < self._rank:
                    b[:, k:].zero_()
                    if not pad_random:
                        a[k:].zero_()
                b_k = b if k == self._rank else b[:, :k]
                # Any stored dtype (float16 payloads) is cast up before it is unscaled.
                b_k.copy_(bk)
                if scaling != 1.0:  # dividing by 1.0 is exact: skipped
                    b_k.div_(scaling)
                (a if k == self._rank else a[:k]).copy_(ak)
            self.head.weight.copy_(payload["head.weight"])
            self.head.bias.copy_(payload["head.bias"])

    def load(self, payload: dict[str, torch.Tensor]) -> None:
        self._write_factors(payload, pad_random=True)
        self._reset_optimizer()

    def snapshot(self, task_id: int | None = None) -> tuple[dict[str, torch.Tensor], float]:
        """Compress the active subspace (SVD per layer) and cast it to ``payload_dtype``; see
        :meth:`Learner.snapshot`. :attr:`last_snapshot` records the dtype, ranks and energies.
        ``"auto"`` without a ``task_id`` (nothing to check on) stores float32."""
        cfg = self.config
        payload: dict[str, torch.Tensor] = {}
        ranks, energy = [], []
        with torch.no_grad():
            for i, (a, b, scaling) in enumerate(self._lora):
                cut = truncate_lora(b.detach().cpu() * scaling, a.detach().cpu(),
                                    rank=cfg.compression_rank, energy=cfg.compression_energy)
                payload[f"layer{i}.B"], payload[f"layer{i}.A"] = cut.B, cut.A
                ranks.append(cut.rank)
                energy.append(cut.energy)
            payload["head.weight"] = self.head.weight.detach().cpu().clone()
            payload["head.bias"] = self.head.bias.detach().cpu().clone()
            half = half_payload(payload) if cfg.payload_dtype != "float32" else None
            gap, acc32, acc16 = 0.0, float("nan"), float("nan")
            check = cfg.payload_dtype == "auto" and half is not None and task_id is not None
            if task_id is not None and (cfg.measure_truncation or check):
                # eps of THEORY.md: evaluate the compressed subspace, then put the exact one back.
                saved = [(a.clone(), b.clone()) for a, b, _ in self._lora]
                acc_full = self.evaluate(task_id)
                self._write_factors(payload, pad_random=False)
                acc32 = stored = self.evaluate(task_id)
                if half is not None and (check or cfg.payload_dtype == "float16"):
                    self._write_factors(half, pad_random=False)
                    acc16 = self.evaluate(task_id)
                    if not check or acc32 - acc16 <= cfg.payload_dtype_tolerance:
                        stored = acc16
                    else:
                        half = None  # float16 costs this entry too much: it stays float32
                gap = acc_full - stored if cfg.measure_truncation else 0.0
                for (a, b, _), (a0, b0) in zip(self._lora, saved, strict=True):
                    a.copy_(a0)
                    b.copy_(b0)
            elif cfg.payload_dtype == "auto":
                half = None
        if half is not None:
            payload = half
        self.last_snapshot = SnapshotInfo("float32" if half is None else "float16", tuple(ranks),
                                          tuple(energy), float(acc32), float(acc16))
        return payload, float(gap)

    def payload_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Payload name -> shape, ``None`` where the stored rank ``k`` goes (``1 <= k <= r``):
        ``layer{i}.B`` ``(out, k)``, ``layer{i}.A`` ``(k, in)``, ``head.weight``, ``head.bias``."""
        shapes: dict[str, tuple[int | None, ...]] = {}
        for i, (a, b, _) in enumerate(self._lora):  # A (r, in), B (out, r)
            shapes[f"layer{i}.B"] = (int(b.shape[0]), None)
            shapes[f"layer{i}.A"] = (None, int(a.shape[1]))
        shapes["head.weight"] = tuple(self.head.weight.shape)
        shapes["head.bias"] = tuple(self.head.bias.shape)
        return shapes

    def protect(self, task_ids: Sequence[int]) -> None:
        """Distil toward the active subspace as it is now on ``task_ids``' anchor inputs during
        the coming updates (see the module docstring); empty, or ``distill_weight == 0``: off.
        ``task_ids`` run oldest first; the last ``distill_max_tasks`` are protected.

        Draws no random numbers, so turning distillation on leaves the data order unchanged.
        """
        ids = list(dict.fromkeys(int(t) for t in task_ids))  # unique, in the order given
        bad = [t for t in ids if not 0 <= t < self.n_tasks]
        if bad:
            raise ValueError(f"cannot protect task ids {bad}: this learner has tasks "
                             f"0..{self.n_tasks - 1}")
        self._teacher = []
        if self.config.distill_weight == 0 or not ids:
            return
        groups: dict[int, list[int]] = {}
        for t in sorted(ids[-self.config.distill_max_tasks:]):
            groups.setdefault(self.tasks[t].n_classes, []).append(t)
        with torch.no_grad():
            for n_classes, members in groups.items():
                anchors = self._anchor_inputs(members)
                logits = self._anchor_logits(anchors)[:, :n_classes]
                probs = torch.softmax(logits / self.config.distill_temperature, 1)
                self._teacher.append((anchors, n_classes, probs))

    def _anchor_inputs(self, task_ids: list[int]) -> tuple[torch.Tensor, ...]:
        """The first ``distill_anchors`` training inputs of each task, concatenated (the fast
        path's cached activations of them, or the raw inputs on the reference path)."""
        n = self.config.distill_anchors
        if self.config.fast:
            parts = [self._cache[t][0] for t in task_ids]
            return tuple(torch.cat([p[i][:n] for p in parts]) for i in range(len(parts[0])))
        return (torch.cat([self._data[t][0][:n] for t in task_ids]),)

    def _anchor_logits(self, anchors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits of the active subspace on anchor inputs, with autograd."""
        if self.config.fast:
            return self._fast.logits_with_grad(*anchors)
        return self._logits(anchors[0])

    def _distill_loss(self) -> torch.Tensor:
        """``T**2 * KL(teacher || student)``, averaged over every protected anchor (0-d)."""
        temperature = self.config.distill_temperature
        total, count = None, 0
        for anchors, n_classes, teacher in self._teacher:
            logits = self._anchor_logits(anchors)[:, :n_classes]
            log_student = torch.log_softmax(logits / temperature, 1)
            kl = nn.functional.kl_div(log_student, teacher, reduction="sum")
            total = kl if total is None else total + kl
            count += len(teacher)
        return total * (temperature**2 / count)

    # ------------------------------------------------------------------ training and evaluation
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))

    def train(self, task_id: int, n_updates: int) -> UpdateReport:
        if self.config.fast:
            return self._train_fast(task_id, n_updates)
        x, y, _, _ = self._data[task_id]
        n_classes = self.tasks[task_id].n_classes
        losses: list[float] = []
        skipped = 0
        for _ in range(n_updates):
            idx = self._draws.next(len(x)).to(self.device)
            logits = self._logits(x[idx])[:, :n_classes]
            loss = nn.functional.cross_entropy(logits, y[idx])
            if self._teacher:
                loss = loss + self.config.distill_weight * self._distill_loss()
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

    def _train_fast(self, task_id: int, n_updates: int) -> UpdateReport:
        """:meth:`train` on the fast path: same batches, same arithmetic, same skips."""
        cached = self._cache[task_id][0]
        y = self._data[task_id][1]
        n_classes = self.tasks[task_id].n_classes
        opt, params, fast = self.optimizer, self.optimizer.params, self._fast
        n, draws, device = len(y), self._draws, self.device
        by_hand, grads, adapters = not fast.is_vit, opt.grad_views, self.config.train_adapters
        distill, weight = bool(self._teacher), self.config.distill_weight
        losses: list[float] = []
        skipped = 0
        for _ in range(n_updates):
            idx = draws.next(n).to(device)
            yb = y.index_select(0, idx)
            if by_hand:  # the MLP: gradients by hand, equal to autograd's (see FastForward)
                xb = cached[0].index_select(0, idx)
                loss = fast.mlp_loss_and_grads(xb, yb, n_classes, grads, adapters)
                if distill:  # its term by autograd, added to the hand-written gradients
                    term = weight * self._distill_loss()
                    torch._foreach_add_(grads, torch.autograd.grad(term, params))
                    loss = loss + term.detach()
            else:
                batch = [c.index_select(0, idx) for c in cached]
                loss = nn.functional.cross_entropy(fast.logits(*batch)[:, :n_classes], yb)
                if distill:
                    loss = loss + weight * self._distill_loss()
            value = loss.item()
            if not math.isfinite(value):
                skipped += 1
                continue
            if not opt.step(None if by_hand else torch.autograd.grad(loss, params)):
                skipped += 1
                continue
            losses.append(value)
        # np.mean of one value is that value; skip its overhead on the common one-update step
        mean = losses[0] if len(losses) == 1 else float(np.mean(losses)) if losses else float("nan")
        return UpdateReport(mean, skipped)

    def evaluate(self, task_id: int) -> float:
        if self.config.fast:
            n_classes = self.tasks[task_id].n_classes
            pred = self._fast.predict(self._cache[task_id][1], n_classes)
            correct = int((pred == self._data[task_id][3]).sum())
            # float32 division, as the reference's float32 mean of 0/1 values
            return float(np.float32(correct) / self._n_test[task_id])
        _, _, x, y = self._data[task_id]
        n_classes = self.tasks[task_id].n_classes
        with torch.no_grad():
            pred = self._logits(x)[:, :n_classes].argmax(1)
            return float((pred == y).float().mean())

    def embed(self, task_id: int) -> np.ndarray:
        feats = self._features[task_id]
        self._draws.settle()  # the probe draws from the stream the batches left
        idx = torch.randperm(len(feats), generator=self._gen)[: self.config.probe_size]
        idx = idx.to(self.device)
        return feats[idx].mean(0).cpu().numpy().astype(np.float32)

    # Pickling copies each tensor on its own: FlatAdam re-points the parameters into a new flat
    # buffer as it is restored, and the fast path's aliases of them are rebuilt here.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_fast", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.config.fast:
            inner = self.model.base_model.model
            self._fast = FastForward(inner, frozen_prefix(inner, self.config.lora_blocks),
                                     self.head)

    def close(self) -> None:
        self._data.clear()
        self._features.clear()
        if self.config.fast:
            self._cache.clear()


#: The learner's entry points, each run under :func:`nsr_gym.threads.single_threaded` (the
#: private helpers run inside them).
_THREADED = ("__init__", "reset", "fresh", "load", "snapshot", "protect", "train", "evaluate",
             "embed")


def _apply_thread_policy(cls: type) -> None:
    """Wrap the :data:`_THREADED` methods ``cls`` defines itself (inherited ones already are)."""
    for name in _THREADED:
        method = cls.__dict__.get(name)
        if method is not None and not getattr(method, "__wrapped_by_env_threads__", False):
            setattr(cls, name, single_threaded(method))


_apply_thread_policy(TorchLearner)


def half_payload(payload: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``payload`` in float16, or None where a value lies beyond float16's range."""
    if any(float(t.abs().max()) > _HALF_MAX for t in payload.values() if t.numel()):
        return None
    return {name: t.to(torch.float16) for name, t in payload.items()}
