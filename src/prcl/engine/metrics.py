"""Confusion matrix -> per-class IoU and mIoU, summed across processes."""

from __future__ import annotations

import torch

from prcl import IGNORE_INDEX
from prcl.distributed import all_reduce_sum


class ConfusionMatrix:
    """`mat[t, p]` counts pixels of true class t predicted as p; ignore-labeled pixels are skipped."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"target labels must be in [0, {self.num_classes}) or {IGNORE_INDEX}")
        idx = t * self.num_classes + p
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        all_reduce_sum(self.mat)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
        m = self.mat.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes that occur in ground truth or prediction."""
        return float(torch.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        return float(self.mat.diag().sum() / self.mat.sum().clamp(min=1))
