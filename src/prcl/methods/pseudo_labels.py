"""Pseudo-labels (Eq. 1) and the statistic every method reports about them, each defined once.

A pseudo-label is the arg-max class of a network's softmax on the weak view, its confidence the max
probability; crop padding gets the ignore label and confidence 0. Who labels differs by method: the
EMA teacher (`teacher_pseudo_labels`: mean teacher, ClassMix, PRCL) or the student itself in eval mode
(`student_pseudo_labels`: FixMatch, UniMatch).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from prcl import IGNORE_INDEX


Align = Callable[[torch.Tensor], torch.Tensor]
"""Maps the labeler's softmax `[B, C, H, W]` to the probabilities the arg-max reads (`ClassBalance.align`)."""


class PseudoLabels(NamedTuple):
    """Eq. 1 on the weak view, each `[B, H, W]`: the arg-max class, its probability, and the class of
    second-highest probability (read only by `method.pseudo_label_noise_kind=runner_up`); `probs` is the
    labeler's softmax `[B, C, H, W]` before any alignment (the class-balance statistics read it)."""
    pseudo: torch.Tensor
    confidence: torch.Tensor
    runner_up: torch.Tensor
    probs: Optional[torch.Tensor] = None


def argmax_pseudo_labels(logits: torch.Tensor, padding: torch.Tensor, align: Optional[Align] = None) -> PseudoLabels:
    """Eq. 1 from logits `[B, C, H, W]`, on the probabilities `align` makes of the softmax (identity if None);
    padded pixels (`padding` True) get the ignore label (also as runner-up) and confidence 0."""
    probs = logits.detach().float().softmax(1)
    top, classes = (align(probs) if align is not None else probs).topk(2, dim=1)
    pseudo, runner_up, confidence = classes[:, 0].contiguous(), classes[:, 1].contiguous(), top[:, 0].contiguous()
    pseudo[padding] = IGNORE_INDEX
    runner_up[padding] = IGNORE_INDEX
    confidence[padding] = 0.0
    return PseudoLabels(pseudo, confidence, runner_up, probs)


@torch.no_grad()
def teacher_pseudo_labels(teacher: torch.nn.Module, image: torch.Tensor, padding: torch.Tensor,
                          align: Optional[Align] = None) -> PseudoLabels:
    """The EMA teacher's pseudo-labels on the weak view (the teacher is always in eval mode)."""
    return argmax_pseudo_labels(teacher(image)["logits"], padding, align)


@torch.no_grad()
def student_pseudo_labels(student: torch.nn.Module, image: torch.Tensor, padding: torch.Tensor,
                          align: Optional[Align] = None) -> PseudoLabels:
    """The student's own pseudo-labels on the weak view, in eval mode without gradient and without the
    representation heads (`prcl.methods.fixmatch` says why eval mode); its mode is restored afterwards."""
    training = student.training
    student.eval()
    try:
        return argmax_pseudo_labels(student(image, heads=False)["logits"], padding, align)
    finally:
        student.train(training)


def confident_fraction(pseudo: torch.Tensor, confidence: torch.Tensor, threshold: float) -> float:
    """`pseudo_confident`: the fraction of the unlabeled images' pixels outside the crop padding whose
    pseudo-label confidence is ≥ `threshold` (δu for the mean teacher, τ for FixMatch/UniMatch), read
    on the weak view's pseudo-labels before mixing."""
    valid = pseudo != IGNORE_INDEX
    return float(((confidence >= threshold) & valid).sum() / valid.sum().clamp(min=1))
