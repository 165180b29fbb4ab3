"""Mean teacher (Sec. 3.1) and ClassMix: the teacher labels the weak view, the student learns the
strong (optionally mixed) view with the confidence-weighted cross-entropy of Eq. 14."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.data.mixing import classmix_masks, cutmix_masks, mix_with_partner
from prcl.methods.base import Method, register


def weighted_pseudo_label_loss(
    logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Eq. 14: mean over images of ω·CE, with ω = the fraction of the image's (non-ignored) pixels
    whose teacher confidence is ≥ δu. logits `[B, C, H, W]`, pseudo/confidence `[B, H, W]`."""
    valid = pseudo != IGNORE_INDEX
    ce = F.cross_entropy(logits, pseudo, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W]
    n_valid = valid.flatten(1).sum(1).clamp(min=1)
    omega = ((confidence >= threshold) & valid).flatten(1).sum(1) / n_valid
    ce_per_image = ce.flatten(1).sum(1) / n_valid
    return (omega * ce_per_image).mean()


@torch.no_grad()
def teacher_pseudo_labels(teacher: torch.nn.Module, image: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: arg-max pseudo-labels and their confidences; padded pixels get the ignore label."""
    probs = teacher(image)["logits"].float().softmax(1)
    confidence, pseudo = probs.max(1)
    pseudo[padding] = IGNORE_INDEX
    confidence[padding] = 0.0
    return pseudo, confidence


@register("mean_teacher")
class MeanTeacher(Method):
    uses_teacher = True
    mix = "none"
    wants_heads = False

    def strong_view(self, unlabeled: dict, pseudo: torch.Tensor, confidence: torch.Tensor):
        """The student's input and targets: strong image, mixed with a partner when `mix` is set."""
        image = unlabeled["image_strong"]
        if self.mix == "none":
            return image, pseudo, confidence
        if self.mix == "classmix":
            masks = classmix_masks(pseudo)
        else:
            masks = cutmix_masks(*pseudo.shape, device=pseudo.device)
        return tuple(mix_with_partner(masks, image, pseudo, confidence))

    def losses(self, student, teacher, labeled, unlabeled, progress):
        pseudo, confidence = teacher_pseudo_labels(teacher, unlabeled["image"], unlabeled["padding"])
        image_u, pseudo, confidence = self.strong_view(unlabeled, pseudo, confidence)
        n_l = labeled["image"].shape[0]
        out = student(torch.cat([labeled["image"], image_u]), heads=self.wants_heads)
        logits_l, logits_u = out["logits"][:n_l], out["logits"][n_l:]
        terms = {
            "sup": F.cross_entropy(logits_l, labeled["mask"], ignore_index=IGNORE_INDEX),
            "unsup": self.cfg.method.unsup_weight
            * weighted_pseudo_label_loss(logits_u, pseudo, confidence, self.cfg.method.unsup_threshold),
        }
        stats = {"pseudo_confident": float((confidence >= self.cfg.method.unsup_threshold).float().mean())}
        extra_terms, extra_stats = self.extra_losses(out, labeled["mask"], pseudo, confidence, progress)
        terms.update(extra_terms)
        stats.update(extra_stats)
        return terms, stats

    def extra_losses(self, out: dict, labels: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                     progress: float) -> tuple[dict, dict]:
        """Hook for methods that add terms on the same forward pass (contrastive learning)."""
        return {}, {}


@register("classmix")
class ClassMix(MeanTeacher):
    """Mean teacher with ClassMix (or CutMix, `method.mix=cutmix`) on the strong view."""

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.mix: Optional[str] = cfg.method.mix
