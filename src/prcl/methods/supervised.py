"""Supervised baseline: cross-entropy on the labelled images only (Eq. 13)."""

from __future__ import annotations

import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.methods.base import Method, register


@register("supervised")
class Supervised(Method):
    def losses(self, student, teacher, labelled, unlabelled, progress):
        logits = student(labelled["image"], heads=False)["logits"]
        return {"sup": F.cross_entropy(logits, labelled["mask"], ignore_index=IGNORE_INDEX)}, {}
