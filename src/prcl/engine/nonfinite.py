"""The trainer's numerical guard: a NaN/Inf loss or gradient stops the run (naming the last good
checkpoint) or, with `train.skip_nonfinite`, skips the step after undoing what its forward pass changed.

Every answer is the same on every process (one tiny all-reduce), so all ranks stop or skip together.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from prcl import distributed as dist


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/Inf; the message names the iteration and the last checkpoint."""


def finite_everywhere(x: torch.Tensor) -> bool:
    """Whether `x` is finite on every process (one tiny all-reduce under DDP)."""
    bad = (~torch.isfinite(x.detach())).any().float().reshape(1)
    return dist.all_reduce_sum(bad).item() == 0


def guarded_backward(loss: torch.Tensor, model: nn.Module, scaler: torch.amp.GradScaler) -> Optional[str]:
    """Backpropagate a finite loss. Returns what is non-finite ("loss" or "gradient") or None."""
    if not finite_everywhere(loss):
        return "loss"
    scaler.scale(loss).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if scaler.is_enabled() or not grads:  # fp16: the scaler skips overflowing steps itself
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # torch < 2.6
    return None if finite_everywhere(norm) else "gradient"


class StepUndo:
    """Copies of what a forward pass changes (BatchNorm statistics, prototypes, memory bank), taken before
    a step so that a skipped step leaves no trace."""

    def __init__(self, model: nn.Module, method: nn.Module) -> None:
        self.model, self.method = model, method
        self.buffers = [b.detach().clone() for b in model.buffers()]
        self.method_state: dict[str, Any] = {k: v.detach().clone() for k, v in method.state_dict().items()}

    @torch.no_grad()
    def restore(self) -> None:
        for buffer, saved in zip(self.model.buffers(), self.buffers):
            buffer.copy_(saved)
        self.method.load_state_dict(self.method_state)
