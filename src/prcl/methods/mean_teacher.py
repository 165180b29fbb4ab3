"""The mean-teacher family (Sec. 3.1): `mean_teacher`, `classmix`, and with the pixel contrast
`baseline`, `baseline_plus` and `prcl` (Table 1). The EMA teacher labels the weak view; the student
learns the strong view, mixed with a partner image by `method.mix` (ClassMix, CutMix or none), with
the confidence-weighted cross-entropy of Eq. 14, plus λc(t)·Lc when `method.contrastive.enabled`.
The names differ only in their presets (`prcl.config.presets.METHOD_PRESETS`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.data.mixing import mix_strong_view
from prcl.methods.base import Method, StepLosses, register
from prcl.methods.class_balance import ClassBalance, Threshold
from prcl.methods.contrastive_term import ContrastiveTerm
from prcl.methods.pseudo_label_noise import PseudoLabelNoise
from prcl.methods.pseudo_labels import confident_fraction, teacher_pseudo_labels


def weighted_pseudo_label_loss(
    logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, threshold: Threshold,
    weight: Optional[torch.Tensor] = None, pixels: str = "all",
) -> torch.Tensor:
    """Eq. 14: mean over images of ω·CE, with ω = the fraction of the image's (non-ignored) pixels
    whose teacher confidence is ≥ δu (one δu, or one per pixel `[B, H, W]`: class-wise thresholds).
    `pixels="confident"` (`method.unsup_pixels`): the CE of the confident pixels only, over the image's valid
    pixels, and no ω (FixMatch's loss). `weight` `[B, H, W]` scales each pixel's CE (class-balanced weighting).
    logits `[B, C, H, W]`, pseudo/confidence `[B, H, W]`."""
    valid = pseudo != IGNORE_INDEX
    confident = (confidence >= threshold) & valid
    ce = F.cross_entropy(logits, pseudo, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W]
    if weight is not None:
        ce = ce * weight
    n_valid = valid.flatten(1).sum(1).clamp(min=1)
    if pixels == "confident":
        return ((ce * confident).flatten(1).sum(1) / n_valid).mean()
    omega = confident.flatten(1).sum(1) / n_valid
    ce_per_image = ce.flatten(1).sum(1) / n_valid
    return (omega * ce_per_image).mean()


@register("mean_teacher", "classmix", "baseline", "baseline_plus", "prcl")
class MeanTeacher(Method):
    uses_teacher = True
    shrinking_remedy = "method.unsup_pixels=confident"

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.mix: str = cfg.method.mix
        self.contrast: Optional[ContrastiveTerm] = (ContrastiveTerm(cfg, num_classes)
                                                    if cfg.method.contrastive.enabled else None)
        self.noise = PseudoLabelNoise(cfg, num_classes)
        self.balance = ClassBalance(cfg, num_classes)

    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        method = self.cfg.method
        weak = teacher_pseudo_labels(teacher, unlabeled["image"], unlabeled["padding"], self.balance.align)
        weak_pseudo, weak_confidence = self.noise(weak, progress), weak.confidence
        self.balance.observe(labeled["mask"], weak.probs, weak_pseudo, weak_confidence, method.unsup_threshold,
                             progress)
        truth = [unlabeled["truth"]] if "truth" in unlabeled else []  # diagnostics only: mixed along, never a loss
        view = mix_strong_view(self.mix, unlabeled["image_strong"], weak_pseudo, weak_confidence, *truth)
        image_u, pseudo, confidence = view.image, view.pseudo, view.confidence
        n_l = labeled["image"].shape[0]
        out = student(torch.cat([labeled["image"], image_u]), heads=self.contrast is not None)
        logits_l, logits_u = out["logits"][:n_l], out["logits"][n_l:]
        tau = method.unsup_threshold
        unsup = weighted_pseudo_label_loss(logits_u, pseudo, confidence, self.balance.thresholds(pseudo, tau),
                                           self.balance.weights(pseudo), method.unsup_pixels)
        step = StepLosses(
            {"sup": self.supervised_loss(logits_l, labeled["mask"]), "unsup": self.unsupervised_weight(progress) * unsup},
            {"pseudo_confident": confident_fraction(weak_pseudo, weak_confidence, tau), **view.stats,
             **self.balance.stats(weak_pseudo, weak_confidence, tau, unlabeled.get("truth"))},
        )
        if self.contrast is not None:
            step.update(self.contrast(out, labeled["mask"], pseudo, confidence, progress, *view.aligned))
        return step.scaled(self.loss_scale)

    def prototypes(self) -> dict[str, torch.Tensor]:
        return self.contrast.prototypes() if self.contrast is not None else {}
