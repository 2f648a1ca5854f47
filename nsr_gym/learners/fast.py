"""The fast path of the torch learner: the same function as ``peft``, without its per-call cost.

``peft`` is the reference: its LoRA layer computes ``base(x) + lora_B(lora_A(dropout(x))) *
scaling`` behind a chain of module calls, adapter bookkeeping and checks that cost more than the
arithmetic on the benchmark's small models. This module computes the same function on the same
``peft`` parameters:

* :func:`lora_linear` is the hand-written ``x W^T + b + s (x A^T) B^T``, in ``peft``'s order of
  operations; with the hand-written backward of :meth:`FastForward.mlp_loss_and_grads` the MLP
  backbone's fast path agrees with the ``peft`` path bit for bit;
* :class:`FastForward` caches the frozen activations at the lowest adapted layer once per input
  (the backbone is frozen, so they never change) and runs only the adapted part per call. On the
  ViT, whose linears see ``n x T`` token rows, it merges each adapter into its weight once per
  call, ``x (W + s B A)^T + b``, inside autograd (so ``A`` and ``B`` get their gradients): one
  matrix product per linear instead of three, two of them skinny rank-``r`` ones. That is the
  same function to float rounding (``tests/test_fast_path.py`` states the tolerance);
* :class:`FlatAdam` re-points the trainable parameters into one preallocated flat buffer and runs
  ``torch.optim.Adam``'s update (same formula, same order) as seven whole-buffer operations;
  switching subspaces copies factors into those same parameters and zeroes the moments.

Nothing here allocates a module or a parameter after construction, and no per-step Python work
repeats what can be done once (lookups, views and shapes are resolved at build time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nsr_gym.bank.entry import is_finite
from nsr_gym.learners.backbones import ViTTiny

#: ``(W, b, A, B, scaling)`` of one adapted ``Linear``: the frozen base weight and bias, and the
#: ``peft`` ``lora_A`` / ``lora_B`` weights (the same Parameter objects ``peft`` trains).
LoraSpec = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, float]


def lora_linear(x: torch.Tensor, spec: LoraSpec) -> torch.Tensor:
    """``x W^T + b + s (x A^T) B^T``, in ``peft``'s order of operations (so bitwise equal; the
    multiply by ``s = 1.0`` is exact and skipped, and the sum is formed in place, which autograd
    allows: a linear's backward does not read its output)."""
    w, b, a, bb, s = spec
    lora = F.linear(F.linear(x, a), bb)
    return F.linear(x, w, b).add_(lora if s == 1.0 else lora * s)


def lora_spec(layer: nn.Module, adapter: str = "default") -> LoraSpec:
    """The :data:`LoraSpec` of a ``peft`` LoRA ``Linear`` layer."""
    base = layer.base_layer
    return (base.weight, base.bias, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
            float(layer.scaling[adapter]))


class FastForward:
    """Backbone features (and head logits) from cached frozen activations.

    Build it *after* :class:`FlatAdam` has re-pointed the parameters: it keeps detached aliases
    of their storage (for graph-free evaluation and the MLP's hand-written backward) and must be
    rebuilt if the parameters are re-pointed again (as after unpickling).

    Args:
        backbone: The backbone *inside* the ``peft`` model (its adapted linears are ``peft``
            layers), an ``nn.Sequential`` MLP or a :class:`~nsr_gym.learners.backbones.ViTTiny`.
        first_adapted: Index of the lowest adapted block (ViT); everything below it is cached.
        head: The task head.
    """

    def __init__(self, backbone: nn.Module, first_adapted: int, head: nn.Linear) -> None:
        self.backbone = backbone
        self.first = first_adapted
        self.is_vit = isinstance(backbone, ViTTiny)
        self._head = (head.weight, head.bias)  # the Parameters: the ViT path trains by autograd
        self._head_d = (head.weight.detach(), head.bias.detach())
        if self.is_vit:
            self._specs = {m: lora_spec(m) for m in backbone.blocks[first_adapted:].modules()
                           if hasattr(m, "lora_A")}
        else:
            # The MLP: adapted Linear -> ReLU pairs, as nsr_gym.learners.backbones.build_mlp makes.
            mods = list(backbone)
            if not all(hasattr(m, "lora_A") for m in mods[0::2]) or not all(
                    isinstance(m, nn.ReLU) for m in mods[1::2]):
                raise ValueError("the fast path expects an MLP of adapted Linear -> ReLU pairs")
            self._layers = [tuple(t.detach() if isinstance(t, torch.Tensor) else t
                                  for t in lora_spec(m)) for m in mods[0::2]]
        p = self._head_d[0]
        self._one = torch.ones((), dtype=p.dtype, device=p.device)

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frozen activations at the lowest adapted layer, computed once per input.

        MLP: ``(x,)`` (its first layer is adapted). ViT: ``(h, y)``: the tokens entering the
        lowest adapted block and ``y = ln1(h)``, the input of that block's adapted ``qkv``.
        """
        if not self.is_vit:
            return (x,)
        with torch.no_grad():
            h = self.backbone.tokens(x)
            for blk in self.backbone.blocks[: self.first]:
                h = blk(h)
            return h, self.backbone.blocks[self.first].ln1(h)

    def frozen_features(self, cached: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Backbone features from :meth:`prefix` activations through the modules as they are
        (call it under ``peft``'s ``disable_adapter()`` for the frozen backbone's features)."""
        if self.is_vit:
            return self.backbone.forward_from(cached[0], self.first)
        return self.backbone(cached[0])

    def logits(self, *cached: torch.Tensor) -> torch.Tensor:
        """Head logits from :meth:`prefix` activations, through the adapters (with autograd for
        the ViT; graph-free for the MLP, whose gradients :meth:`mlp_loss_and_grads` forms)."""
        if self.is_vit:
            h, y = cached
            merged = {m: (torch.addmm(w, bb, a, alpha=s), b)  # W + s B A, once per call
                      for m, (w, b, a, bb, s) in self._specs.items()}

            def lin(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
                return F.linear(x, *merged[module])

            blk = self.backbone.blocks[self.first]
            h = blk.attend(h, lin(blk.qkv, y), lin)
            return F.linear(self.backbone.forward_from(h, self.first + 1, lin), *self._head)
        (h,) = cached
        for spec in self._layers:
            h = lora_linear(h, spec).relu_()
        return F.linear(h, *self._head_d)

    def logits_with_grad(self, *cached: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` inside autograd on both backbones (the MLP through the ``peft``
        modules themselves), for loss terms without a hand-written backward."""
        if self.is_vit:
            return self.logits(*cached)
        return F.linear(self.backbone(cached[0]), *self._head)

    def predict(self, cached: tuple[torch.Tensor, ...], n_classes: int) -> torch.Tensor:
        """Predicted classes (``argmax`` over the task's ``n_classes`` logits), no graph."""
        if self.is_vit:
            with torch.no_grad():
                return self.logits(*cached)[:, :n_classes].argmax(1)
        return self.logits(*cached)[:, :n_classes].argmax(1)

    def mlp_loss_and_grads(self, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                           grads: list[torch.Tensor], adapters: bool) -> torch.Tensor:
        """Cross-entropy of the MLP on a batch, its gradients written into ``grads`` by hand.

        The forward is :meth:`logits`'s; the backward runs the kernels autograd runs for this
        graph (``threshold_backward``, ``nll_loss_backward``, ``_log_softmax_backward_data``,
        each matmul's gradient ``mm`` in the same memory layout), so the gradients equal
        ``loss.backward()``'s bit for bit (``x * 1.0`` and the order of a two-term sum are
        exact), without the autograd engine's per-node cost.

        Args:
            x: ``(n, in)`` batch; y: ``(n,)`` labels; n_classes: head columns the task uses.
            grads: Output buffers, in :class:`FlatAdam` order: ``A, B`` of each layer (when
                ``adapters``), then the head's weight and bias.
            adapters: Whether the adapters train (otherwise only the head's gradient is formed).

        Returns:
            The 0-d loss (no autograd graph).
        """
        aten = torch.ops.aten
        saved = []
        h = x
        for w, b, a, bb, s in self._layers:
            xa = F.linear(h, a)
            lo = F.linear(xa, bb)
            out = F.linear(h, w, b).add_(lo if s == 1.0 else lo * s).relu_()
            saved.append((h, xa, out))
            h = out
        hw, hb = self._head_d
        logits = F.linear(h, hw, hb)
        n_out = logits.shape[1]
        if n_classes < n_out:
            logits = logits[:, :n_classes]
        logp = torch.log_softmax(logits, 1)
        loss, total = aten.nll_loss_forward.default(logp, y, None, 1, -100)
        g = aten.nll_loss_backward.default(self._one, logp, y, None, 1, -100, total)
        g = aten._log_softmax_backward_data.default(g, logp, 1, logp.dtype)
        if n_classes < n_out:
            g = torch.zeros(len(g), n_out, dtype=g.dtype, device=g.device).slice_scatter(
                g, 1, 0, n_classes)
        torch.mm(g.t(), h, out=grads[-2])
        torch.sum(g, 0, keepdim=True, out=grads[-1].view(1, -1))
        if not adapters:
            return loss
        g = g.mm(hw)
        for i in range(len(self._layers) - 1, -1, -1):
            w, _, a, bb, s = self._layers[i]
            h_in, xa, out = saved[i]
            gz = aten.threshold_backward.default(g, out, 0)
            glo = gz if s == 1.0 else gz * s
            torch.mm(glo.t(), xa, out=grads[2 * i + 1])
            gxa = glo.mm(bb)
            torch.mm(gxa.t(), h_in, out=grads[2 * i])
            if i:
                g = gz.mm(w).add_(gxa.mm(a))
        return loss


class FlatAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) over one flat parameter buffer.

    The parameters stay the same ``Parameter`` objects (``peft``'s and the head's); their storage
    becomes a view into one contiguous buffer, so the update is a handful of whole-buffer
    operations and reads exactly what ``copy_`` into a parameter writes.

    Args:
        params: Trainable parameters, in a fixed order.
        lr: Learning rate.
        betas: ``(beta1, beta2)``.
        eps: Denominator term.
    """

    def __init__(self, params: list[nn.Parameter], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self._bind()

    @property
    def numel(self) -> int:
        """Elements of the flat buffer: every trainable parameter's, in order."""
        return sum(p.numel() for p in self.params)

    def _bind(self, rows: tuple[torch.Tensor, ...] | None = None) -> None:
        """Move the parameters' storage into flat buffers (values kept): fresh ones, or
        ``rows``, four ``(numel,)`` views ``(flat, grad, exp_avg, exp_avg_sq)`` into buffers
        shared with other learners (:class:`~nsr_gym.learners.batched.BatchedTorchLearner`
        updates them all at once); the moments are copied over."""
        p0 = self.params[0]
        if rows is None:
            self.flat = torch.empty(self.numel, dtype=p0.dtype, device=p0.device)
            self.grad = torch.zeros_like(self.flat)
            self.exp_avg = torch.zeros_like(self.flat)
            self.exp_avg_sq = torch.zeros_like(self.flat)
        else:
            flat, grad, exp_avg, exp_avg_sq = rows
            if getattr(self, "exp_avg", None) is not None:
                exp_avg.copy_(self.exp_avg)
                exp_avg_sq.copy_(self.exp_avg_sq)
            self.flat, self.grad, self.exp_avg, self.exp_avg_sq = flat, grad, exp_avg, exp_avg_sq
        self._denom = torch.empty_like(self.flat)
        self._grad_views = []
        offset = 0
        with torch.no_grad():
            for p in self.params:
                view = self.flat[offset: offset + p.numel()].view_as(p)
                view.copy_(p)
                p.data = view
                self._grad_views.append(self.grad[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        if rows is None:
            self.steps = 0

    def bind_rows(self, flat: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                  exp_avg_sq: torch.Tensor) -> None:
        """Re-point the parameters, gradients and moments into rows of shared buffers, values
        and step count kept (see :meth:`_bind`); views of the parameters taken before (such as
        :class:`FastForward`'s) must be rebuilt afterwards."""
        self._bind((flat, grad, exp_avg, exp_avg_sq))

    def reset(self) -> None:
        """Forget the moments (a new subspace: the old estimates mean nothing for it)."""
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.steps = 0

    @property
    def grad_views(self) -> list[torch.Tensor]:
        """One gradient buffer per parameter (views into the flat gradient), written in place."""
        return self._grad_views

    def step(self, grads: tuple[torch.Tensor, ...] | None = None) -> bool:
        """Apply one update from ``grads`` (one per parameter; ``None``: already written into
        :attr:`grad_views`); ``False`` and no update when any gradient is NaN or infinite."""
        if grads is not None:
            torch._foreach_copy_(self._grad_views, list(grads))
        g = self.grad
        if not is_finite(g):
            return False
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        with torch.no_grad():
            self.exp_avg.lerp_(g, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = torch.sqrt(self.exp_avg_sq, out=self._denom).div_(bias_correction2**0.5)
            self.flat.addcdiv_(self.exp_avg, denom.add_(self.eps),
                               value=-(self.lr / bias_correction1))
        return True

    # Pickling and deepcopy rebuild each tensor on its own: re-point the parameters afterwards.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("flat", "grad", "_grad_views", "_denom"):
            state.pop(k)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        moments = state.pop("exp_avg"), state.pop("exp_avg_sq"), state["steps"]
        self.__dict__.update(state)
        self._bind()
        self.exp_avg.copy_(moments[0])
        self.exp_avg_sq.copy_(moments[1])
        self.steps = moments[2]
