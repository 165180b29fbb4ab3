"""Reliability diagnostics: does σ² flag the wrong pseudo-labels? (issue #19)

PRCL's claim is that σ² discounts unreliable pixels: a pixel whose pseudo-label is wrong should carry a
larger σ² than one whose pseudo-label is right. Where the unlabeled images have masks (the built-in
dataset; a folder dataset with masks for its unlabeled images) the trainer knows which pseudo-labels are
wrong and measures it, every `train.diagnostics_every` iterations, over two sets of pixels:

- `confident`: every unlabeled pixel the contrast takes (teacher confidence ≥ δw);
- `anchors`: those drawn as anchors this step (the only ones whose σ² the contrast trains).

For each: the fraction of wrong pseudo-labels, the mean σ² (averaged over D) on wrong and on right
ones, σ²'s AUROC for wrong pseudo-labels within each true class (macro mean: the headline, since over
all pixels, or within a pseudo-label class, which mixes true classes once labels are wrong, the AUROC mostly
measures which class a pixel belongs to; `prcl analyze` groups val pixels the same way) and over all
pixels, and, on the
anchors, the mean ∂Lc/∂σ² (of a pixel's σ² in all dims together, λc(t) divided out) on wrong and on right
ones: negative means gradient descent raises σ² there.

The true labels are read here only, after the loss is computed: they never enter a loss, a sampler or a
threshold (a test checks that the losses and weights are bit-identical with the diagnostic on and off).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from prcl import IGNORE_INDEX
from prcl.methods.base import ReliabilityProbe


def within_class_auroc(scores: np.ndarray, wrong: np.ndarray, classes: np.ndarray) -> Optional[float]:
    """Macro mean over the classes that hold both right and wrong pixels of the AUROC of `scores` as a
    detector of `wrong`; None where no class holds both (σ² that only tells classes apart scores 0.5)."""
    from sklearn.metrics import roc_auc_score

    per_class = [roc_auc_score(wrong[classes == c], scores[classes == c]) for c in np.unique(classes)
                 if 0 < wrong[classes == c].sum() < (classes == c).sum()]
    return float(np.mean(per_class)) if per_class else None


def _auroc(scores: np.ndarray, wrong: np.ndarray) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(wrong, scores)) if 0 < wrong.sum() < wrong.size else None


def _mean(values: Tensor) -> Optional[float]:
    return float(values.double().mean()) if values.numel() else None


def pixel_set_stats(var: Tensor, wrong: Tensor, classes: Tensor, prefix: str,
                    grad: Optional[Tensor] = None) -> dict[str, float]:
    """The statistics of one pixel set: var, wrong, classes (and grad) `[P]`; keys `<prefix>/...`,
    a value that cannot be computed (no wrong pixel, say) is left out."""
    w = wrong.bool()
    out = {"wrong_fraction": _mean(w.float()), "var_wrong": _mean(var[w]), "var_right": _mean(var[~w])}
    scores, labels, groups = var.double().cpu().numpy(), w.cpu().numpy(), classes.cpu().numpy()
    out["auroc_within_class"] = within_class_auroc(scores, labels, groups)
    out["auroc_all"] = _auroc(scores, labels)
    if grad is not None:
        out["grad_wrong"], out["grad_right"] = _mean(grad[w]), _mean(grad[~w])
    return {f"{prefix}/{k}": v for k, v in out.items() if v is not None}


def reliability_stats(probe: ReliabilityProbe, contrastive_term: Tensor) -> dict[str, float]:
    """`reliability/confident/...` and `reliability/anchors/...` (see the module docstring)."""
    known = probe.truth != IGNORE_INDEX
    wrong = probe.pseudo != probe.truth
    var = probe.var.detach()[probe.rows].float().mean(1)  # [B_u, h, w]: σ² averaged over D
    grad = None
    if contrastive_term.requires_grad and probe.var.requires_grad and probe.weight > 0:
        (g,) = torch.autograd.grad(contrastive_term, probe.var, retain_graph=True, allow_unused=True)
        if g is not None:
            grad = g[probe.rows].float().sum(1) / probe.weight  # ∂Lc/∂(the pixel's σ², all dims together)
    stats: dict[str, float] = {}
    for name, chosen in (("confident", probe.confident), ("anchors", probe.anchors)):
        sel = chosen & known
        stats.update(pixel_set_stats(var[sel], wrong[sel], probe.truth[sel], f"reliability/{name}",
                                     grad[sel] if grad is not None and name == "anchors" else None))
    return stats
