"""A continual learner on a pretrained torchvision backbone loaded from a local weights file.

:class:`PretrainedLearner` is a :class:`~nsr_gym.learners.torch_learner.TorchLearner` whose frozen
backbone is torchvision's ``vit_b_16`` or ``resnet18`` instead of the random-features MLP. Only
the construction differs: switching, compression into bank payloads (``layer{i}.B``,
``layer{i}.A``, ``head.*``), training and probing are TorchLearner's own code, run on its
reference (``peft``) path. Evaluation is chunked so that large test sets fit in memory.

Weights are a state dict read with ``torch.load(path, weights_only=True)`` (no pickle code runs):
torchvision's own files, e.g. ``vit_b_16-c867db91.pth`` or ``resnet18-f37072fd.pth``
(:data:`ARCHITECTURES` names the URL of each). Nothing is downloaded; a missing file raises one
:class:`MissingWeightsError` that says which file to put where. ``weights=None`` is refused unless
``random_init=True`` (a seeded random backbone of the same shape, for speed and memory runs).

Which layers get LoRA, and why:

* ``vit_b_16``: the query and value projections of the self-attention of all 12 blocks
  (24 ``Linear`` layers of ``768 x 768``), as in LoRA (Hu et al., 2021), which found that
  adapting ``W_q`` and ``W_v`` gives the best accuracy for a fixed parameter budget; this is
  also the geometry of the paper's 0.29 MB per task. torchvision fuses q, k and v into one
  ``in_proj_weight`` of ``nn.MultiheadAttention``, which ``peft`` cannot adapt in part, so each
  block's attention is replaced by :class:`SplitAttention`, the same function with separate
  ``q``, ``k``, ``v`` ``Linear`` layers holding the same weights (tested to agree).
* ``resnet18``: the four 3x3 convolutions of ``layer4`` (the last stage, 512 channels). The top
  stage holds the most task-specific features; the lower stages (edges, textures) transfer
  across tasks as they are, stay frozen, and keep the adapter small. ``peft`` adapts a conv as
  ``B (out, r, 1, 1) @ A (r, in, 3, 3)``; the learner sees them as ``B (out, r)`` and
  ``A (r, in * 9)`` views, so the bank compresses the exact ``dW`` of each conv.

Inputs are :class:`~nsr_gym.data.Task` rows of ``3 * s * s`` floats in ``[0, 1]``
(:mod:`nsr_gym.paper_data` writes ``s = 32``); the backbone wrapper reshapes them, resizes to the
architecture's input size, and applies ImageNet normalisation. The backbone runs in ``eval``
mode throughout (frozen BatchNorm statistics).

Shared with TorchLearner: the settings (:class:`~nsr_gym.learners.config.AdapterConfig`), the
``peft`` wrapping (:func:`~nsr_gym.learners.torch_learner.add_lora`) and the probe state
(``TorchLearner._init_probe_state``); only the backbone, its 2-D factor views and the chunked
data set-up are this class's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nsr_gym.data import Task
from nsr_gym.learners.config import AdapterConfig, override
from nsr_gym.learners.torch_learner import (
    TorchLearner,
    TorchLearnerConfig,
    add_lora,
    resolve_device,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(FileNotFoundError):
    """The backbone's weights file is missing or does not fit the architecture."""


# ----------------------------------------------------------------------------- ViT attention


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, self-attention) with separate q, k, v ``Linear``s.

    Built from an existing module; computes the same function, so ``peft`` can adapt ``q`` and
    ``v`` alone. Called as torchvision's ``EncoderBlock`` calls its attention:
    ``out, _ = attn(x, x, x, need_weights=False)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or mha.in_proj_weight is None:
            raise ValueError(
                "SplitAttention needs a batch-first MultiheadAttention with a fused in_proj"
            )
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        self.q, self.k, self.v = (
            nn.Linear(d, d, bias=mha.in_proj_bias is not None) for _ in range(3)
        )
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(mha.in_proj_weight[i * d : (i + 1) * d])
                if lin.bias is not None:
                    lin.bias.copy_(mha.in_proj_bias[i * d : (i + 1) * d])
        self.out_proj = mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        **_: object,
    ) -> tuple[torch.Tensor, None]:
        n, t, d = query.shape
        h = self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, -1, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q(query)),
            heads(self.k(key)),
            heads(self.v(value)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d)), None


def split_vit_attention(vit: nn.Module) -> list[str]:
    """Replace every encoder block's attention of a torchvision ``VisionTransformer`` by
    :class:`SplitAttention`; returns the names of the ``q`` and ``v`` layers (the LoRA targets)."""
    targets = []
    for name, layer in vit.encoder.layers.named_children():
        layer.self_attention = SplitAttention(layer.self_attention)
        targets += [
            f"encoder.layers.{name}.self_attention.q",
            f"encoder.layers.{name}.self_attention.v",
        ]
    return targets


def resnet_layer4_convs(net: nn.Module) -> list[str]:
    """Names of the 3x3 convolutions of a torchvision ResNet's last stage."""
    return [f"layer4.{i}.{c}" for i in range(len(net.layer4)) for c in ("conv1", "conv2")]


# ----------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Architecture:
    """How to build one torchvision backbone and where it gets LoRA.

    Attributes:
        build: Builds the network with random weights (``weights=None``).
        prepare: Strips the classifier and rewires the net; returns the LoRA target names.
        feature_dim: Width of the features the heads read.
        image_size: Side of the square input the net expects.
        weights_file: File name of torchvision's ImageNet weights.
        url: Where that file is published.
    """

    build: Callable[[], nn.Module]
    prepare: Callable[[nn.Module], list[str]]
    feature_dim: int
    image_size: int
    weights_file: str
    url: str


def _prepare_vit(net: nn.Module) -> list[str]:
    net.heads = nn.Identity()
    return split_vit_attention(net)


def _prepare_resnet(net: nn.Module) -> list[str]:
    net.fc = nn.Identity()
    return resnet_layer4_convs(net)


def _vit_b_16() -> nn.Module:
    from torchvision.models import vit_b_16

    return vit_b_16(weights=None)


def _resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


#: Backbones by name. Tests add small ones built from the same torchvision classes.
ARCHITECTURES: dict[str, Architecture] = {
    "vit_b_16": Architecture(
        _vit_b_16,
        _prepare_vit,
        768,
        224,
        "vit_b_16-c867db91.pth",
        "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
    ),
    "resnet18": Architecture(
        _resnet18,
        _prepare_resnet,
        512,
        224,
        "resnet18-f37072fd.pth",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ),
}


def load_state_dict(path: str | os.PathLike, arch: str) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; unwrap ``{"state_dict": ...}`` or
    ``{"model": ...}`` and a ``module.`` prefix (DataParallel checkpoints)."""
    spec = ARCHITECTURES[arch]
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError(
            f"the {arch} backbone needs its weights file {p}, which does not exist; nsr-gym never "
            f"downloads it. Put torchvision's {spec.weights_file} ({spec.url}) at that path, or "
            f"pass random_init=True for a random backbone of the same shape."
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise MissingWeightsError(
            f"{p} could not be read as a torch state dict ({type(exc).__name__}: "
            f"{str(exc)[:200]}); put torchvision's {spec.weights_file} ({spec.url}) there"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise MissingWeightsError(f"{p} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


class ImageBackbone(nn.Module):
    """Rows of ``3 * s * s`` floats in ``[0, 1]`` -> resize -> ImageNet normalisation -> ``net``."""

    def __init__(self, net: nn.Module, input_side: int, image_size: int) -> None:
        super().__init__()
        self.net, self.input_side, self.image_size = net, int(input_side), int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 3, self.input_side, self.input_side)
        if self.input_side != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return self.net((x - self.mean) / self.std)


def build_pretrained_backbone(
    arch: str,
    weights: str | os.PathLike | None,
    input_side: int,
    random_init: bool = False,
    seed: int = 0,
) -> tuple[ImageBackbone, list[str]]:
    """The frozen backbone and the names (inside it) of the layers that get LoRA."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown backbone architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    spec = ARCHITECTURES[arch]
    if weights is None and not random_init:
        raise MissingWeightsError(
            f"the {arch} backbone needs weights=<path of {spec.weights_file}> ({spec.url}); "
            "pass random_init=True only for speed and memory runs on a random backbone"
        )
    # torchvision initialises from the global RNG; fork it so the build is seeded and leaves the
    # caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build()
    if weights is not None:
        state = load_state_dict(weights, arch)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise MissingWeightsError(
                f"{weights} does not fit torchvision's {arch}: {err}"
            ) from None
    targets = spec.prepare(net)
    backbone = ImageBackbone(net, input_side, spec.image_size)
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval(), [f"net.{t}" for t in targets]


# ----------------------------------------------------------------------------- the learner


@dataclass(frozen=True)
class PretrainedConfig(AdapterConfig):
    """Settings of :class:`PretrainedLearner`: :class:`~nsr_gym.learners.config.AdapterConfig`'s
    (four with other defaults, below) and the backbone's and evaluation's own."""

    lr: float = override(AdapterConfig, "lr", 1e-3)
    """Adam learning rate for adapters and head (below the small backbones' 5e-3)."""
    device: str = override(AdapterConfig, "device", "auto")
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present, the default here)."""
    distill_anchors: int = override(AdapterConfig, "distill_anchors", 32)
    """Anchor images per protected task; each update runs the backbone on all of them, so this
    is far below the small backbones' 256."""
    distill_max_tasks: int = override(AdapterConfig, "distill_max_tasks", 4)
    """Protect at most this many tasks, the most recently served."""
    arch: str = "vit_b_16"
    """A key of :data:`ARCHITECTURES`."""
    weights: str | None = None
    """Path of the backbone's state dict (torchvision's file); required unless ``random_init``."""
    random_init: bool = False
    """Allow ``weights=None``: a seeded random backbone (speed and memory runs only)."""
    embed_pool: int = 512
    """Training examples per task whose frozen features are cached for probing."""
    eval_size: int | None = 1000
    """Test examples per task used by ``evaluate`` (a fixed seeded subset); ``None``: all."""
    eval_batch_size: int = 256
    """Chunk size of evaluation and feature caching."""
    seed: int = 0
    """Seed of the random backbone (``random_init``) and of the fixed evaluation subsets."""


def check_pretrained_config(pcfg: PretrainedConfig) -> None:
    """Refuse settings that break their field's rule or a bound of
    :data:`nsr_gym.validation.LEARNER_LIMITS` (e.g. ``lora_rank=2_000_000``), before anything is
    built or allocated.

    Raises:
        ValueError: listing every bad setting and what it would cost.
    """
    from nsr_gym.learners.config import option_problems
    from nsr_gym.validation import learner_limit_problems

    values = {f.name: getattr(pcfg, f.name) for f in fields(pcfg)}
    problems = option_problems(PretrainedConfig, values) + learner_limit_problems(values)
    ints = ("embed_pool", "eval_batch_size", "seed")
    problems += [f"{n} must be an integer >= {int(n != 'seed')} (got {values[n]!r})" for n in ints
                 if type(values[n]) is not int or values[n] < int(n != "seed")]
    if values["eval_size"] is not None and (type(values["eval_size"]) is not int
                                            or values["eval_size"] < 1):
        problems.append(f"eval_size must be None or an integer >= 1 (got {values['eval_size']!r})")
    if problems:
        raise ValueError("invalid pretrained learner settings: " + "; ".join(problems))


def check_lora_targets(backbone: nn.Module, targets: list[str], rank: int) -> None:
    """Every target is a ``Linear`` or ``Conv2d`` of ``backbone`` and ``rank`` fits each one
    (at most ``min(out, in)``, ``in`` counting a conv's kernel), checked before peft allocates.

    Raises:
        ValueError: naming the target and the problem.
    """
    for name in targets:
        try:
            layer = backbone.get_submodule(name)
        except AttributeError:
            raise ValueError(f"LoRA target {name} is not a module of the backbone") from None
        if isinstance(layer, nn.Linear):
            out, inp = layer.out_features, layer.in_features
        elif isinstance(layer, nn.Conv2d):
            out = layer.out_channels
            inp = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            raise ValueError(f"LoRA target {name} is a {type(layer).__name__}; only Linear and "
                             "Conv2d layers can be adapted")
        if rank > min(out, inp):
            raise ValueError(f"lora_rank={rank} is above min(out, in) = {min(out, inp)} of "
                             f"{name}: it adds no directions and costs rank x (in + out) = "
                             f"{rank * (out + inp) * 4 / 2**20:.1f} MiB per layer and bank entry")


class PretrainedLearner(TorchLearner):
    """Frozen torchvision backbone + ``peft`` LoRA + per-subspace head (see the module docstring).

    Args:
        tasks: Tasks whose rows are ``3 * s * s`` images in ``[0, 1]`` (all the same ``s``).
        config: Settings.
    """

    #: ViT-B/16 and ResNet-18 kernels are large enough for torch's intra-op threads to pay: the
    #: env's one-thread policy (:mod:`nsr_gym.threads`) leaves this learner at torch's own count.
    own_threads = True

    def __init__(self, tasks: list[Task], config: PretrainedConfig | None = None) -> None:
        self.pretrained_config = pcfg = config or PretrainedConfig()
        check_pretrained_config(pcfg)
        # TorchLearner's methods read the shared fields; ``fast=False`` is its reference path.
        shared = {f.name: getattr(pcfg, f.name) for f in fields(AdapterConfig)}
        self.config = TorchLearnerConfig(**{**shared, "device": "cpu", "fast": False})
        self.tasks, self.n_tasks = tasks, len(tasks)
        self.device = resolve_device(pcfg.device)
        input_dim = tasks[0].input_dim
        side = int(round((input_dim / 3) ** 0.5))
        if 3 * side * side != input_dim or any(t.input_dim != input_dim for t in tasks):
            raise ValueError(
                f"PretrainedLearner needs every task's rows to be 3 x s x s images "
                f"of one size; got input_dim {[t.input_dim for t in tasks]}"
            )
        self.n_classes = max(t.n_classes for t in tasks)
        backbone, targets = build_pretrained_backbone(
            pcfg.arch, pcfg.weights, side, pcfg.random_init, pcfg.seed
        )
        check_lora_targets(backbone, targets, pcfg.lora_rank)
        self.lora_targets = targets
        self.model = add_lora(backbone, targets, pcfg).to(self.device).eval()
        # (A, B, scaling) per adapted layer as 2-D views: conv factors (r, in, kh, kw) and
        # (out, r, 1, 1) are seen as (r, in * kh * kw) and (out, r), which is the exact dW.
        self._lora = []
        params: list[nn.Parameter] = []
        inner = self.model.base_model.model
        for name in targets:
            layer = inner.get_submodule(name)
            if not hasattr(layer, "lora_A"):
                raise ValueError(f"peft did not adapt {name} ({type(layer).__name__}); the "
                                 "LoRA targets must be Linear or Conv2d layers")
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            params += [a, b]
            self._lora.append(
                (
                    a.data.view(a.shape[0], -1),
                    b.data.view(b.shape[0], -1),
                    float(layer.scaling["default"]),
                )
            )
        feature_dim = ARCHITECTURES[pcfg.arch].feature_dim
        self.head = nn.Linear(feature_dim, self.n_classes).to(self.device)
        self.optimizer = torch.optim.Adam(params + list(self.head.parameters()), lr=pcfg.lr)

        # Data on the device once; the test sets cut to a fixed seeded subset of eval_size.
        rng = np.random.default_rng([pcfg.seed, 1])
        self._data = []
        for t in tasks:
            keep = np.arange(len(t.y_test))
            if pcfg.eval_size is not None and len(keep) > pcfg.eval_size:
                keep = np.sort(rng.permutation(len(keep))[: pcfg.eval_size])
            self._data.append(
                tuple(
                    torch.as_tensor(a, device=self.device)
                    for a in (t.x_train, t.y_train, t.x_test[keep], t.y_test[keep])
                )
            )
        # Frozen features of an embed_pool subset of each task, centred by the pool mean.
        feats = []
        for d in self._data:
            pool = torch.as_tensor(
                np.sort(rng.permutation(len(d[0]))[: pcfg.embed_pool]), device=self.device
            )
            feats.append(self._frozen_features(d[0][pool]))
        self._init_probe_state(feats)

    def _frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        chunk = self.pretrained_config.eval_batch_size
        with torch.no_grad(), self.model.disable_adapter():
            return torch.cat([self.model(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def evaluate(self, task_id: int) -> float:
        _, _, x, y = self._data[task_id]
        n_classes = self.tasks[task_id].n_classes
        chunk = self.pretrained_config.eval_batch_size
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                pred = self._logits(x[i : i + chunk])[:, :n_classes].argmax(1)
                correct += int((pred == y[i : i + chunk]).sum())
        return correct / max(len(y), 1)

    def adapter_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Adapted layer -> ``(B shape, A shape)`` as the bank sees them."""
        return {
            name: (tuple(b.shape), tuple(a.shape))
            for name, (a, b, _) in zip(self.lora_targets, self._lora, strict=True)
        }


def make_paper_learner(
    benchmark: str,
    data_root: str | os.PathLike,
    weights: str | os.PathLike | None,
    arch: str = "vit_b_16",
    n_tasks: int | None = None,
    max_train: int | None = None,
    verify: bool = True,
    **config: object,
) -> PretrainedLearner:
    """A paper-scale benchmark's tasks on a pretrained backbone, every file checked up front.

    Args:
        benchmark: ``"split_cifar100"`` or ``"five_datasets"`` (:mod:`nsr_gym.paper_data`).
        data_root: Folder with the datasets' files.
        weights: The backbone's state dict file (``None`` only with ``random_init=True``).
        arch: A key of :data:`ARCHITECTURES`.
        n_tasks: Tasks of the benchmark (its default when ``None``).
        max_train: Training examples kept per task (a seeded subset), for small runs.
        verify: Keep torchvision's md5 checks of the data files.
        **config: Further :class:`PretrainedConfig` fields.

    Raises:
        MissingDataError: one message naming every missing data file *and* a missing weights file.
    """
    from nsr_gym.paper_data import BENCHMARK_DATASETS, PAPER_FAMILIES, MissingDataError, check_files

    if benchmark not in PAPER_FAMILIES:
        raise ValueError(
            f"unknown paper-scale benchmark {benchmark!r}; choose one of {sorted(PAPER_FAMILIES)}"
        )
    problems = []
    try:
        check_files(data_root, BENCHMARK_DATASETS[benchmark])
    except MissingDataError as err:
        problems.append(str(err))
    spec = ARCHITECTURES.get(arch)
    if (
        spec is not None
        and not config.get("random_init")
        and (weights is None or not Path(weights).is_file())
    ):
        problems.append(
            f"backbone weights: put torchvision's {spec.weights_file} ({spec.url}) at "
            f"{weights or '<a path you pass as weights>'}"
        )
    if problems:
        raise MissingDataError("\n".join(problems))
    known = {f.name for f in fields(PretrainedConfig)} - {"arch", "weights"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown pretrained learner option(s) {unknown}; known: {sorted(known)}")
    cfg = PretrainedConfig(arch=arch, weights=None if weights is None else str(weights), **config)
    check_pretrained_config(cfg)
    kwargs = {} if n_tasks is None else {"n_tasks": n_tasks}
    tasks = PAPER_FAMILIES[benchmark](data_root, max_train=max_train, verify=verify, **kwargs)
    return PretrainedLearner(tasks, cfg)
