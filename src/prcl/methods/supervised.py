"""Supervised baseline: cross-entropy on the labeled images only (Eq. 13)."""

from __future__ import annotations

import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.methods.base import Method, StepLosses, register


@register("supervised")
class Supervised(Method):
    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        logits = student(labeled["image"], heads=False)["logits"]
        return StepLosses({"sup": F.cross_entropy(logits, labeled["mask"], ignore_index=IGNORE_INDEX)})
