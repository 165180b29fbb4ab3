"""Contrastive mean-teacher methods of Table 1: `baseline`, `baseline_plus` and `prcl`.

All three are ClassMix plus λc(t)·Lc (Eq. 11-12) on the representation head; they differ only in the
switches of `method.contrastive` (see `prcl.config.METHOD_PRESETS`), so ablations are configs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.losses import PRCLContrastiveLoss
from prcl.methods.base import register
from prcl.methods.mean_teacher import ClassMix
from prcl.probabilistic import contrastive_weight


def to_feature_resolution(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a `[B, H, W]` label/confidence map to the feature map."""
    return F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0].to(t.dtype)


class ContrastiveMethod(ClassMix):
    wants_heads = True

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        c = cfg.method.contrastive
        self.contrastive = PRCLContrastiveLoss(
            num_classes,
            cfg.model.rep_dim,
            temperature=c.temperature,
            num_anchors=c.num_anchors,
            num_negatives=c.num_negatives,
            strong_threshold=c.strong_threshold,
            probabilistic=c.pr,
            prototype=c.prototype,
            ema_momentum=c.ema_momentum,
            vn_enabled=c.vn.enabled,
            vn_num=c.vn.num,
            vn_beta=c.vn.beta,
            vn_scale=c.vn.scale,
            memory_bank_size=c.memory_bank.size if c.memory_bank.enabled else 0,
            mls_normalize=c.mls.normalize,
            mls_reduction=c.mls.reduction,
            mls_include_const=c.mls.include_const,
            gdp_forgetting=c.gdp_forgetting,
        )

    def extra_losses(self, out, labels, pseudo, confidence, progress):
        c = self.cfg.method.contrastive
        mu = out["mu"].float()
        size = mu.shape[-2:]
        target = torch.cat([labels, pseudo])  # [B_l + B_u, H, W]
        conf = torch.cat([torch.ones_like(labels, dtype=confidence.dtype), confidence])
        target, conf = to_feature_resolution(target, size), to_feature_resolution(conf, size)
        valid = (target != IGNORE_INDEX) & (conf >= c.weak_threshold)
        probs = F.interpolate(out["logits"].detach().float(), size=size, mode="bilinear", align_corners=False).softmax(1)
        var = out["var"].float() if "var" in out else None
        loss, stats = self.contrastive(mu, var, target, valid, probs)
        weight = contrastive_weight(progress, c.lambda0, c.lambda_alpha)
        stats = {f"contrastive/{k}": v for k, v in stats.items()}
        stats["contrastive/lambda"] = weight
        return {"contrastive": weight * loss}, stats


@register("baseline")
class Baseline(ContrastiveMethod):
    """Deterministic μ, cosine similarity, prototypes from the current batch."""


@register("baseline_plus")
class BaselinePlus(ContrastiveMethod):
    """Baseline with EMA-updated prototypes (Eq. 16)."""


@register("prcl")
class PRCL(ContrastiveMethod):
    """Probabilistic representations + MLS, GDP (Eq. 9) and virtual negatives (Eq. 10)."""
