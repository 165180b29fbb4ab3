"""FixMatch for segmentation as UniMatch's authors re-implement it (Yang et al., CVPR 2023, Sec. 3.1),
and the frame `unimatch` extends: no teacher; the student labels the weak view of each unlabeled image
itself, and learns its strong, CutMix-ed view(s) from those pseudo-labels where it is confident.

    pseudo, conf = student(weak view)  (eval mode, no gradient)
    L = (Ls + Lu) / 2,  Lu = λ·L_fp + (1 − λ)·mean over strong views of L_s      (fixmatch: λ = 0, 1 view)

with each L_s the thresholded cross-entropy of `thresholded_pseudo_label_loss`; plus λc(t)·Lc when
`method.contrastive.enabled` (the PRCL contrast on the first strong view, see `losses`).

**Eval mode for the pseudo-labels** (UniMatch takes an image's own pseudo-labels from a train-mode
forward of [labeled; weak], and its CutMix partner's from an eval-mode pass; here both come from the
eval-mode pass, so fixmatch and unimatch label alike): (1) a pseudo-label is then a function of the
weights alone, not of which images share the batch or of the per-process batch size (under DDP on CPU,
without SyncBN, batch statistics would be those of 1-2 images); (2) our ASPP's Dropout(0.1) is off (the
decoder of UniMatch's model has no dropout, so its train-mode pass is dropout-free too); (3) the pass
changes no state (BatchNorm running statistics are left to the training forward), so skipped steps and
resume need nothing extra; (4) it is the function the trainer evaluates and what the mean teacher's
EMA model computes (always eval mode), so `fixmatch` and `classmix` differ in the EMA, not in BN mode.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.data.transforms import strong_view_keys
from prcl.methods.base import Method, StepLosses, register
from prcl.methods.contrastive import ContrastiveTerm
from prcl.methods.mean_teacher import mix_strong_view, teacher_pseudo_labels

OUTPUTS = ("logits", "mu", "var")
"""The per-image outputs a loss reads (`fused` is not needed)."""


def thresholded_pseudo_label_loss(logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                                  threshold: float) -> torch.Tensor:
    """FixMatch's / UniMatch's unlabeled loss: Σ CE(logits, ŷ)·1[conf ≥ τ] over the batch's pixels,
    divided by the number of non-ignored pixels (all of them, confident or not: UniMatch's code divides
    by the count of pixels outside the crop padding, `ignore_mask != 255`). Ignored pixels (`pseudo` = 255:
    padding, also inside a pasted box) count in neither sum. logits `[B, C, H, W]`, pseudo/confidence `[B, H, W]`."""
    valid = pseudo != IGNORE_INDEX
    ce = F.cross_entropy(logits, pseudo, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W], 0 where ignored
    kept = valid & (confidence >= threshold)
    return (ce * kept).sum() / valid.sum().clamp(min=1)


def partner_shifts(batch: int, views: int) -> list[int]:
    """The CutMix partner of image i in strong view k is image i − shift_k of the batch: 1, 2, ... (never
    the image itself while the batch has another one), so the views get different partners when the batch
    has more than two images. With two, both views pair with the other image (as in UniMatch, whose two
    strong views share one partner image and differ in its augmentation and in the box)."""
    return [1 + k % max(batch - 1, 1) for k in range(views)]


@torch.no_grad()
def own_pseudo_labels(student: torch.nn.Module, image: torch.Tensor,
                      padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's arg-max pseudo-labels and confidences on `image`, in eval mode without gradient
    (the module docstring says why); its train/eval mode is restored afterwards."""
    training = student.training
    student.eval()
    try:
        return teacher_pseudo_labels(lambda x: student(x, heads=False), image, padding)
    finally:
        student.train(training)


def _rows(out: dict[str, torch.Tensor], start: int, stop: Optional[int] = None) -> dict[str, torch.Tensor]:
    return {k: out[k][start:stop] for k in OUTPUTS if k in out}


def _cat(*outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


@register("fixmatch")
class FixMatch(Method):
    """`strong_views`, `feature_dropout` and `fp_weight` (λ) are what `UniMatch` changes."""

    uses_unlabeled = True
    strong_views = 1
    feature_dropout = 0.0  # p of the feature-perturbation stream's Dropout2d; 0 = no such stream
    fp_weight = 0.0  # λ: the share of Lu that the feature-perturbation stream gets

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.mix: str = cfg.method.mix
        self.contrast: Optional[ContrastiveTerm] = (ContrastiveTerm(cfg, num_classes)
                                                    if cfg.method.contrastive.enabled else None)

    def forward_streams(self, student, image_l: torch.Tensor, weak: torch.Tensor, strong: list[torch.Tensor]):
        """Student outputs on the labeled images, on each strong view, and the perturbed stream's logits
        on the weak view (None without one). FixMatch: one forward of [labeled; strong]; with a feature
        stream, UniMatch's two: [labeled; weak] with the perturbed twin, then [strong 1; strong 2]."""
        heads = self.contrast is not None
        n_l, n_u = image_l.shape[0], weak.shape[0]
        if not self.feature_dropout:
            out = student(torch.cat([image_l, *strong]), heads=heads)
            return _rows(out, 0, n_l), [_rows(out, n_l + k * n_u, n_l + (k + 1) * n_u) for k in range(len(strong))], None
        first = student(torch.cat([image_l, weak]), heads=heads, feature_dropout=self.feature_dropout)
        second = student(torch.cat(strong), heads=heads)
        return (_rows(first, 0, n_l), [_rows(second, k * n_u, (k + 1) * n_u) for k in range(len(strong))],
                first["logits_fp"][n_l:])

    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        m = self.cfg.method
        pseudo, confidence = own_pseudo_labels(student, unlabeled["image"], unlabeled["padding"])
        shifts = partner_shifts(pseudo.shape[0], self.strong_views)
        views = [mix_strong_view(self.mix, unlabeled[key], pseudo, confidence, shift=s)  # (image, pseudo, conf)
                 for key, s in zip(strong_view_keys(self.strong_views), shifts)]
        out_l, outs_s, logits_fp = self.forward_streams(student, labeled["image"], unlabeled["image"],
                                                        [v[0] for v in views])
        tau = m.unsup_threshold
        per_view = [thresholded_pseudo_label_loss(o["logits"], p, c, tau) for o, (_, p, c) in zip(outs_s, views)]
        valid = pseudo != IGNORE_INDEX
        stats = {"pseudo_confident": float(((confidence >= tau) & valid).sum() / valid.sum().clamp(min=1))}
        stats.update({f"unsup/s{k + 1}": float(v.detach()) for k, v in enumerate(per_view)})
        half = 0.5  # UniMatch: (Ls + Lu) / 2
        terms = {"sup": half * F.cross_entropy(out_l["logits"], labeled["mask"], ignore_index=IGNORE_INDEX),
                 "unsup": half * m.unsup_weight * (1 - self.fp_weight) * torch.stack(per_view).mean()}
        if logits_fp is not None:
            fp = thresholded_pseudo_label_loss(logits_fp, pseudo, confidence, tau)
            terms["unsup_fp"] = half * m.unsup_weight * self.fp_weight * fp
            stats["unsup/fp"] = float(fp.detach())
        step = StepLosses(terms, stats)
        if self.contrast is not None:  # on [labeled; strong view 1] with view 1's mixed pseudo-labels
            _, pseudo_1, confidence_1 = views[0]
            step.update(self.contrast(_cat(out_l, outs_s[0]), labeled["mask"], pseudo_1, confidence_1, progress))
        return step

    def prototypes(self) -> dict[str, torch.Tensor]:
        return self.contrast.prototypes() if self.contrast is not None else {}
