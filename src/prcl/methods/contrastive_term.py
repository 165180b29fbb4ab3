"""The pixel contrast λc(t)·Lc (Eq. 11-12) as a term any method with pseudo-labels can add.

`ContrastiveTerm` turns one student forward pass (on labeled + unlabeled images) into the loss of
`prcl.losses.PixelContrastiveLoss`: labels and pseudo-labels at feature resolution, the δw mask on
unlabeled pixels, λc(t). Which contrast (Baseline, Baseline+, PRCL, the ablations) is the config's
`method.contrastive` section; `method.contrastive.enabled` switches the term on (the presets of
`prcl.config.presets.METHOD_PRESETS` do it for baseline, baseline_plus and prcl).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from prcl import IGNORE_INDEX
from prcl.config import Config
from prcl.losses import PixelContrastiveLoss
from prcl.methods.base import ReliabilityProbe, StepLosses
from prcl.probabilistic import contrastive_weight


def to_feature_resolution(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a `[B, H, W]` label/confidence map to the feature map."""
    return F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0].to(t.dtype)


class ContrastiveTerm(nn.Module):
    """λc(t)·Lc for a student output with `mu` (and `var` for probabilistic representations)."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.settings = cfg.method.contrastive  # the `method.contrastive` section
        self.loss = PixelContrastiveLoss.from_config(cfg, num_classes)
        self.loss.record_sample = True  # the anchors of the step, for the reliability diagnostics

    def forward(self, out: dict[str, torch.Tensor], labels: torch.Tensor, pseudo: torch.Tensor,
                confidence: torch.Tensor, progress: float, truth: Optional[torch.Tensor] = None) -> StepLosses:
        """`out`: the student's forward on `[labeled; unlabeled]` images; labels `[B_l, H, W]`, pseudo-labels
        and teacher confidences `[B_u, H, W]` at image resolution (aligned with the student's view).
        `truth` `[B_u, H, W]`, the unlabeled images' true labels where known, only feeds `StepLosses.probe`
        (`prcl.engine.reliability`): it is read after the loss and never changes it."""
        settings = self.settings
        mu = out["mu"].float()
        size = mu.shape[-2:]
        target = torch.cat([labels, pseudo])  # [B_l + B_u, H, W]
        conf = torch.cat([torch.ones_like(labels, dtype=confidence.dtype), confidence])
        target, conf = to_feature_resolution(target, size), to_feature_resolution(conf, size)
        valid = (target != IGNORE_INDEX) & (conf >= settings.weak_threshold)
        probs = F.interpolate(out["logits"].detach().float(), size=size, mode="bilinear", align_corners=False).softmax(1)
        var = out["var"].float() if "var" in out else None
        loss, stats = self.loss(mu, var, target, valid, probs)
        weight = contrastive_weight(progress, settings.lambda0, settings.lambda_alpha)
        stats = {f"contrastive/{k}": v for k, v in stats.items()}
        stats["contrastive/lambda"] = weight
        paths = {"mu": out["mu"]} if var is None else {"mu": out["mu"], "var": out["var"]}
        step = StepLosses({"contrastive": weight * loss}, stats, {"contrastive": paths})
        if truth is not None and var is not None:
            step.probe = self._probe(out["var"], labels.shape[0], target, valid, truth, weight)
        return step

    @torch.no_grad()
    def _probe(self, var: torch.Tensor, n_labeled: int, target: torch.Tensor, valid: torch.Tensor,
               truth: torch.Tensor, weight: float) -> ReliabilityProbe:
        """The unlabeled rows of this step at feature resolution, with the anchors the loss drew."""
        taken = valid & (target != IGNORE_INDEX)  # the loss's valid-pixel table, row-major over (b, h, w)
        anchors = torch.zeros(taken.numel(), dtype=torch.bool, device=taken.device)
        sample = self.loss.last_sample
        if sample is not None and sample.anchor_index.numel():
            anchors[torch.nonzero(taken.flatten()).flatten()[sample.anchor_index.flatten()]] = True
        rows = slice(n_labeled, target.shape[0])
        return ReliabilityProbe(var, rows, target[rows], to_feature_resolution(truth, target.shape[-2:]),
                                taken[rows], anchors.view_as(taken)[rows], weight)

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
