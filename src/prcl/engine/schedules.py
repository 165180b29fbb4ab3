"""Learning-rate and loss-weight schedules."""

from __future__ import annotations

import torch


def poly_factor(iteration: int, total: int, power: float = 0.9) -> float:
    """lr = base_lr · (1 − t/T)^power, applied per iteration (Sec. 4.1)."""
    return (1.0 - min(iteration, total) / total) ** power


def poly_scheduler(optimizer: torch.optim.Optimizer, total: int, power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_factor(it, total, power))
