"""Segmentation models."""

from __future__ import annotations

from prcl.config import Config
from prcl.models.deeplab import DeepLabV3Plus, ProbabilityHead

def build_model(cfg: Config, num_classes: int) -> DeepLabV3Plus:
    """The student network for `cfg`: a representation head when the method adds the pixel contrast
    (`method.contrastive.enabled`), a probability head when its representations are probabilistic."""
    m, c = cfg.model, cfg.method.contrastive
    contrastive = c.enabled
    return DeepLabV3Plus(
        num_classes,
        m.backbone,
        output_stride=m.output_stride,
        pretrained=m.pretrained,
        weights=m.weights,
        backbone_widths=m.backbone_channels,
        aspp_channels=m.aspp_channels,
        low_level_channels=m.low_level_channels,
        head_channels=m.head_channels,
        rep_dim=m.rep_dim if contrastive else None,
        prob_dim=m.rep_dim if contrastive and cfg.method.contrastive.pr else None,
        prob_activation=m.prob_activation,
        prob_final_norm=m.prob_final_norm,
        rep_trunk_grad=c.trunk_grad,
        prob_trunk_grad=c.trunk_grad if c.var_grad == "trunk" else 0.0,
    )


__all__ = ["DeepLabV3Plus", "ProbabilityHead", "build_model"]
