"""The pixel contrast λc(t)·Lc (Eq. 11-12) as a term any method with pseudo-labels can add.

`ContrastiveTerm` turns one student forward pass (on labeled + unlabeled images) into the loss of
`prcl.losses.PixelContrastiveLoss`: labels and pseudo-labels at feature resolution, the δw mask on
unlabeled pixels, λc(t). Which contrast (Baseline, Baseline+, PRCL, the ablations) is the config's
`method.contrastive` section; `method.contrastive.enabled` switches the term on (the presets of
`prcl.config.METHOD_PRESETS` do it for baseline, baseline_plus and prcl).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prcl import IGNORE_INDEX
from prcl.config import Config
from prcl.losses import PixelContrastiveLoss
from prcl.methods.base import StepLosses
from prcl.probabilistic import contrastive_weight


def to_feature_resolution(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a `[B, H, W]` label/confidence map to the feature map."""
    return F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0].to(t.dtype)


class ContrastiveTerm(nn.Module):
    """λc(t)·Lc for a student output with `mu` (and `var` for probabilistic representations)."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg.method.contrastive
        self.loss = PixelContrastiveLoss.from_config(cfg, num_classes)

    def forward(self, out: dict[str, torch.Tensor], labels: torch.Tensor, pseudo: torch.Tensor,
                confidence: torch.Tensor, progress: float) -> StepLosses:
        """`out`: the student's forward on `[labeled; unlabeled]` images; labels `[B_l, H, W]`, pseudo-labels
        and teacher confidences `[B_u, H, W]` at image resolution (aligned with the student's view)."""
        c = self.cfg
        mu = out["mu"].float()
        size = mu.shape[-2:]
        target = torch.cat([labels, pseudo])  # [B_l + B_u, H, W]
        conf = torch.cat([torch.ones_like(labels, dtype=confidence.dtype), confidence])
        target, conf = to_feature_resolution(target, size), to_feature_resolution(conf, size)
        valid = (target != IGNORE_INDEX) & (conf >= c.weak_threshold)
        probs = F.interpolate(out["logits"].detach().float(), size=size, mode="bilinear", align_corners=False).softmax(1)
        var = out["var"].float() if "var" in out else None
        loss, stats = self.loss(mu, var, target, valid, probs)
        weight = contrastive_weight(progress, c.lambda0, c.lambda_alpha)
        stats = {f"contrastive/{k}": v for k, v in stats.items()}
        stats["contrastive/lambda"] = weight
        paths = {"mu": out["mu"]} if var is None else {"mu": out["mu"], "var": out["var"]}
        return StepLosses({"contrastive": weight * loss}, stats, {"contrastive": paths})

    def prototypes(self) -> dict[str, torch.Tensor]:
        """The loss's local (last step), GDP and EMA prototypes, `[C, D]` float32 with NaN rows."""
        loss = self.loss
        if loss.last_local_mean is None:
            return {}
        out = {"local": loss.last_local_mean.float().cpu()}
        for kind, state in (("gdp", loss.gdp), ("ema", loss.ema)):
            if state is not None:
                out[kind] = torch.where(state.initialized[:, None], state.mean,
                                        torch.full_like(state.mean, float("nan"))).float().cpu()
        return out
