"""SVD compression of LoRA factors (NSR cycle, step 1: compress before reserving in the bank).

:func:`compress_lora` truncates ``dW = B @ A`` through two thin QRs and an ``r x r`` SVD, never
forming ``dW``; :func:`truncate_lora` is the same computation that also reports the kept rank and
the fraction of the energy kept, so the rank an energy threshold chose is visible per layer of
each entry (:func:`payload_ranks` reads the ranks back from a stored payload);
:func:`dense_truncated_svd` is the dense route it is measured against (``nsr-gym perf``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from nsr_gym.bank.entry import is_finite

__all__ = ["LoraTruncation", "compress_lora", "dense_truncated_svd", "payload_ranks",
           "truncate_lora", "truncate_lora_batch"]


class LoraTruncation(NamedTuple):
    """One layer's truncation (:func:`truncate_lora`).

    Attributes:
        B: ``(m, k)`` float32 factor.
        A: ``(k, n)`` float32 factor.
        rank: The kept rank ``k``.
        energy: Fraction of ``||dW||_F^2`` the kept directions carry, in ``[0, 1]`` (1.0 for a
            zero ``dW``).
    """

    B: torch.Tensor
    A: torch.Tensor
    rank: int
    energy: float


def compress_lora(
    B: torch.Tensor, A: torch.Tensor, rank: int | None = None, energy: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``dW = B @ A`` computed without ever forming ``dW``.

    With reduced QRs ``B = Q_B R_B`` and ``A^T = Q_A R_A``, ``dW = Q_B (R_B R_A^T) Q_A^T``, so the
    SVD of the ``r x r`` core gives that of ``dW`` in ``O((m + n) r^2 + r^3)`` time and
    ``O((m + n) r)`` memory (the dense route: ``O(m n min(m, n))`` and ``O(m n)``).
    Kept rank ``k``: ``min(rank, r)`` for ``rank``; the smallest ``k`` with
    ``sum(s[:k]^2) / sum(s^2) >= energy`` for ``energy`` (values below the numerical-rank
    tolerance count as zero); the min of the two for both; the numerical rank for neither.
    Always ``k >= 1``; a zero ``dW`` gives ``k = 1`` zero factors.

    Args:
        B: ``(m, r)`` float32 or float64.
        A: ``(r, n)`` float32 or float64.
        rank: rank budget, ``>= 1``.
        energy: fraction of the squared Frobenius norm to keep, in ``(0, 1]``.

    Returns:
        ``(B_k, A_k)``, float32, contiguous, on ``B``'s device, shapes ``(m, k)`` and ``(k, n)``:
        ``B_k = U_k sqrt(s_k)``, ``A_k = sqrt(s_k) Vh_k``, so ``B_k @ A_k`` is the best rank-``k``
        approximation of ``dW`` (Eckart-Young).

    Raises:
        ValueError: for non-2-D or mismatched shapes, NaN/inf, or a bad ``rank``/``energy``.
    """
    out = truncate_lora(B, A, rank, energy)
    return out.B, out.A


def truncate_lora(B: torch.Tensor, A: torch.Tensor, rank: int | None = None,
                  energy: float | None = None) -> LoraTruncation:
    """:func:`compress_lora` (same arguments, same factors bit for bit), with the kept rank and
    the fraction of the energy kept."""
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"compress_lora needs B (m, r), A (r, n); got {tuple(B.shape)}, "
                         f"{tuple(A.shape)}")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    (m, r), n = B.shape, A.shape[1]
    in_dtype = torch.promote_types(B.dtype, A.dtype)
    # The rank tolerance follows the precision the factors were given in (as matrix_rank does);
    # the arithmetic itself runs in float64, which costs little at O((m + n) r^2).
    eps = torch.finfo(in_dtype if in_dtype.is_floating_point else torch.float32).eps
    b64, a64 = B.detach().to(torch.float64), A.detach().to(torch.float64)
    if not (is_finite(b64) and is_finite(a64)):
        raise ValueError("compress_lora: B and A must be finite (found NaN or inf)")
    zeros = LoraTruncation(torch.zeros(m, 1, device=B.device), torch.zeros(1, n, device=B.device),
                           1, 1.0)
    if min(m, n, r) == 0:
        return zeros
    q_b, r_b = torch.linalg.qr(b64)  # (m, p), (p, r), p = min(m, r)
    q_a, r_a = torch.linalg.qr(a64.T)  # (n, q), (q, r), q = min(n, r)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    s_np = s.cpu().numpy()
    if s_np[0] == 0.0:
        return zeros
    k = int(_select_ranks(s_np[None], eps * max(m, n, r), rank, energy)[0])
    root = s[:k].sqrt()
    b_k = (q_b @ u[:, :k]) * root
    a_k = root[:, None] * (vh[:k] @ q_a.T)
    return LoraTruncation(b_k.to(torch.float32).contiguous(), a_k.to(torch.float32).contiguous(),
                          k, _kept_energy(s_np, k))


def truncate_lora_batch(B: torch.Tensor, A: torch.Tensor, rank: int | None = None,
                        energy: float | None = None) -> list[LoraTruncation]:
    """:func:`truncate_lora` of ``N`` adapters at once: ``B`` ``(N, m, r)``, ``A`` ``(N, r, n)``
    (all finite), the factorisations batched; entry ``i`` equals ``truncate_lora(B[i], A[i],
    rank, energy)`` (the batched QR and SVD run the same LAPACK routine per matrix).

    Raises:
        ValueError: for shapes that are not ``(N, m, r)`` and ``(N, r, n)``, or NaN/inf.
    """
    if B.ndim != 3 or A.ndim != 3 or B.shape[0] != A.shape[0] or B.shape[2] != A.shape[1]:
        raise ValueError(f"truncate_lora_batch needs B (N, m, r), A (N, r, n); got "
                         f"{tuple(B.shape)}, {tuple(A.shape)}")
    n_batch, m, r = B.shape
    n = A.shape[2]
    if min(m, n, r) == 0:
        return [truncate_lora(B[i], A[i], rank, energy) for i in range(n_batch)]
    in_dtype = torch.promote_types(B.dtype, A.dtype)
    eps = torch.finfo(in_dtype if in_dtype.is_floating_point else torch.float32).eps
    b64, a64 = B.detach().to(torch.float64), A.detach().to(torch.float64)
    if not (is_finite(b64) and is_finite(a64)):
        raise ValueError("truncate_lora_batch: B and A must be finite (found NaN or inf)")
    q_b, r_b = torch.linalg.qr(b64)
    q_a, r_a = torch.linalg.qr(a64.transpose(1, 2))
    u, s, vh = torch.linalg.svd(r_b @ r_a.transpose(1, 2), full_matrices=False)
    s_all = s.cpu().numpy()
    tol = eps * max(m, n, r)
    # Kept rank per adapter (0: a zero dW, whose zeros truncate_lora makes); then the factors of
    # all adapters that keep the same rank in one product each (per matrix the same routine).
    live = s_all[:, 0] != 0.0
    ks = np.zeros(n_batch, dtype=np.int64)
    ks[live] = _select_ranks(s_all[live], tol, rank, energy)
    out: list[LoraTruncation | None] = [None] * n_batch
    for k in np.unique(ks).tolist():
        sel = np.flatnonzero(ks == k).tolist()
        if k == 0:
            for i in sel:
                out[i] = truncate_lora(B[i], A[i], rank, energy)  # the zeros, as alone
            continue
        idx = torch.as_tensor(sel, device=s.device)
        root = s[idx, :k].sqrt()  # (G, k)
        b_k = (torch.bmm(q_b[idx], u[idx, :, :k]) * root[:, None, :]).to(torch.float32)
        a_k = (root[:, :, None] * torch.bmm(vh[idx, :k], q_a[idx].transpose(1, 2))
               ).to(torch.float32)
        for j, i in enumerate(sel):
            # own copies: a stored payload must not keep the whole group's storage alive
            out[i] = LoraTruncation(b_k[j].clone(), a_k[j].clone(), k, _kept_energy(s_all[i], k))
    return out  # type: ignore[return-value]


def payload_ranks(payload: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Layer name -> kept rank ``k`` of each ``<layer>.A`` ``(k, n)`` factor of a payload (the
    rank an energy threshold chose for that layer of that entry)."""
    return {name[:-2]: int(t.shape[0]) for name, t in payload.items()
            if name.endswith(".A") and t.ndim == 2}


def _select_ranks(s: np.ndarray, rel_tol: float, rank: int | None, energy: float | None
                  ) -> np.ndarray:
    """Number of singular values to keep of each row of ``s`` ``(N, r)`` (rows sorted
    descending, each with ``s[i, 0] > 0``), by row-wise array operations: ``(N,)`` int64."""
    s2 = np.where(s > s[:, :1] * rel_tol, s.astype(np.float64) ** 2, 0.0)
    nonzero = np.maximum(1, np.count_nonzero(s2, axis=1))
    k = nonzero if rank is None and energy is None else np.full(len(s), s.shape[1])
    if rank is not None:
        k = np.minimum(k, int(rank))
    if energy is not None:
        cum = np.cumsum(s2, axis=1)
        # Divide by cum[-1] (not s2.sum()) so the ratio reaches exactly 1.0 at the numerical
        # rank and energy=1.0 never spills into noise-level singular values.
        ratio = cum / cum[:, -1:]
        k = np.minimum(np.minimum(k, np.count_nonzero(ratio < float(energy), axis=1) + 1),
                       nonzero)
    return np.maximum(1, k)


def _kept_energy(s: np.ndarray, k: int) -> float:
    """Fraction of ``sum(s^2)`` the first ``k`` singular values carry."""
    s2 = s.astype(np.float64) ** 2
    return float(s2[:k].sum() / s2.sum())


def dense_truncated_svd(W: torch.Tensor, k: int) -> torch.Tensor:
    """Reference rank-``k`` truncation of a dense ``(m, n)`` ``W`` (same shape and dtype out) via
    ``torch.linalg.svd``, ``O(m n min(m, n))``: for tests and benchmarks."""
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]
