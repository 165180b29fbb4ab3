"""UniMatch V2 (Yang et al., "UniMatch V2: Pushing the Limit of Semi-Supervised Semantic Segmentation",
arXiv 2410.10777): FixMatch's step (`prcl.methods.fixmatch`) with an EMA teacher and one perturbation
stream that merges image and feature perturbation. The whole loss, as the authors' `unimatch_v2.py`
computes it:

    ŷ, conf = teacher(weak)                       EMA of the student, eval mode, no gradient; decay
                                                  min(1 − 1/(t+1), 0.996), buffers included (`method.ema_decay`)
    Ls   = CE(student(labeled), y)                its own forward (OHEM on Cityscapes: `method.supervised_loss`)
    L_s1, L_s2 = thresholded CE(student([strong 1; strong 2], complementary dropout), ŷ mixed)
                                                  the two strong views, each CutMix-ed with its own box and
                                                  partner, in one forward whose encoder features get
                                                  complementary channel masks (`prcl.models.feature_perturbation`)
    Lu = (L_s1 + L_s2) / 2
    L  = (Ls + Lu) / 2

The trainer evaluates the student and the EMA teacher, as UniMatch V2's code does every epoch, and like it
keeps `best.pt` by the student's mIoU (`authors_choice`; `eval.model` chooses otherwise).

`unimatch_v2_prcl` adds PRCL's contrast on [labeled; strong view 1] at the weight every method gives it
(L = (Ls + Lu + λc·Lc)/2, the rule of `prcl.methods.base`), as `unimatch_prcl` does; strong view 1 carries
its complementary mask, so the contrast sees the student's perturbed features.
"""

from __future__ import annotations

import torch

from prcl.data.mixing import MixedView
from prcl.methods.base import StepLosses, register
from prcl.methods.fixmatch import FixMatch, StudentStreams, WeakPseudoLabels, contrast_rows, take_rows

WEIGHT_S1, WEIGHT_S2 = 0.5, 0.5  # Lu = (L_s1 + L_s2) / 2


@register("unimatch_v2", "unimatch_v2_prcl")
class UniMatchV2(FixMatch):
    uses_teacher = True
    strong_views = 2
    authors_choice = "student"  # its code keeps best.pth by the student's mIoU (the teacher's is logged beside)

    def forward_streams(self, student, labeled: torch.Tensor, weak: torch.Tensor,
                        strong: list[torch.Tensor]) -> StudentStreams:
        """UniMatch V2's two forwards: the labeled images, then [strong 1; strong 2] with complementary
        dropout. With the contrast, the heads run on the labeled rows and on strong view 1."""
        n_u = weak.shape[0]
        with_heads = self.contrast is not None
        labeled_out = student(labeled, heads=with_heads)
        strong_out = student(torch.cat(strong), heads=contrast_rows(n_u, with_heads), complementary_dropout=True)
        return StudentStreams(
            labeled=take_rows(labeled_out, 0, labeled.shape[0], with_heads),
            strong=[take_rows(strong_out, 0, n_u, with_heads), take_rows(strong_out, n_u, 2 * n_u, False)],
        )

    def unsupervised_loss(self, streams: StudentStreams, views: list[MixedView],
                          weak: WeakPseudoLabels) -> StepLosses:
        """Lu = (L_s1 + L_s2) / 2: each strong view learns its own mixed pseudo-labels."""
        (strong_1, strong_2), (view_1, view_2) = streams.strong, views
        loss_s1 = self.pseudo_label_ce(strong_1["logits"], view_1.pseudo, view_1.confidence)
        loss_s2 = self.pseudo_label_ce(strong_2["logits"], view_2.pseudo, view_2.confidence)
        return StepLosses({"unsup": WEIGHT_S1 * loss_s1 + WEIGHT_S2 * loss_s2},
                          {"unsup/s1": float(loss_s1.detach()), "unsup/s2": float(loss_s2.detach())})
