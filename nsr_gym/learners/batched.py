"""N torch learners of one benchmark stepped as one: stacked parameters, one batched update.

:class:`BatchedTorchLearner` holds ``N`` :class:`~nsr_gym.learners.TorchLearner` members built
alike (one constructed, the others copies that share its read-only data and cached
activations). Their trainable parameters, gradients and Adam moments become rows of four
``(N, P)`` buffers, so that each member's LoRA factors ``A_l`` are the slice ``(N, r, in)`` of one
tensor, its head ``(N, c, f)``, and so on. :meth:`BatchedTorchLearner.train` then runs all ``N``
members' updates as one batched forward, one hand-written batched backward (``bmm``) and one
Adam update over the whole buffer, and :meth:`BatchedTorchLearner.evaluate` evaluates them in
one pass per task.

Each member stays a complete learner: the env's rare per-member operations (a fresh subspace, a
load, a snapshot, a probe, the zero-shot evaluation after a switch) run on the member itself and
see the same storage. The batched path performs the operations the member's fast path performs
(:meth:`~nsr_gym.learners.fast.FastForward.mlp_loss_and_grads`, :class:`FlatAdam`), in the same
order, on batched operands: member ``i`` draws its batches from its own generator and ends each
update with the parameters it would reach alone (``tests/test_batched_env.py`` checks it, to
float32 rounding; on CPU it is bit for bit). What is batched: the MLP backbone's fast path
with trained adapters (every registered MLP benchmark). Anything else (the ViT, ``fast=False``,
``train_adapters=False``, a member distilling while it trains) runs member by member, the same
learner, just not faster.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from nsr_gym.bank import LoraTruncation, truncate_lora_batch
from nsr_gym.learners.base import UpdateReport
from nsr_gym.learners.fast import FastForward, FlatAdam
from nsr_gym.learners.torch_learner import SnapshotInfo, TorchLearner
from nsr_gym.threads import single_threaded

__all__ = ["BatchedTorchLearner", "clone_learner"]

#: Fewest members of one task :meth:`BatchedTorchLearner.evaluate` evaluates in a batched pass;
#: below it each evaluates itself (the same kernels): gathering a few rows of the stacked
#: parameters costs more than it saves (on CPU one member's pass is about half of a gathered
#: pass of one or two).
_FEWEST_BATCHED = 3


def clone_learner(learner: TorchLearner) -> TorchLearner:
    """A copy of ``learner`` with its own parameters, optimiser and generators, sharing its
    tasks, data and cached frozen activations (read-only after construction), so that ``N``
    members cost one construction and one copy of the data."""
    shared = (learner.tasks, learner._data, learner._features,
              getattr(learner, "_cache", None), getattr(learner, "_n_test", None))
    memo = {id(obj): obj for obj in shared if obj is not None}
    return copy.deepcopy(learner, memo)


class BatchedTorchLearner:
    """``N`` torch learners whose per-step training and evaluation run batched.

    Args:
        members: Learners built alike (same tasks and config; :func:`clone_learner` copies
            one). Their trainable parameters are re-pointed into shared buffers here.

    Attributes:
        members: The learners; member ``i`` is env ``i``'s learner.
        batched: Whether :meth:`train` and :meth:`evaluate` run batched (MLP fast path) or member
            by member.
    """

    @single_threaded  # it computes the cached activations: in a forked worker, on one thread
    def __init__(self, members: Sequence[TorchLearner]) -> None:
        self.members = list(members)
        first = self.members[0]
        cfg = first.config
        self.n = len(self.members)
        self.batched = bool(cfg.fast and cfg.train_adapters and not first._fast.is_vit)
        if not self.batched:
            return
        opt = first.optimizer
        assert isinstance(opt, FlatAdam)
        self.numel = opt.numel
        device, dtype = first.head.weight.device, first.head.weight.dtype
        # Rows of these are each member's FlatAdam buffers: one update of all of them at once.
        self.flat = torch.empty(self.n, self.numel, dtype=dtype, device=device)
        self.grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        for i, m in enumerate(self.members):
            m.optimizer.bind_rows(self.flat[i], self.grad[i], self.exp_avg[i], self.exp_avg_sq[i])
            inner = m.model.base_model.model  # the parameters moved: rebuild the fast path's views
            m._fast = FastForward(inner, 0, m.head)
        self.lr, (self.beta1, self.beta2), self.eps = opt.lr, opt.betas, opt.eps
        self.batch_size = cfg.batch_size
        # The frozen parts, shared by every member: (W, b, scaling) per adapted layer, in order.
        self._frozen = [(w, b, s) for w, b, _, _, s in first._fast._layers]
        # Batched views (N, ...) of each trainable parameter and its gradient, in FlatAdam order.
        self._layout, offset = [], 0
        for p in opt.params:
            self._layout.append((offset, offset + p.numel(), p.shape))
            offset += p.numel()
        self._views, self._grad_views = self._param_views(self.flat), self._param_views(self.grad)
        # Every task's cached training inputs and labels, concatenated: a batch of all members
        # is one index_select at (task offset + each member's own draw).
        cache = first._cache
        sizes = [len(d[1]) for d in first._data]
        self._train_x = torch.cat([c[0][0] for c in cache])
        self._train_y = torch.cat([d[1] for d in first._data])
        # The lowest layer's frozen part x W^T + b depends on the input alone: computed once per
        # input (row by row the same values as on a batch), for training and for evaluation.
        w0, b0, _ = self._frozen[0]
        with torch.no_grad():
            self._train_z = F.linear(self._train_x, w0, b0)
            self._test_z = [F.linear(c[1][0], w0, b0) for c in cache]
        self._offset = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        self._sizes = sizes
        self._n_classes = [t.n_classes for t in first.tasks]
        self._n_out = first.head.out_features
        # nll_loss's mean gradient at each label: -1 / batch, formed in the parameters' dtype
        self._nll_grad = -float(torch.ones((), dtype=dtype) / self.batch_size)

    # ------------------------------------------------------------------ training
    @single_threaded  # the env's thread policy (nsr_gym.threads), as TorchLearner's methods
    def train(self, task_ids: Sequence[int], n_updates: int) -> list[UpdateReport]:
        """``n_updates`` updates of member ``i`` on task ``task_ids[i]``, for every member.

        Returns:
            One :class:`UpdateReport` per member, as :meth:`TorchLearner.train` returns.
        """
        tasks = [int(t) for t in task_ids]
        if not self.batched:
            return [m.train(t, n_updates) for m, t in zip(self.members, tasks, strict=True)]
        # A member distilling trains alone (its term runs through autograd); the rest together.
        alone = [i for i, m in enumerate(self.members) if m._teacher]
        together = [i for i in range(self.n) if not self.members[i]._teacher]
        reports: list[UpdateReport | None] = [None] * self.n
        for i in alone:
            reports[i] = self.members[i].train(tasks[i], n_updates)
        if together:
            for i, report in zip(together, self._train_batched(together, tasks, n_updates),
                                 strict=True):
                reports[i] = report
        return reports  # type: ignore[return-value]

    def _train_batched(self, rows: list[int], tasks: list[int], n_updates: int
                       ) -> list[UpdateReport]:
        losses: list[list[float]] = [[] for _ in rows]
        skipped = [0] * len(rows)
        index = torch.as_tensor(rows, device=self.flat.device)
        every = len(rows) == self.n
        for _ in range(n_updates):
            loss, ok = self._update(rows, index, every, tasks)
            for j, (value, good) in enumerate(zip(loss, ok, strict=True)):
                if good:
                    losses[j].append(value)
                else:
                    skipped[j] += 1
        return [UpdateReport(v[0] if len(v) == 1 else float(np.mean(v)) if v else float("nan"),
                             s) for v, s in zip(losses, skipped, strict=True)]

    def _batch(self, rows: list[int], tasks: list[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's own draw of a batch, as its fast path draws it: ``(x, z, y)``, inputs
        ``(R, batch, in)``, their lowest frozen layer ``(R, batch, out)`` and labels
        ``(R, batch)``."""
        sizes = self._sizes
        draws = [self.members[i]._draws.next(sizes[tasks[i]]) for i in rows]
        # into the concatenated caches: each draw shifted by its task's offset, in one add
        offsets = torch.from_numpy(self._offset[[tasks[i] for i in rows]])
        idx = torch.stack(draws).add_(offsets.unsqueeze(1)).view(-1).to(self.flat.device)
        shape = (len(rows), self.batch_size)
        return (self._train_x.index_select(0, idx).view(*shape, -1),
                self._train_z.index_select(0, idx).view(*shape, -1),
                self._train_y.index_select(0, idx).view(*shape))

    def _update(self, rows: list[int], index: torch.Tensor, every: bool, tasks: list[int]
                ) -> tuple[list[float], list[bool]]:
        """One update of the members ``rows``: loss and gradients by hand (the batched form of
        ``FastForward.mlp_loss_and_grads``), then Adam (``FlatAdam.step``'s formula per row).

        Returns:
            ``(loss per member, whether its update ran)``; a member with a non-finite loss or
            gradient is left untouched and counted as skipped, as alone.
        """
        x, z, y = self._batch(rows, tasks)
        take = (lambda v: v) if every else (lambda v: v.index_select(0, index))  # noqa: E731
        views = [take(v) for v in self._views]
        n_layers = len(self._frozen)
        saved = []
        h = x
        for layer, (w, b, s) in enumerate(self._frozen):
            a, bb = views[2 * layer], views[2 * layer + 1]
            xa = torch.bmm(h, a.transpose(1, 2))
            lo = torch.bmm(xa, bb.transpose(1, 2))
            frozen = z if layer == 0 else F.linear(h, w, b)
            out = frozen.add_(lo if s == 1.0 else lo * s).relu_()
            saved.append((h, xa, out))
            h = out
        hw, hb = views[-2], views[-1]
        logits = torch.baddbmm(hb.unsqueeze(1), h, hw.transpose(1, 2))
        g, loss = self._cross_entropy_grad(logits, y, [tasks[i] for i in rows])
        grads = [torch.empty_like(v) for v in views]  # contiguous: bmm's fast layout
        torch.bmm(g.transpose(1, 2), h, out=grads[-2])
        torch.sum(g, 1, out=grads[-1])
        g = torch.bmm(g, hw)
        for layer in range(n_layers - 1, -1, -1):
            w, _, s = self._frozen[layer]
            a, bb = views[2 * layer], views[2 * layer + 1]
            h_in, xa, out = saved[layer]
            gz = torch.ops.aten.threshold_backward.default(g, out, 0)
            glo = gz if s == 1.0 else gz * s
            torch.bmm(glo.transpose(1, 2), xa, out=grads[2 * layer + 1])
            gxa = torch.bmm(glo, bb)
            torch.bmm(gxa.transpose(1, 2), h_in, out=grads[2 * layer])
            if layer:
                g = torch.matmul(gz, w).add_(torch.bmm(gxa, a))
        # every member: into the shared gradient buffer's rows (FlatAdam's layout)
        flat_grad = torch.cat([gr.view(len(rows), -1) for gr in grads], 1,
                              out=self.grad if every else None)
        loss_values = loss.tolist()
        ok = [math.isfinite(v) for v in loss_values]
        sums = flat_grad.sum(1).tolist()
        for j, total in enumerate(sums):  # a finite sum means finite entries (as FlatAdam)
            if ok[j] and not math.isfinite(total):
                ok[j] = bool(torch.isfinite(flat_grad[j]).all())
        self._adam(rows, index, every, flat_grad, ok)
        return loss_values, ok

    def _cross_entropy_grad(self, logits: torch.Tensor, y: torch.Tensor, tasks: list[int]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean cross-entropy over each task's ``n_classes`` logits and its gradient
        with respect to the logits (zero on unused columns), by the kernels autograd runs.

        Args:
            logits: ``(R, batch, n_out)``; y: ``(R, batch)`` labels; tasks: each row's task.

        Returns:
            ``(grad (R, batch, n_out), loss (R,))``.
        """
        n_rows, batch, n_out = logits.shape
        classes = [self._n_classes[t] for t in tasks]
        if classes.count(n_out) == n_rows:  # the common case: every head column in use
            g, loss = self._log_softmax_nll(logits.reshape(-1, n_out), y.reshape(-1), n_rows)
            return g.view(n_rows, batch, n_out), loss
        grad = torch.zeros_like(logits)
        loss = torch.empty(n_rows, dtype=logits.dtype, device=logits.device)
        classes = np.array(classes)
        for c in np.unique(classes):
            sel = np.flatnonzero(classes == c)
            part = logits if len(sel) == n_rows else logits[torch.as_tensor(sel)]
            flat = part.reshape(-1, n_out)[:, :c] if c < n_out else part.reshape(-1, n_out)
            labels = (y if len(sel) == n_rows else y[torch.as_tensor(sel)]).reshape(-1)
            g, loss_part = self._log_softmax_nll(flat, labels, len(sel))
            g = g.view(len(sel), batch, -1)
            if len(sel) == n_rows:
                grad[..., :c] = g
                loss = loss_part
            else:
                rows = torch.as_tensor(sel)
                grad[rows, :, :c] = g
                loss[rows] = loss_part
        return grad, loss

    def _log_softmax_nll(self, logits: torch.Tensor, labels: torch.Tensor, n_rows: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy of each of ``n_rows`` members' ``batch`` rows and its gradient,
        by the kernels autograd runs (``log_softmax``, ``nll_loss``'s mean gradient of
        ``-1 / batch`` at each label, ``_log_softmax_backward_data``).

        Args:
            logits: ``(n_rows * batch, c)``; labels: ``(n_rows * batch,)``.

        Returns:
            ``(grad (n_rows * batch, c), loss (n_rows,))``.
        """
        logp = torch.log_softmax(logits, 1)
        at = labels.unsqueeze(1)
        g = torch.zeros_like(logp).scatter_(1, at, self._nll_grad)
        g = torch.ops.aten._log_softmax_backward_data.default(g, logp, 1, logp.dtype)
        loss = logp.gather(1, at).view(n_rows, -1).sum(1).div_(-self.batch_size)
        return g, loss

    def _param_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views ``(R, *shape)`` of each trainable parameter in rows ``(R, numel)`` laid out as
        :class:`FlatAdam`'s buffer."""
        return [flat[:, lo:hi].view(len(flat), *shape) for lo, hi, shape in self._layout]

    def _adam(self, rows: list[int], index: torch.Tensor, every: bool, g: torch.Tensor,
              ok: list[bool]) -> None:
        """:meth:`FlatAdam.step` on every row at once, each with its own step count; rows not
        ``ok`` keep their parameters, moments and count."""
        if not all(ok):
            keep = [j for j, good in enumerate(ok) if good]
            if not keep:
                return
            rows = [rows[j] for j in keep]
            g = g[torch.as_tensor(keep, device=g.device)]
            index = torch.as_tensor(rows, device=g.device)
            every = False
        opts = [self.members[i].optimizer for i in rows]
        for opt in opts:
            opt.steps += 1
        steps = [float(opt.steps) for opt in opts]
        # The Python-double bias corrections of FlatAdam, cast to float32 as its scalars are.
        dev, dtype = g.device, g.dtype
        bc2_sqrt, step_size = torch.tensor(
            [[(1 - self.beta2**t) ** 0.5 for t in steps],
             [-(self.lr / (1 - self.beta1**t)) for t in steps]],
            dtype=dtype, device=dev).unsqueeze(2)
        if every:
            flat, exp_avg, exp_avg_sq = self.flat, self.exp_avg, self.exp_avg_sq
        else:
            flat, exp_avg, exp_avg_sq = (t.index_select(0, index)
                                         for t in (self.flat, self.exp_avg, self.exp_avg_sq))
        with torch.no_grad():
            exp_avg.lerp_(g, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = torch.sqrt(exp_avg_sq).div_(bc2_sqrt).add_(self.eps)
            # addcdiv's order: self + (value * t1) / t2
            flat.add_(exp_avg.mul(step_size).div_(denom))
            if not every:
                self.flat.index_copy_(0, index, flat)
                self.exp_avg.index_copy_(0, index, exp_avg)
                self.exp_avg_sq.index_copy_(0, index, exp_avg_sq)

    # ------------------------------------------------------------------ evaluation
    @single_threaded
    def evaluate(self, task_ids: Sequence[int], members: Sequence[int] | None = None
                 ) -> list[float]:
        """Held-out accuracy of member ``members[j]`` (default: every member, in order) on task
        ``task_ids[j]``: one batched pass per distinct task (its test inputs are shared by
        those members); fewer than ``_FEWEST_BATCHED`` members of a task evaluate themselves."""
        tasks = [int(t) for t in task_ids]
        who = list(range(self.n)) if members is None else [int(i) for i in members]
        if not self.batched:
            return [self.members[i].evaluate(t) for i, t in zip(who, tasks, strict=True)]
        first = self.members[0]
        acc = [0.0] * len(who)
        for t in dict.fromkeys(tasks):
            slots = [j for j, u in enumerate(tasks) if u == t]
            rows = [who[j] for j in slots]
            if len(rows) < _FEWEST_BATCHED:  # a pass over a few gathered rows costs more
                for j, i in zip(slots, rows, strict=True):
                    acc[j] = self.members[i].evaluate(t)
                continue
            index = torch.as_tensor(rows, device=self.flat.device)
            views = [v.index_select(0, index) if len(rows) < self.n else v for v in self._views]
            x = first._cache[t][1][0]
            h = x.expand(len(rows), *x.shape)
            with torch.no_grad():
                for layer, (w, b, s) in enumerate(self._frozen):
                    a, bb = views[2 * layer], views[2 * layer + 1]
                    lo = torch.bmm(torch.bmm(h, a.transpose(1, 2)), bb.transpose(1, 2))
                    lo = lo if s == 1.0 else lo * s
                    # layer 0's frozen part is shared: added out of place (the same sum)
                    h = torch.add(self._test_z[t], lo) if layer == 0 else \
                        F.linear(h, w, b).add_(lo)
                    h = h.relu_()
                logits = torch.baddbmm(views[-1].unsqueeze(1), h, views[-2].transpose(1, 2))
                pred = logits[..., :self._n_classes[t]].argmax(2)
                correct = (pred == first._data[t][3]).sum(1).tolist()
            for j, c in zip(slots, correct, strict=True):
                # float32 division, as TorchLearner.evaluate
                acc[j] = float(np.float32(c) / first._n_test[t])
        return acc

    # ------------------------------------------------------------------ snapshots
    @single_threaded
    def snapshot(self, task_ids: Sequence[int], accuracy: Sequence[float] | None = None
                 ) -> list[tuple[dict[str, torch.Tensor], float]] | None:
        """Every member's :meth:`TorchLearner.snapshot` on ``task_ids[i]``, with the truncation
        gap's two evaluations batched (all envs end their phases at the same step).

        Args:
            task_ids: Each member's task.
            accuracy: :meth:`evaluate` of ``task_ids`` on the subspaces as they stand, when the
                caller has it (the env's step has just measured it): the gap's first evaluation.

        Returns:
            One ``(payload, gap)`` per member, equal to the member's own snapshot (and its
            :attr:`~TorchLearner.last_snapshot` set alike); ``None`` where the batch does not
            apply (not the batched path, float16 payloads, a non-finite subspace: the env then
            lets each member snapshot itself, which also reports the non-finite one).
        """
        cfg = self.members[0].config
        if not self.batched or cfg.payload_dtype != "float32" or \
                not math.isfinite(float(self.flat.sum())):
            return None
        tasks = [int(t) for t in task_ids]
        payloads: list[dict[str, torch.Tensor]] = [{} for _ in range(self.n)]
        with torch.no_grad():
            cuts = []  # per layer: one LoraTruncation per member
            for layer, (_, _, scaling) in enumerate(self._frozen):
                a, b = self._views[2 * layer], self._views[2 * layer + 1]
                cuts.append(truncate_lora_batch(b.cpu() * scaling, a.cpu(),
                                                rank=cfg.compression_rank,
                                                energy=cfg.compression_energy))
            head_w, head_b = self._views[-2].cpu(), self._views[-1].cpu()
            infos = []
            for i, payload in enumerate(payloads):
                for layer, per_member in enumerate(cuts):
                    payload[f"layer{layer}.B"] = per_member[i].B
                    payload[f"layer{layer}.A"] = per_member[i].A
                payload["head.weight"], payload["head.bias"] = head_w[i].clone(), head_b[i].clone()
                infos.append((tuple(c[i].rank for c in cuts), tuple(c[i].energy for c in cuts)))
            gaps, acc32 = [0.0] * self.n, [float("nan")] * self.n
            if cfg.measure_truncation:
                # eps of THEORY.md: evaluate the compressed subspaces, then put the exact ones
                # back (the heads are their own payload: restoring the buffer is exact).
                saved = self.flat.clone()
                acc_full = self.evaluate(tasks) if accuracy is None else list(accuracy)
                self._write_compressed(cuts)
                acc32 = self.evaluate(tasks)
                self.flat.copy_(saved)
                gaps = [full - stored for full, stored in zip(acc_full, acc32, strict=True)]
        for m, (ranks, energy), acc in zip(self.members, infos, acc32, strict=True):
            m.last_snapshot = SnapshotInfo("float32", ranks, energy, float(acc), float("nan"))
        return [(payload, float(gap)) for payload, gap in zip(payloads, gaps, strict=True)]

    def _write_compressed(self, cuts: list[list[LoraTruncation]]) -> None:
        """Every member's compressed factors (``cuts``: per layer, one per member) into its
        LoRA parameters, rank ``k`` padded with zeros to ``r``: what
        :meth:`TorchLearner._write_factors` writes with ``pad_random=False``, for all members
        (the heads are left as they are: a snapshot's head is the head)."""
        for layer, (_, _, scaling) in enumerate(self._frozen):
            a, b = self._views[2 * layer], self._views[2 * layer + 1]
            a.zero_()
            b.zero_()
            for i, cut in enumerate(cuts[layer]):
                b[i, :, :cut.rank] = cut.B if scaling == 1.0 else cut.B / scaling
                a[i, :cut.rank] = cut.A

    def close(self) -> None:
        for m in self.members:
            m.close()
