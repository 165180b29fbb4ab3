"""UniMatch (Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023): FixMatch (`prcl.methods.fixmatch`) with unified dual-stream perturbations.

- Image-level, dual stream: two strong views of each unlabeled image (independent colour jitter,
  greyscale and blur from the data pipeline, `strong_views = 2`), each CutMix-ed with its own box
  and partner (`partner_shifts`), both learning the one weak view's pseudo-labels.
- Feature-level: Dropout2d(0.5) on the backbone features the decoder reads (stride 4 and last stage)
  of the weak view, in the same forward as the clean weak view (`DeepLabV3Plus.forward(x,
  feature_dropout=0.5)`), learning the same pseudo-labels.
- Loss, as the authors' `unimatch.py`: L = (Ls + Lu)/2, Lu = 0.5·L_fp + 0.25·L_s1 + 0.25·L_s2
  (the paper's Lu = λ·L_fp + (1−λ)/2·(L_s1 + L_s2) with λ = 0.5).

`unimatch_prcl` adds PRCL's contrast (`method.contrastive`, the same `ContrastiveTerm`, GDP and VNs
as `prcl`) on [labeled; strong view 1]: the two strong views are identically distributed, so one
is the same contrast in expectation, at half the sampling cost, and the GDP's Bayesian update
(Eq. 9) is not fed the same pixels twice per step (which would double-count their precision).
"""

from __future__ import annotations

from prcl.methods.base import register
from prcl.methods.fixmatch import FixMatch


@register("unimatch", "unimatch_prcl")
class UniMatch(FixMatch):
    strong_views = 2
    feature_dropout = 0.5
    fp_weight = 0.5
