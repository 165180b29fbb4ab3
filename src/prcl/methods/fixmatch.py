"""FixMatch for segmentation as UniMatch's authors re-implement it (Yang et al., CVPR 2023, Sec. 3.1),
and the frame `unimatch` extends: no teacher; the student labels the weak view of each unlabeled image
itself, and learns its strong, CutMix-ed view from those pseudo-labels where it is confident.

    ŷ, conf = student(weak view)                     (eval mode, no gradient)
    Ls = CE(student(labeled), y)
    Lu = Σ CE(student(strong view), ŷ)·1[conf ≥ τ] / #pixels      (`thresholded_pseudo_label_loss`)
    L  = (Ls + Lu) / 2  (+ λc(t)·Lc / 2 with `method.contrastive.enabled`, the rule of `prcl.methods.base`)

`UniMatch` (`prcl.methods.unimatch`) changes two hooks: `forward_streams` (which forwards the student
runs) and `unsupervised_loss` (Lu); `UniMatchV2` (`prcl.methods.unimatch_v2`) also takes ŷ from an EMA
teacher (`weak_pseudo_labels`). The rest of the step is this file's `losses`.

**Eval mode for the pseudo-labels** (UniMatch takes an image's own pseudo-labels from a train-mode
forward of [labeled; weak], and its CutMix partner's from an eval-mode pass; here both come from the
eval-mode pass, so fixmatch and unimatch label alike): (1) a pseudo-label is then a function of the
weights alone, not of which images share the batch or of the per-process batch size (under DDP on CPU,
without SyncBN, batch statistics would be those of 1-2 images); (2) our ASPP's Dropout(0.1) is off (the
decoder of UniMatch's model has no dropout, so its train-mode pass is dropout-free too); (3) the pass
changes no state (BatchNorm running statistics are left to the training forward), so skipped steps and
resume need nothing extra; (4) it is the function the trainer evaluates and what the mean teacher's
EMA model computes (always eval mode), so `fixmatch` and `classmix` differ in the EMA, not in BN mode.
The weak views therefore never enter train-mode BatchNorm statistics in `fixmatch` (UniMatch's FixMatch
forwards [labeled; weak] in train mode); `docs/reproduce.md` lists the expected effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.data.mixing import MixedView, mix_strong_view, partner_shifts
from prcl.data.transforms import strong_view_keys
from prcl.distributed import world_size
from prcl.methods.base import Method, StepLosses, register
from prcl.methods.class_balance import ClassBalance, Threshold
from prcl.methods.contrastive_term import ContrastiveTerm
from prcl.methods.pseudo_label_noise import PseudoLabelNoise
from prcl.methods.pseudo_labels import confident_fraction, student_pseudo_labels, teacher_pseudo_labels

Outputs = dict[str, torch.Tensor]
"""A student forward's outputs for some rows: `logits`, and `mu`/`var` where the contrast reads them."""


def thresholded_pseudo_label_loss(logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                                  threshold: Threshold, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FixMatch's / UniMatch's unlabeled loss: Σ CE(logits, ŷ)·1[conf ≥ τ] over the batch's pixels,
    divided by the number of non-ignored pixels (all of them, confident or not: UniMatch's code divides
    by the count of pixels outside the crop padding, `ignore_mask != 255`). Ignored pixels (`pseudo` = 255:
    padding, also inside a pasted box) count in neither sum. τ is one threshold or one per pixel `[B, H, W]`
    (class-wise thresholds); `weight` `[B, H, W]` scales each pixel's CE (class-balanced weighting).
    logits `[B, C, H, W]`, pseudo/confidence `[B, H, W]`."""
    valid = pseudo != IGNORE_INDEX
    ce = F.cross_entropy(logits, pseudo, ignore_index=IGNORE_INDEX, reduction="none")  # [B, H, W], 0 where ignored
    if weight is not None:
        ce = ce * weight
    kept = valid & (confidence >= threshold)
    return (ce * kept).sum() / valid.sum().clamp(min=1)


@dataclass
class WeakPseudoLabels:
    """The student's own pseudo-labels on the weak view, before mixing."""

    pseudo: torch.Tensor  # [B_u, H, W], 255 on crop padding
    confidence: torch.Tensor  # [B_u, H, W]
    probs: Optional[torch.Tensor] = None  # [B_u, C, H, W], the labeler's softmax before alignment


@dataclass
class StudentStreams:
    """The student's outputs of one step, by stream, whatever forwards produced them."""

    labeled: Outputs  # on the labeled images (with `mu`/`var` when the contrast is on)
    strong: list[Outputs]  # on each strong view, in `strong_view_keys` order (view 1 with `mu`/`var`)
    weak_perturbed_logits: Optional[torch.Tensor] = None  # UniMatch's feature-perturbed weak view


def take_rows(out: Outputs, start: int, stop: int, with_heads: bool) -> Outputs:
    """Rows [start, stop) of a forward's `logits` and, with `with_heads`, of its `mu`/`var` (a forward run
    with `heads=slice(0, n)` has `mu`/`var` for its first n rows only, so only ranges inside them qualify)."""
    rows = {"logits": out["logits"][start:stop]}
    if with_heads:
        rows.update({k: out[k][start:stop] for k in ("mu", "var") if k in out})
    return rows


def contrast_rows(n: int, enabled: bool) -> slice | bool:
    """The `heads` argument of a student forward whose first `n` rows feed the contrast."""
    return slice(0, n) if enabled else False


@register("fixmatch")
class FixMatch(Method):
    strong_views = 1
    loss_scale = 0.5  # UniMatch's code: (Ls + Lu) / 2
    shrinking_remedy = "method.class_balance.alignment=distribution method.class_balance.threshold=adaptive"

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        method = cfg.method
        self.mix: str = method.mix
        self.threshold: float = method.unsup_threshold  # τ
        self.contrast: Optional[ContrastiveTerm] = (ContrastiveTerm(cfg, num_classes)
                                                    if method.contrastive.enabled else None)
        self.noise = PseudoLabelNoise(cfg, num_classes)  # `method.pseudo_label_noise` (0: identity)
        self.balance = ClassBalance(cfg, num_classes)  # `method.class_balance`: statistics, remedies

    def forward_streams(self, student, labeled: torch.Tensor, weak: torch.Tensor,
                        strong: list[torch.Tensor]) -> StudentStreams:
        """FixMatch's one forward: [labeled; strong] (the weak view was labeled without gradient)."""
        n_l = labeled.shape[0]
        with_heads = self.contrast is not None
        out = student(torch.cat([labeled, strong[0]]), heads=with_heads)
        return StudentStreams(labeled=take_rows(out, 0, n_l, with_heads),
                              strong=[take_rows(out, n_l, out["logits"].shape[0], with_heads)])

    def unsupervised_loss(self, streams: StudentStreams, views: list[MixedView],
                          weak: WeakPseudoLabels) -> StepLosses:
        """FixMatch: Lu = L_s, the strong view learning its mixed pseudo-labels."""
        (strong,), (view,) = streams.strong, views
        return StepLosses({"unsup": self.pseudo_label_ce(strong["logits"], view.pseudo, view.confidence)})

    def pseudo_label_ce(self, logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """`thresholded_pseudo_label_loss` at τ, with the class-wise thresholds and weights of
        `method.class_balance` for these pseudo-labels (one τ and no weights by default)."""
        return thresholded_pseudo_label_loss(logits, pseudo, confidence, self.balance.thresholds(pseudo, self.threshold),
                                             self.balance.weights(pseudo))

    def weak_pseudo_labels(self, student, teacher, unlabeled: dict[str, torch.Tensor],
                           progress: float) -> WeakPseudoLabels:
        """ŷ and its confidence on the weak view: the student's own (FixMatch, UniMatch; `teacher` is None)
        or the EMA teacher's (methods with `uses_teacher`: UniMatch V2); then `method.pseudo_label_noise`."""
        label = teacher_pseudo_labels if self.uses_teacher else student_pseudo_labels
        labels = label(teacher if self.uses_teacher else student, unlabeled["image"], unlabeled["padding"],
                       self.balance.align)
        return WeakPseudoLabels(self.noise(labels, progress), labels.confidence, labels.probs)

    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        """One step (the loss of the module docstring)."""
        weak = self.weak_pseudo_labels(student, teacher, unlabeled, progress)
        self.balance.observe(labeled["mask"], weak.probs, weak.pseudo, weak.confidence, self.threshold, progress)
        shifts = partner_shifts(weak.pseudo.shape[0] * world_size(), self.strong_views)
        truth = [unlabeled["truth"]] if "truth" in unlabeled else []  # diagnostics only: mixed along, never a loss
        views = [mix_strong_view(self.mix, unlabeled[key], weak.pseudo, weak.confidence, *truth, shift=shift)
                 for key, shift in zip(strong_view_keys(self.strong_views), shifts)]
        streams = self.forward_streams(student, labeled["image"], unlabeled["image"], [v.image for v in views])

        supervised = self.supervised_loss(streams.labeled["logits"], labeled["mask"])
        unsupervised = self.unsupervised_loss(streams, views, weak)
        weight = self.unsupervised_weight(progress)
        step = StepLosses({"sup": supervised, **{k: weight * v for k, v in unsupervised.terms.items()}},
                          {"pseudo_confident": confident_fraction(weak.pseudo, weak.confidence, self.threshold),
                           **unsupervised.stats, **mean_stats([v.stats for v in views]),
                           **self.balance.stats(weak.pseudo, weak.confidence, self.threshold, unlabeled.get("truth"))})
        if self.contrast is not None:  # on [labeled; strong view 1], with view 1's mixed pseudo-labels
            first = views[0]
            both = {k: torch.cat([streams.labeled[k], streams.strong[0][k]]) for k in streams.labeled}
            step.update(self.contrast(both, labeled["mask"], first.pseudo, first.confidence, progress, *first.aligned))
        return step.scaled(self.loss_scale)

    def prototypes(self) -> dict[str, torch.Tensor]:
        return self.contrast.prototypes() if self.contrast is not None else {}


def mean_stats(per_view: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic averaged over the views that report it."""
    keys = {k for stats in per_view for k in stats}
    return {k: sum(s[k] for s in per_view if k in s) / sum(k in s for s in per_view) for k in sorted(keys)}
