"""DPT (Ranftl et al., 2021), UniMatch V2's decoder, with the heads PRCL needs (`SegmentationModel`).

    encoder ─► 4 maps ─► reassemble: 1×1 conv to out_channels[i], then resize
                         (ViT, stride 14: ×4, ×2, ×1, ½ -> strides 3.5, 7, 14, 28; CNN, strides 4-32: none)
                     ─► 3×3 conv to `features` ─► RefineNet fusion, coarse to fine (each block: residual
                         conv units, bilinear upsampling to the next finer map, ×2 after the finest)
                     ─► fused feature [B, features, 2h₁, 2w₁] (ViT: stride 1.75; CNN: stride 2)
    fused ─► segmentation head   Conv3×3-ReLU-Conv1×1 → C logits (UniMatch V2's, no BatchNorm)
    fused ─► representation head, probability head: see `prcl.models.segmentation`

Widths (`features`, `out_channels`) per encoder are UniMatch V2's (`DPT_WIDTHS`); on a CNN, 64 and
(48, 96, 192, 384), ViT-S's, which keep the decoder small beside EfficientNet-Lite/ResNet pyramids.
One departure from the reference: the coarsest fusion block, which has no finer skip input, builds no
residual unit for one (the reference builds it and leaves it unused, so it gets no gradient).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prcl.models.backbone import create_backbone
from prcl.models.segmentation import SegmentationModel
from prcl.models.vit import create_vit_encoder, vit_arch
from prcl.sizes import patch_size

DPT_WIDTHS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "vit_small_patch14_dinov2": (64, (48, 96, 192, 384)),
    "vit_base_patch14_dinov2": (128, (96, 192, 384, 768)),
    "vit_large_patch14_dinov2": (256, (256, 512, 1024, 1024)),
    "cnn": (64, (48, 96, 192, 384)),
}
"""(features, out_channels) by encoder: UniMatch V2's for the ViTs; ours for every CNN."""
VIT_RESIZE = (4.0, 2.0, 1.0, 0.5)
"""Reassemble's resampling of the four stride-14 ViT maps (transposed convs, identity, stride-2 conv)."""
CNN_STRIDES = [4, 8, 16, 32]


def resize_layer(channels: int, scale: float) -> nn.Module:
    """×k upsampling by a k×k transposed conv of stride k, identity at 1, ½ by a stride-2 3×3 conv."""
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    if scale > 1 and scale == int(scale):
        return nn.ConvTranspose2d(channels, channels, int(scale), stride=int(scale))
    raise ValueError(f"reassemble scales must be 0.5, 1 or an integer above 1, got {scale}")


class ResidualConvUnit(nn.Module):
    """x + Conv3×3(ReLU(Conv3×3(ReLU(x)))), without normalisation (UniMatch V2: use_bn=False)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet fusion: (coarse + unit(skip)) -> unit -> bilinear upsampling (to `size`, else ×2) -> 1×1 conv."""

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if with_skip else None
        self.unit = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, coarse: torch.Tensor, skip: Optional[torch.Tensor] = None,
                size: Optional[Sequence[int]] = None) -> torch.Tensor:
        x = coarse if skip is None else coarse + self.skip_unit(skip)
        x = self.unit(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.project(x)


class DPTDecoder(nn.Module):
    """Four encoder maps (fine to coarse) -> the fused feature `[B, features, 2h₁, 2w₁]`."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], features: int,
                 scales: Sequence[float]) -> None:
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(scales) == 4:
            raise ValueError(f"DPT reads 4 encoder maps, got widths {list(in_channels)}, out_channels "
                             f"{list(out_channels)}, scales {list(scales)}")
        self.projects = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(in_channels, out_channels))
        self.resize = nn.ModuleList(resize_layer(o, s) for o, s in zip(out_channels, scales))
        self.layer_rn = nn.ModuleList(nn.Conv2d(o, features, 3, padding=1, bias=False) for o in out_channels)
        self.refine = nn.ModuleList(FusionBlock(features, with_skip=i < 3) for i in range(4))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        maps = [rn(resize(project(f)))
                for f, project, resize, rn in zip(features, self.projects, self.resize, self.layer_rn)]
        x = self.refine[3](maps[3], size=maps[2].shape[-2:])
        for i in (2, 1, 0):
            x = self.refine[i](x, maps[i], size=maps[i - 1].shape[-2:] if i else None)
        return x


def dpt_seg_head(features: int, num_classes: int) -> nn.Sequential:
    """Conv3×3-ReLU-Conv1×1 (UniMatch V2's `output_conv`)."""
    return nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(features, num_classes, 1))


class DPT(SegmentationModel):
    """DPT on a DINOv2 ViT (`prcl.models.vit`) or a timm CNN pyramid at strides 4/8/16/32 (undilated).

    `features` / `out_channels`: decoder widths, None = `DPT_WIDTHS`. `backbone_kwargs`: extra keyword
    arguments of `create_vit_encoder` (`layers`, and timm's `depth`, `embed_dim`, `num_heads`, ... for
    tiny test ViTs). `heads`: the keyword arguments of `SegmentationModel._init_heads`."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "vit_small_patch14_dinov2",
        *,
        pretrained: bool = False,
        weights: Optional[str] = None,
        backbone_widths: Optional[Sequence[int]] = None,
        features: Optional[int] = None,
        out_channels: Optional[Sequence[int]] = None,
        backbone_kwargs: Optional[dict[str, Any]] = None,
        **heads: Any,
    ) -> None:
        super().__init__()
        if patch_size(backbone) > 1:
            if backbone_widths is not None:
                raise ValueError(f"model.backbone_channels sets ResNet stage widths; {backbone} has fixed widths: "
                                 "set model.backbone_channels=null")
            self.backbone = create_vit_encoder(backbone, pretrained=pretrained, weights=weights,
                                               **(backbone_kwargs or {}))
            self.size_multiple = self.backbone.patch_size
            scales, widths = VIT_RESIZE, DPT_WIDTHS[vit_arch(backbone)]
        else:
            if backbone_kwargs:
                raise ValueError(f"backbone_kwargs are for ViT encoders, not {backbone}")
            self.backbone = create_backbone(backbone, output_stride=32, pretrained=pretrained, weights=weights,
                                            channels=backbone_widths, out_indices=(1, 2, 3, 4))
            if self.backbone.feature_info.reduction() != CNN_STRIDES:
                raise ValueError(f"DPT needs a CNN pyramid at strides {CNN_STRIDES}, {backbone} gives "
                                 f"{self.backbone.feature_info.reduction()}")
            scales, widths = (1.0,) * 4, DPT_WIDTHS["cnn"]
        self._init_input_normalization(backbone)
        features = features or widths[0]
        self.decoder = DPTDecoder(self.backbone.feature_info.channels(), out_channels or widths[1], features, scales)
        self._init_heads(dpt_seg_head(features, num_classes), features, **heads)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features)
