"""Frozen backbones of the torch learner: the default MLP, a ViT-tiny-shaped transformer, and a
small 1D CNN for MNIST-1D, random or pretrained.

The MLP, the ViT and ``"cnn1d"`` are built from seeded Gaussian weights (``backbone_seed``); the
``"pretrained"`` backbone is the same CNN with the weights that ship in :mod:`nsr_gym.weights`
(trained by ``nsr-gym pretrain`` on MNIST-1D signals no task uses, loaded only after their
sha256 matches). All are frozen, and part of a benchmark's definition rather than of a run.
Each backbone says which of its ``Linear`` layers carry LoRA (:func:`lora_targets`) and how far
up the network the frozen, adapter-free part reaches (:func:`frozen_prefix`): activations below
the lowest adapted layer never change, so the fast path (:mod:`nsr_gym.learners.fast`) computes
them once per input and caches them.

The ViT reads an 8x8 digit as ``(8 / patch)^2`` patches of ``patch^2`` pixels, embeds them with a
linear map plus a learned-shape (here: seeded, frozen) position embedding, runs ``depth`` pre-norm
transformer blocks (multi-head self-attention, GELU MLP) and mean-pools the final LayerNorm's
tokens into the feature vector. LoRA sits on the four linears (``qkv``, ``proj``, ``fc1``,
``fc2``) of the top ``lora_blocks`` blocks, so the embedding and the lower blocks are frozen
prefix: the setting where caching activations matters.

The CNN reads a 40-sample signal through a convolutional *stem* (``Conv1d -> ReLU`` layers of
stride 2, then a flatten) and an MLP *trunk* (``Linear -> ReLU`` pairs) whose last width is the
feature dimension. LoRA sits on the trunk's linears; the stem has no adapter, so the learner runs
it once per input and trains on its cached output, as it caches the ViT's lower blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

BACKBONES = ("mlp", "vit", "cnn1d", "pretrained")

#: ``lin(module, x)``: how a block applies one of its ``Linear`` layers. The reference path calls
#: the module (a ``peft`` LoRA layer where adapted); the fast path substitutes its own kernel.
LinearFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def call_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference ``LinearFn``: an ordinary module call."""
    return module(x)


def _gaussian_(lin: nn.Linear, gen: torch.Generator) -> nn.Linear:
    """Seeded ``N(0, 1 / fan_in)`` weights and zero biases, in place."""
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) / lin.in_features**0.5)
        if lin.bias is not None:
            lin.bias.zero_()
    return lin


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- MLP


def build_mlp(input_dim: int, hidden: tuple[int, ...], seed: int) -> nn.Sequential:
    """The default backbone: ``Linear -> ReLU`` blocks with seeded Gaussian weights, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = input_dim
    for width in hidden:
        layers += [_gaussian_(nn.Linear(fan_in, width), gen), nn.ReLU()]
        fan_in = width
    return _freeze(nn.Sequential(*layers))


# ----------------------------------------------------------------------------- ViT


class Block(nn.Module):
    """A pre-norm transformer block: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``.

    Args:
        dim: Token width ``d``.
        heads: Attention heads (``d`` must divide evenly).
        hidden: Width of the MLP's hidden layer.
    """

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor, lin: LinearFn = call_module) -> torch.Tensor:
        """``(n, T, d) -> (n, T, d)``; ``lin`` applies the block's linears (see ``LinearFn``)."""
        return self.attend(h, lin(self.qkv, self.ln1(h)), lin)

    def attend(self, h: torch.Tensor, qkv: torch.Tensor,
               lin: LinearFn = call_module) -> torch.Tensor:
        """The rest of the block once ``qkv = qkv(ln1(h))`` (``(n, T, 3 d)``) is known."""
        n, t, d = h.shape
        qkv = qkv.view(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, T, d / heads)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        h = h + lin(self.proj, att)
        return h + lin(self.fc2, F.gelu(lin(self.fc1, self.ln2(h))))


class ViTTiny(nn.Module):
    """A ViT-tiny-shaped backbone for square single-channel images given as flat vectors.

    Args:
        input_dim: Pixels per image (a square, e.g. 64 for 8x8).
        patch: Patch side in pixels (must divide the image side).
        dim: Token width.
        depth: Transformer blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        branch_scale: Factor on the residual branches' output weights (``proj``, ``fc2``); a
            deep random transformer with undamped branches washes its input out, and features
            that keep it make a usable (still frozen, still random) backbone.
        seed: Seed of every frozen weight.
    """

    def __init__(self, input_dim: int, patch: int = 2, dim: int = 32, depth: int = 12,
                 heads: int = 2, mlp_ratio: int = 4, branch_scale: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        side = round(input_dim**0.5)
        if side * side != input_dim or side % patch:
            raise ValueError(f"ViT needs square inputs whose side is a multiple of patch={patch}; "
                             f"got input_dim={input_dim}")
        gen = torch.Generator().manual_seed(seed)
        self.side, self.patch, self.dim = side, patch, dim
        self.n_tokens = (side // patch) ** 2
        self.embed = _gaussian_(nn.Linear(patch * patch, dim), gen)
        self.pos = nn.Parameter(torch.randn(self.n_tokens, dim, generator=gen) * 0.1)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            blk = Block(dim, heads, mlp_ratio * dim)
            for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
                _gaussian_(lin, gen)
            with torch.no_grad():  # damped residual branches: the input survives the depth
                blk.proj.weight.mul_(branch_scale)
                blk.fc2.weight.mul_(branch_scale)
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(dim)
        _freeze(self)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, side^2)`` pixels -> ``(n, T, dim)`` embedded patches (row-major patch order)."""
        n, s, p = x.shape[0], self.side, self.patch
        patches = x.reshape(n, s // p, p, s // p, p).permute(0, 1, 3, 2, 4).reshape(n, -1, p * p)
        return self.embed(patches) + self.pos

    def head_features(self, h: torch.Tensor) -> torch.Tensor:
        """``(n, T, dim)`` final tokens -> ``(n, dim)`` features (final LayerNorm, token mean)."""
        return self.norm(h).mean(1)

    def forward_from(self, h: torch.Tensor, first_block: int,
                     lin: LinearFn = call_module) -> torch.Tensor:
        """Features from the tokens entering block ``first_block`` (``0``: from :meth:`tokens`)."""
        for blk in self.blocks[first_block:]:
            h = blk(h, lin)
        return self.head_features(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.tokens(x), 0)


def build_vit(input_dim: int, patch: int, dim: int, depth: int, heads: int, seed: int) -> ViTTiny:
    return ViTTiny(input_dim, patch=patch, dim=dim, depth=depth, heads=heads, seed=seed)


# ----------------------------------------------------------------------------- 1D CNN


class CNN1D(nn.Module):
    """A small 1D CNN for signals given as flat vectors: ``stem`` (convolutions) then ``trunk``.

    Args:
        input_len: Samples per signal (40 for MNIST-1D).
        channels: Output channels of each ``Conv1d`` (kernel ``kernel``, stride 2, "same"
            padding), each followed by a ReLU.
        kernel: Odd kernel width of every convolution.
        hidden: Widths of the trunk's ``Linear -> ReLU`` layers; the last is the feature
            dimension.
        seed: Seed of the ``N(0, 1 / fan_in)`` weights (zero biases) it starts from.

    The defaults are the shipped pretrained network's architecture (``nsr-gym pretrain``), so
    ``"cnn1d"`` is its random-weights control.
    """

    def __init__(self, input_len: int = 40, channels: tuple[int, ...] = (32, 32, 32),
                 kernel: int = 5, hidden: tuple[int, ...] = (64, 32), seed: int = 0) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"CNN1D kernel must be odd, got {kernel}")
        gen = torch.Generator().manual_seed(seed)
        self.input_len, self.channels, self.kernel = input_len, tuple(channels), kernel
        self.hidden = tuple(hidden)
        layers: list[nn.Module] = [nn.Unflatten(1, (1, input_len))]
        c_in, length = 1, input_len
        for c in channels:
            conv = nn.Conv1d(c_in, c, kernel, stride=2, padding=kernel // 2)
            with torch.no_grad():
                fan_in = c_in * kernel
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / fan_in**0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
            c_in, length = c, (length - 1) // 2 + 1
        self.stem = nn.Sequential(*layers, nn.Flatten())
        self.stem_dim = fan_in = c_in * length
        trunk: list[nn.Module] = []
        for width in self.hidden:
            trunk += [_gaussian_(nn.Linear(fan_in, width), gen), nn.ReLU()]
            fan_in = width
        self.trunk = nn.Sequential(*trunk)
        self.feature_dim = self.hidden[-1]

    def architecture(self) -> dict[str, object]:
        """The constructor's arguments but the seed (what a weights file records)."""
        return {"input_len": self.input_len, "channels": list(self.channels),
                "kernel": self.kernel, "hidden": list(self.hidden)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, input_len) -> (n, feature_dim)``."""
        return self.trunk(self.stem(x))


def build_cnn1d(input_dim: int, seed: int) -> CNN1D:
    """The frozen random-features CNN (the pretrained one's architecture, seeded weights)."""
    return _freeze(CNN1D(input_dim, seed=seed))


def load_pretrained(input_dim: int, name: str | None = None,
                    directory: str | None = None) -> CNN1D:
    """The shipped pretrained CNN for ``input_dim``-wide inputs, frozen, checksum verified.

    Args:
        input_dim: The tasks' input width; it picks the weights (40: ``mnist1d_cnn``).
        name: A weights name in :mod:`nsr_gym.weights` instead (its width must still match).
        directory: Where the weights and their record are (default: the package's).

    Raises:
        ValueError: when no shipped network takes ``input_dim`` inputs.
        nsr_gym.weights.WeightsError: when the file is missing or its sha256 differs from the
            record's (naming the file), or the record does not describe a ``CNN1D``.
    """
    from nsr_gym import weights

    name = name or weights.for_input_dim(input_dim)
    record, tensors = weights.load_verified(name, directory)
    arch = record["architecture"]
    if int(arch["input_len"]) != input_dim:
        raise ValueError(f"pretrained weights {name!r} take {arch['input_len']}-wide inputs; "
                         f"these tasks have {input_dim}")
    net = CNN1D(int(arch["input_len"]), tuple(arch["channels"]), int(arch["kernel"]),
                tuple(arch["hidden"]))
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise weights.WeightsError(f"{weights.weights_path(name, directory)} does not match "
                                   f"its recorded architecture {arch}: {err}") from None
    return _freeze(net)


# ----------------------------------------------------------------------------- LoRA placement


def lora_targets(backbone: nn.Module, lora_blocks: int = 2) -> list[str]:
    """Names of the ``Linear`` modules that carry LoRA, in forward order.

    MLP (and a CNN's trunk, which the learner adapts on its own): every ``Linear``. ViT:
    ``qkv``, ``proj``, ``fc1`` and ``fc2`` of the top ``lora_blocks`` blocks.
    """
    if isinstance(backbone, ViTTiny):
        depth = len(backbone.blocks)
        if not 1 <= lora_blocks <= depth:
            raise ValueError(f"lora_blocks must be in 1..{depth} for a depth-{depth} ViT, "
                             f"got {lora_blocks}")
        return [f"blocks.{i}.{name}" for i in range(depth - lora_blocks, depth)
                for name in ("qkv", "proj", "fc1", "fc2")]
    return [str(i) for i, m in enumerate(backbone) if isinstance(m, nn.Linear)]


def frozen_prefix(backbone: nn.Module, lora_blocks: int = 2) -> int:
    """Index of the lowest block with an adapter (ViT), ``0`` for the MLP (its first layer is
    adapted): everything before it is the frozen prefix the fast path caches."""
    if isinstance(backbone, ViTTiny):
        return len(backbone.blocks) - lora_blocks
    return 0
