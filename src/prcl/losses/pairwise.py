"""Anchor-key similarities for the contrastive loss, chunked so memory stays bounded.

Every anchor has its own keys (its sampled negatives), so the similarities are not one matmul:
for M anchors with K keys each we need M*K*D terms (paper shapes: 21*256 anchors x ~600 keys x
256 dims = 0.8 G). The keys live in a table ([T, D], detached) and are referenced by an index
[M, K]; a custom autograd Function gathers them chunk by chunk, in the forward and again in the
backward, so neither pass holds more than `chunk_elements` gathered values at once and nothing of
size M*K*D is kept for the backward. Gradients flow into the anchors (mu and var) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from prcl.probabilistic import LOG_2PI, VAR_EPS

DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}
"""Gathered values per chunk when `chunk_elements` is None: cache-sized on CPU (measured best at
paper shapes), large on GPUs (fewer kernel launches; 3 buffers of 128 MiB in float32)."""


def _resolve_chunk(chunk_elements: Optional[int], device: torch.device) -> int:
    if chunk_elements is None:
        return DEFAULT_CHUNK_ELEMENTS.get(device.type, DEFAULT_CHUNK_ELEMENTS["cuda"])
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    return chunk_elements


def _chunks(num_rows: int, per_row: int, chunk_elements: int):
    step = max(1, min(num_rows, chunk_elements // max(1, per_row)))
    return step, [slice(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]


def _gather(table: Tensor, index: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """table [T, D], index [m, K] -> [m, K, D] (index_select is the fastest gather on CPU); `out`
    is a reusable buffer with at least m*K*D elements."""
    flat = index.reshape(-1)
    if out is None:
        return table.index_select(0, flat).view(*index.shape, table.shape[1])
    buf = out.view(-1)[: flat.numel() * table.shape[1]].view(flat.numel(), table.shape[1])
    return torch.index_select(table, 0, flat, out=buf).view(*index.shape, table.shape[1])


def _mls_constants(dim: int, reduction: str, include_const: bool, log_det: str = "same") -> Tuple[float, float, float]:
    """(distance scale, log-det scale, const) with MLS = ds * sum_l d^2 / v + ls * sum_l log v + const
    (Eq. 3: ds = ls = -1/2; `reduction="mean"` divides by D; `log_det="mean"` divides the log-det term
    alone by D, not in the paper). `include_const` adds the -1/2 log 2π per dim, on the log-det's scale."""
    ds = -0.5 / dim if reduction == "mean" else -0.5
    ls = -0.5 / dim if (log_det == "mean" or (log_det == "same" and reduction == "mean")) else -0.5
    return ds, ls, (ls * LOG_2PI * dim if include_const else 0.0)


_GROUPED_LOG_MAX = 1e9
"""Below this bound a product of 4 variances in [VAR_EPS, bound) stays a normal float32."""


def _sum_log(v: Tensor, scratch: Tensor) -> Tensor:
    """sum(log v, -1) for v [m, K, D] (D % 4 == 0, VAR_EPS <= v < _GROUPED_LOG_MAX) as the log of
    products of 4 values: a quarter of the logs, which dominate the cost of the MLS."""
    half = v.shape[-1] // 2
    p = torch.mul(v[..., :half], v[..., half:], out=scratch[: v.numel() // 2].view(*v.shape[:-1], half))
    q = p[..., : half // 2].mul_(p[..., half // 2:])
    return q.log_().sum(-1)


class _PairwiseMLS(torch.autograd.Function):
    """s[m, k] = ds * sum_l (a - b)^2 / v + ls * sum_l log v + const, v = clamp(va + vb, VAR_EPS),
    with b, vb = key_mu/key_var[index[m, k]] (Eq. 3 without normalisation).

    Chunks reuse three (two in the backward) buffers of `chunk_elements` values and in-place ops.
    The clamp and its mask are skipped when min(va) + min(vb) >= VAR_EPS proves that no pair can
    hit it (the usual case); sum(log v) is taken as the log of products of 4 when that cannot
    under/overflow (`_sum_log`).
    """

    @staticmethod
    def forward(ctx, a, va, key_mu, key_var, index, ds, ls, const, chunk_elements):  # type: ignore[override]
        out = a.new_empty(index.shape)
        step, chunks = _chunks(a.shape[0], index.shape[1] * a.shape[1], chunk_elements)
        may_clamp = bool(va.numel() and key_var.numel() and va.min() + key_var.min() < VAR_EPS)
        grouped_log = bool(a.shape[1] % 4 == 0 and va.numel() and key_var.numel()
                           and va.max() + key_var.max() < _GROUPED_LOG_MAX)
        bufs = [a.new_empty(step * index.shape[1] * a.shape[1]) for _ in range(3)]
        for rows in chunks:
            v = _gather(key_var, index[rows], bufs[0]).add_(va[rows, None])
            if may_clamp:
                v.clamp_(min=VAR_EPS)
            d2v = _gather(key_mu, index[rows], bufs[1]).sub_(a[rows, None]).square_().div_(v)
            torch.sum(d2v, -1, out=out[rows])
            out[rows] *= ds
            out[rows] += (_sum_log(v, bufs[2]) if grouped_log else v.log_().sum(-1)).mul_(ls)
        ctx.save_for_backward(a, va, key_mu, key_var, index)
        ctx.ds, ctx.ls, ctx.chunk_elements, ctx.may_clamp = ds, ls, chunk_elements, may_clamp
        return out.add_(const)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        a, va, key_mu, key_var, index = ctx.saved_tensors
        grad_a, grad_va = torch.empty_like(a), torch.empty_like(va)
        g = grad.unsqueeze(1)  # [M, 1, K]
        step, chunks = _chunks(a.shape[0], index.shape[1] * a.shape[1], ctx.chunk_elements)
        bufs = [a.new_empty(step * index.shape[1] * a.shape[1]) for _ in range(2)]
        for rows in chunks:
            v = _gather(key_var, index[rows], bufs[0]).add_(va[rows, None])
            live = v >= VAR_EPS if ctx.may_clamp else None  # the clamp passes no gradient to var
            inv = (v.clamp_(min=VAR_EPS) if ctx.may_clamp else v).reciprocal_()
            t = _gather(key_mu, index[rows], bufs[1]).sub_(a[rows, None]).mul_(inv)  # (b - a) / v
            grad_a[rows] = torch.bmm(g[rows], t).squeeze(1)
            w = inv.mul_(ctx.ls).addcmul_(t, t, value=-ctx.ds)  # d/dva of ds (a-b)^2/v + ls log v
            if live is not None:
                w.mul_(live)
            grad_va[rows] = torch.bmm(g[rows], w).squeeze(1)
        return grad_a.mul_(-2 * ctx.ds), grad_va, None, None, None, None, None, None, None


class _PairwiseDot(torch.autograd.Function):
    """s[m, k] = <a[m], key_mu[index[m, k]]> (cosine similarity for unit vectors)."""

    @staticmethod
    def forward(ctx, a, key_mu, index, chunk_elements):  # type: ignore[override]
        out = a.new_empty(index.shape)
        step, chunks = _chunks(a.shape[0], index.shape[1] * a.shape[1], chunk_elements)
        buf = a.new_empty(step * index.shape[1] * a.shape[1])
        for rows in chunks:
            out[rows] = torch.bmm(_gather(key_mu, index[rows], buf), a[rows, :, None]).squeeze(2)
        ctx.save_for_backward(key_mu, index)
        ctx.chunk_elements = chunk_elements
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        key_mu, index = ctx.saved_tensors
        grad_a = grad.new_empty(index.shape[0], key_mu.shape[1])
        step, chunks = _chunks(index.shape[0], index.shape[1] * key_mu.shape[1], ctx.chunk_elements)
        buf = grad.new_empty(step * index.shape[1] * key_mu.shape[1])
        for rows in chunks:
            grad_a[rows] = torch.bmm(grad[rows, None], _gather(key_mu, index[rows], buf)).squeeze(1)
        return grad_a, None, None, None


def pairwise_similarity(
    anchor_mu: Tensor,
    anchor_var: Optional[Tensor],
    key_mu: Tensor,
    key_var: Optional[Tensor],
    index: Tensor,
    *,
    reduction: str = "mean",
    include_const: bool = False,
    log_det: str = "same",
    chunk_elements: Optional[int] = None,
) -> Tensor:
    """Similarity of every anchor to its keys: anchor_mu [M, D], key tables [T, D], index [M, K]
    -> [M, K]. With variances: MLS (Eq. 3) of already-normalised means, `reduction` sum | mean
    (= sum / D), `log_det` same | mean (see `_mls_constants`); without: the dot product (cosine
    similarity of unit vectors). Keys get no grad."""
    if index.dim() != 2 or index.shape[0] != anchor_mu.shape[0]:
        raise ValueError(f"index must be [M, K] with M = {anchor_mu.shape[0]}, got {tuple(index.shape)}")
    key_mu = key_mu.detach().to(anchor_mu.dtype)
    chunk_elements = _resolve_chunk(chunk_elements, anchor_mu.device)
    if anchor_var is None or key_var is None:
        if anchor_var is not None or key_var is not None:
            raise ValueError("pairwise_similarity needs variances for both anchors and keys, or neither")
        return _PairwiseDot.apply(anchor_mu, key_mu, index, chunk_elements)
    ds, ls, const = _mls_constants(anchor_mu.shape[1], reduction, include_const, log_det)
    key_var = key_var.detach().to(anchor_var.dtype)
    return _PairwiseMLS.apply(anchor_mu, anchor_var, key_mu, key_var, index, ds, ls, const, chunk_elements)


def shared_point_similarity(
    anchor_mu: Tensor,
    anchor_var: Optional[Tensor],
    points: Tensor,
    *,
    reduction: str = "mean",
    include_const: bool = False,
    log_det: str = "same",
) -> Tensor:
    """Similarity of anchors [K, A, D] to keys shared by all the anchors of a class, points
    [K, n, D] with variance 0 (virtual negatives) -> [K, A, n]. Then v = clamp(va) does not depend
    on the key and the MLS expands into matmuls: sum (a - z)^2 / v = sum a^2/v - 2 (a/v).z + (1/v).z^2.
    (In float32 the expansion rounds to ~1e-7 of sum (a^2 + z^2) / v instead of sum (a - z)^2 / v.)
    Without variances: the dot product. Plain autograd; the points get no gradient."""
    points = points.detach()
    if anchor_var is None:
        return torch.bmm(anchor_mu, points.transpose(1, 2))
    va = anchor_var.clamp(min=VAR_EPS)
    inv = va.reciprocal()
    ds, ls, const = _mls_constants(anchor_mu.shape[-1], reduction, include_const, log_det)
    own = (ds * (anchor_mu.square() * inv).sum(-1) + ls * va.log().sum(-1)).unsqueeze(-1)  # [K, A, 1]
    cross = torch.baddbmm(own, anchor_mu * inv, points.transpose(1, 2), alpha=-2.0 * ds)
    return torch.baddbmm(cross, inv, points.square().transpose(1, 2), alpha=ds) + const


@dataclass
class KeySet:
    """One group of keys for the K anchor classes: a detached table `mu` [T, D] (and `var` [T, D]
    for probabilistic keys) referenced by `index` [K, A or 1, n] (1 = shared by all the anchors of
    a class); `valid` [K, n] masks slots out of the softmax (None = all valid). `points=True`
    marks keys of variance 0 (VNs; `var` is ignored): shared ones take the matmul path."""

    mu: Tensor
    var: Optional[Tensor]
    index: Tensor
    valid: Optional[Tensor] = None
    points: bool = False


def _keyset_similarity(ks: KeySet, anchor_mu: Tensor, anchor_var: Optional[Tensor], reduction: str,
                       include_const: bool, log_det: str, chunk_elements: Optional[int]) -> Tensor:
    """[K*A, n] similarities of the anchors [K, A, D] to one KeySet."""
    num_classes, num_anchors, dim = anchor_mu.shape
    n = ks.index.shape[-1]
    if ks.points and ks.index.shape[1] == 1:
        points = ks.mu.index_select(0, ks.index.reshape(-1)).view(num_classes, n, dim).to(anchor_mu.dtype)
        return shared_point_similarity(anchor_mu, anchor_var, points, reduction=reduction,
                                       include_const=include_const, log_det=log_det).reshape(-1, n)
    key_var = torch.zeros_like(ks.mu) if ks.points and anchor_var is not None else ks.var
    flat_var = None if anchor_var is None else anchor_var.reshape(-1, dim)
    index = ks.index.expand(num_classes, num_anchors, n).reshape(-1, n)
    return pairwise_similarity(anchor_mu.reshape(-1, dim), flat_var, ks.mu, key_var, index,
                               reduction=reduction, include_const=include_const, log_det=log_det,
                               chunk_elements=chunk_elements)


def info_nce(
    anchor_mu: Tensor,
    anchor_var: Optional[Tensor],
    keys: Sequence[KeySet],
    *,
    temperature: float,
    reduction: str = "mean",
    include_const: bool = False,
    log_det: str = "same",
    chunk_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 15 per anchor class: anchors [K, A, D] against keys (the first KeySet holds the one
    positive per anchor) -> [K], the mean over a class's anchors of -log softmax(s / tau)[positive]."""
    num_classes, num_anchors, _ = anchor_mu.shape
    logits, masks = [], []
    for ks in keys:
        n = ks.index.shape[-1]
        logits.append(_keyset_similarity(ks, anchor_mu, anchor_var, reduction, include_const, log_det,
                                         chunk_elements))
        valid = ks.valid if ks.valid is not None else ks.index.new_ones(num_classes, n, dtype=torch.bool)
        masks.append(valid[:, None].expand(num_classes, num_anchors, n).reshape(-1, n))
    scores = torch.cat(logits, 1) / temperature  # [K*A, 1 + keys]
    scores = scores.masked_fill(~torch.cat(masks, 1), -math.inf)
    per_anchor = torch.logsumexp(scores, 1) - scores[:, 0]
    return per_anchor.view(num_classes, num_anchors).mean(1)
