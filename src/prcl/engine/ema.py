"""The mean teacher: an exponential moving average of the student (Sec. 3.1)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from prcl.config import Config


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """min(1 − 1/(t+1), max_decay): the teacher follows the student closely at the start."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


def rescaled_ema_decay(decay: float, reference_iterations: int, iterations: int) -> float:
    """The decay whose time constant 1/(1 − decay) is the same fraction of `iterations` as `decay`'s is of
    `reference_iterations`, the run it was made for; at least one step (decay 0: the teacher is the student).
    UniMatch V2's 0.996 over its 39,300 VOC iterations (a 250-step horizon, 0.6% of training) becomes 0.607
    in a 400-iteration run."""
    steps = iterations / ((1.0 - decay) * reference_iterations)
    return 1.0 - 1.0 / max(steps, 1.0)


def teacher_decay(cfg: Config) -> float:
    """`method.ema_decay`, rescaled to `train.iterations` when `method.ema_reference_iterations` is set."""
    method = cfg.method
    if method.ema_reference_iterations is None:
        return method.ema_decay
    return rescaled_ema_decay(method.ema_decay, method.ema_reference_iterations, cfg.train.iterations)


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
