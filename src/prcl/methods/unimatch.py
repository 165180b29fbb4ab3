"""UniMatch (Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023): FixMatch (`prcl.methods.fixmatch`, whose `losses` runs the step) with
unified dual-stream perturbations. The whole loss, as the authors' `unimatch.py` computes it:

    ŷ, conf = student(weak)                                  (eval mode, no gradient; fixmatch.py says why)
    Ls   = CE(student(labeled), y)
    L_fp = thresholded CE(student_fp(weak), ŷ)              feature perturbation: Dropout2d(0.5) on the
                                                             backbone features the decoder reads
    L_s1, L_s2 = thresholded CE(student(strong k), ŷ mixed)  two strong views, each CutMix-ed with its
                                                             own box and partner (`partner_shifts`)
    Lu = 0.5·L_fp + 0.25·L_s1 + 0.25·L_s2                    (the paper's λ·L_fp + (1 − λ)/2·(L_s1 + L_s2), λ = 0.5)
    L  = (Ls + Lu) / 2

The two strong views have independent colour jitter, greyscale and blur from the data pipeline
(`strong_views = 2`). The feature-perturbed stream runs in the same forward as the clean weak view
(`DeepLabV3Plus.forward(x, feature_dropout=0.5)`), so the decoder's BatchNorm sees both, as in UniMatch.

`unimatch_prcl` adds PRCL's contrast (`method.contrastive`, the same `ContrastiveTerm`, GDP and VNs as
`prcl`) on [labeled; strong view 1], at the weight every method gives it (L = (Ls + Lu + λc·Lc)/2, the
rule of `prcl.methods.base`). One strong view is the same contrast in expectation as both (they are
identically distributed), at half the sampling cost, and the GDP's Bayesian update (Eq. 9) is not fed
the same pixels twice per step (which would double-count their precision). The representation and σ²
heads run on exactly those rows (`heads=slice(...)`), not on the weak or second strong view.
"""

from __future__ import annotations

import torch

from prcl.data.mixing import MixedView
from prcl.methods.base import StepLosses, register
from prcl.methods.fixmatch import FixMatch, StudentStreams, WeakPseudoLabels, contrast_rows, take_rows

FEATURE_DROPOUT = 0.5  # p of the Dropout2d of the feature-perturbed stream
WEIGHT_FP, WEIGHT_S1, WEIGHT_S2 = 0.5, 0.25, 0.25  # Lu's weights (UniMatch's λ = 0.5)


@register("unimatch", "unimatch_prcl")
class UniMatch(FixMatch):
    strong_views = 2

    def forward_streams(self, student, labeled: torch.Tensor, weak: torch.Tensor,
                        strong: list[torch.Tensor]) -> StudentStreams:
        """UniMatch's two forwards: [labeled; weak] with the feature-perturbed twin of the batch, then
        [strong 1; strong 2]. With the contrast, the heads run on the labeled rows and on strong view 1."""
        n_l, n_u = labeled.shape[0], weak.shape[0]
        with_heads = self.contrast is not None
        clean = student(torch.cat([labeled, weak]), heads=contrast_rows(n_l, with_heads),
                        feature_dropout=FEATURE_DROPOUT)
        strong_out = student(torch.cat(strong), heads=contrast_rows(n_u, with_heads))
        return StudentStreams(
            labeled=take_rows(clean, 0, n_l, with_heads),
            strong=[take_rows(strong_out, 0, n_u, with_heads), take_rows(strong_out, n_u, 2 * n_u, False)],
            weak_perturbed_logits=clean["logits_fp"][n_l:],
        )

    def unsupervised_loss(self, streams: StudentStreams, views: list[MixedView],
                          weak: WeakPseudoLabels) -> StepLosses:
        """Lu = 0.5·L_fp + 0.25·L_s1 + 0.25·L_s2: the perturbed weak view learns the weak view's own
        pseudo-labels, each strong view its mixed ones."""
        strong_1, strong_2 = streams.strong
        view_1, view_2 = views
        loss_s1 = self.pseudo_label_ce(strong_1["logits"], view_1.pseudo, view_1.confidence)
        loss_s2 = self.pseudo_label_ce(strong_2["logits"], view_2.pseudo, view_2.confidence)
        loss_fp = self.pseudo_label_ce(streams.weak_perturbed_logits, weak.pseudo, weak.confidence)
        return StepLosses({"unsup": WEIGHT_S1 * loss_s1 + WEIGHT_S2 * loss_s2, "unsup_fp": WEIGHT_FP * loss_fp},
                          {"unsup/s1": float(loss_s1.detach()), "unsup/s2": float(loss_s2.detach()),
                           "unsup/fp": float(loss_fp.detach())})
