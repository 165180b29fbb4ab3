"""Supervised baseline: cross-entropy (Eq. 13; or OHEM, `method.supervised_loss`) on the labeled images only."""

from __future__ import annotations

from prcl.methods.base import Method, StepLosses, register


@register("supervised")
class Supervised(Method):
    def losses(self, student, teacher, labeled, unlabeled, progress) -> StepLosses:
        logits = student(labeled["image"], heads=False)["logits"]
        return StepLosses({"sup": self.supervised_loss(logits, labeled["mask"])})
