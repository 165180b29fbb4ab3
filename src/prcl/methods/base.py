"""The method interface and its registry."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from prcl.config import Config

METHODS: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def add(cls: type["Method"]) -> type["Method"]:
        METHODS[name] = cls
        cls.name = name
        return cls

    return add


class Method(nn.Module):
    """Computes the loss terms of one iteration. State it keeps across iterations (prototypes, memory
    banks) lives in registered buffers, so it is checkpointed with `state_dict()`."""

    name = "method"
    uses_teacher = False  # needs an EMA teacher and unlabeled data

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

    def losses(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module],
        labeled: dict[str, torch.Tensor],
        unlabeled: Optional[dict[str, torch.Tensor]],
        progress: float,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms (summed by the trainer) and scalar statistics to log; `progress` = t/T."""
        raise NotImplementedError


def build_method(cfg: Config, num_classes: int) -> Method:
    return METHODS[cfg.method.name](cfg, num_classes)
