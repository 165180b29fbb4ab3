"""The mean teacher: an exponential moving average of the student (Sec. 3.1)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """min(1 − 1/(t+1), max_decay): the teacher follows the student closely at the start."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


class EMATeacher(nn.Module):
    """A copy of the student without the representation/probability heads, updated by EMA of the
    student's parameters and floating-point buffers (BN statistics)."""

    def __init__(self, student: nn.Module, max_decay: float = 0.99) -> None:
        super().__init__()
        self.model = copy.deepcopy(student)
        for head in ("rep_head", "prob_head"):
            if getattr(self.model, head, None) is not None:
                setattr(self.model, head, None)
        self.model.requires_grad_(False)
        self.model.eval()
        self.max_decay = max_decay

    def train(self, mode: bool = True) -> "EMATeacher":  # the teacher always predicts in eval mode
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        decay = ema_decay(step, self.max_decay)
        source = dict(student.named_parameters())
        source.update(dict(student.named_buffers()))
        for name, t in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            s = source[name]
            if t.dtype.is_floating_point:
                t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            else:
                t.copy_(s)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x, heads=False)
