"""DeepLabv3+ with the heads PRCL needs (`SegmentationModel`), all on the 304-channel fused feature.

    backbone ─► ASPP (256) ─► upsample to stride 4 ─┐
        └──► stride-4 features ─► 1×1 conv (48) ────┴─► concat = fused feature [B, 304, H/4, W/4]
    fused ─► segmentation head   Conv3×3-BN-ReLU-Conv1×1 → C logits
    fused ─► representation head, probability head: see `prcl.models.segmentation`
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prcl.models.backbone import backbone_channels, check_feature_strides, create_backbone
from prcl.models.segmentation import (LOG_VAR_LIMIT, PROB_ACTIVATIONS, ProbabilityHead, SegmentationModel,
                                      conv_bn_relu, make_head, scale_gradient)
from prcl.sizes import patch_size

__all__ = ["ASPP", "DeepLabV3Plus", "LOG_VAR_LIMIT", "PROB_ACTIVATIONS", "ProbabilityHead", "conv_bn_relu",
           "make_head", "scale_gradient"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling; rates (6, 12, 18) at output stride 16, doubled at 8."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        # Image pooling without BatchNorm so that a batch of one image per process trains.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabv3+ on a timm CNN (`prcl.models.backbone`); `fused` is at stride 4. `heads` are the keyword
    arguments of `SegmentationModel._init_heads` (`rep_dim`, `prob_dim`, `prob_activation`, ...)."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        *,
        output_stride: int = 16,
        pretrained: bool = False,
        weights: Optional[str] = None,
        backbone_widths: Optional[Sequence[int]] = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        head_channels: int = 256,
        **heads: Any,
    ) -> None:
        super().__init__()
        if patch_size(backbone) > 1:
            raise ValueError(f"DeepLabv3+ reads CNN backbones; {backbone} is a ViT: use DPT (model.decoder=dpt)")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.backbone = create_backbone(
            backbone, output_stride=output_stride, pretrained=pretrained, weights=weights, channels=backbone_widths
        )
        check_feature_strides(self.backbone, output_stride)
        self._init_input_normalization(backbone)
        low_c, high_c = backbone_channels(self.backbone)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(high_c, aspp_channels, rates)
        self.reduce = conv_bn_relu(low_c, low_level_channels, 1)
        fused = aspp_channels + low_level_channels
        self._init_heads(make_head(fused, head_channels, num_classes), fused, head_channels=head_channels, **heads)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[stride-4, last-stage] features -> `[B, 304, H/4, W/4]`: ASPP upsampled, beside the projected
        low-level features."""
        low, high = features
        high = F.interpolate(self.aspp(high), size=low.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([high, self.reduce(low)], dim=1)
