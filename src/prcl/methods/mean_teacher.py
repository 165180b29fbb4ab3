"""The mean-teacher family (Sec. 3.1): `mean_teacher`, `classmix`, and with the pixel contrast
`baseline`, `baseline_plus` and `prcl` (Table 1). The EMA teacher labels the weak view; the student
learns the strong view, mixed with a partner image by `method.mix` (ClassMix, CutMix or none), with
the confidence-weighted cross-entropy of Eq. 14, plus λc(t)·Lc when `method.contrastive.enabled`.
The names differ only in their presets (`prcl.config.METHOD_PRESETS`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.data.mixing import mix_masks, mix_with_partner
from prcl.methods.base import Method, StepLosses, register
from prcl.methods.contrastive import ContrastiveTerm
from prcl.methods.pseudo_label_noise import PseudoLabelNoise


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


def mix_strong_view(mix: str, image: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                    *aligned: torch.Tensor, shift: int = 1) -> list[torch.Tensor]:
    """The student's input and targets: `image` pasted onto its partner `shift` places back in the
    batch through a ClassMix or CutMix mask (`mix_masks`; `mix="none"`: unchanged). `aligned` maps
    (e.g. the true labels of the reliability diagnostics) are mixed the same way."""
    if mix == "none":
        return [image, pseudo, confidence, *aligned]
    return mix_with_partner(mix_masks(mix, pseudo), image, pseudo, confidence, *aligned, shift=shift)


@register("mean_teacher", "classmix", "baseline", "baseline_plus", "prcl")
class MeanTeacher(Method):
    uses_teacher = True
    uses_unlabeled = True

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.mix: str = cfg.method.mix
        self.contrast: Optional[ContrastiveTerm] = (ContrastiveTerm(cfg, num_classes)
                                                    if cfg.method.contrastive.enabled else None)
        self.noise = PseudoLabelNoise(cfg, num_classes)

    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        m = self.cfg.method
        pseudo, confidence = teacher_pseudo_labels(teacher, unlabeled["image"], unlabeled["padding"])
        pseudo = self.noise(pseudo, confidence, progress)
        truth = unlabeled.get("truth")  # the diagnostics' true labels: mixed along, read after the losses only
        image_u, pseudo, confidence, *truth = mix_strong_view(self.mix, unlabeled["image_strong"], pseudo, confidence,
                                                              *([truth] if truth is not None else []))
        n_l = labeled["image"].shape[0]
        out = student(torch.cat([labeled["image"], image_u]), heads=self.contrast is not None)
        logits_l, logits_u = out["logits"][:n_l], out["logits"][n_l:]
        step = StepLosses(
            {"sup": F.cross_entropy(logits_l, labeled["mask"], ignore_index=IGNORE_INDEX),
             "unsup": m.unsup_weight * weighted_pseudo_label_loss(logits_u, pseudo, confidence, m.unsup_threshold)},
            {"pseudo_confident": float((confidence >= m.unsup_threshold).float().mean())},
        )
        if self.contrast is not None:
            step.update(self.contrast(out, labeled["mask"], pseudo, confidence, progress, *truth))
        return step

    def prototypes(self) -> dict[str, torch.Tensor]:
        return self.contrast.prototypes() if self.contrast is not None else {}
