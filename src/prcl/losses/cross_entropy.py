"""The supervised loss on labeled images, `method.supervised_loss`: plain cross-entropy, or UniMatch's
online hard example mining (OHEM) for Cityscapes, where most pixels are easy road and sky."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7,
                       min_kept: int = 200_000) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only (UniMatch's `ProbOhemCrossEntropy2d`).

    A labeled pixel is hard when the softmax probability of its true class is ≤ the cut, where the cut is
    `threshold`, raised to the `min_kept`-th smallest true-class probability when fewer than `min_kept`
    pixels would pass it. When the batch has no more than `min_kept` labeled pixels, every one is kept
    (plain cross-entropy). The selection carries no gradient. logits `[B, C, H, W]`, target `[B, H, W]`
    with `IGNORE_INDEX`; `min_kept` counts the pixels of this call (per process under DDP, as UniMatch)."""
    valid = target != IGNORE_INDEX
    n_valid = int(valid.sum())
    if n_valid == 0 or n_valid <= min_kept:
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        safe = target.masked_fill(~valid, 0)
        p_true = logits.detach().float().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # [B, H, W]
        cut = threshold
        if min_kept > 0:
            cut = max(threshold, float(p_true[valid].kthvalue(min_kept).values))
        hard = valid & (p_true <= cut)
    return F.cross_entropy(logits, target.masked_fill(~hard, IGNORE_INDEX), ignore_index=IGNORE_INDEX)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", *, ohem_threshold: float = 0.7,
                    ohem_min_kept: int = 200_000) -> torch.Tensor:
    """Ls of every method: `kind` = `ce` (cross-entropy over the labeled pixels) or `ohem`
    (`ohem_cross_entropy`)."""
    if kind == "ohem":
        return ohem_cross_entropy(logits, target, ohem_threshold, ohem_min_kept)
    if kind != "ce":
        raise ValueError(f"method.supervised_loss must be 'ce' or 'ohem', got {kind!r}")
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
