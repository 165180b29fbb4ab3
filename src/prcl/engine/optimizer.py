"""The optimiser: SGD (the paper) or AdamW (the CPU demo), one group per learning rate."""

from __future__ import annotations

import torch

from prcl.config import OptimConfig


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """Parameter groups from `model.param_groups()`: the backbone at `o.lr`, the decoder and heads at
    `o.lr · o.head_lr_scale` (one group with the backbone when the scale is 1), the probability head (if
    any) at `o.prob_head_lr` (the paper's "soft freeze" of the σ² head, Sec. 4.1), or at `o.lr · o.prob_head_lr_scale`
    when that is set."""
    groups = model.param_groups()
    if o.head_lr_scale == 1:
        param_groups = [{"params": groups["backbone"] + groups["head"], "lr": o.lr}]
    else:
        param_groups = [{"params": groups["backbone"], "lr": o.lr},
                        {"params": groups["head"], "lr": o.lr * o.head_lr_scale}]
    if groups["prob_head"]:
        prob_lr = o.prob_head_lr if o.prob_head_lr_scale is None else o.lr * o.prob_head_lr_scale
        param_groups.append({"params": groups["prob_head"], "lr": prob_lr})
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    return torch.optim.AdamW(param_groups, lr=o.lr, weight_decay=o.weight_decay)
