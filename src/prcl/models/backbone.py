"""timm ResNet backbones for DeepLabv3+: stride-4 low-level features and the dilated last stage.

ImageNet weights come from (in order) a local file given in the config, timm's cache, or the hub when
it is reachable. With none of them the call fails in seconds with a message naming the file to get.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional, Sequence

import timm
from torch import nn

HUB_HOST = ("huggingface.co", 443)


class WeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be found; the message says which file to get."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _weights_help(name: str) -> str:
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    source = cfg.get("url") or f"https://huggingface.co/{cfg.get('hf_hub_id')}"
    target = Path("~/.cache/prcl/weights").expanduser() / f"{name}.pth"
    return (
        f"ImageNet weights for backbone '{name}' are not available offline. Download {source} "
        f"and save it as {target} (or any path), then set model.weights={target}; or train from "
        "scratch with model.pretrained=false."
    )


def create_backbone(
    name: str,
    *,
    output_stride: int = 16,
    pretrained: bool = False,
    weights: Optional[str] = None,
    channels: Optional[Sequence[int]] = None,
) -> nn.Module:
    """A timm `features_only` ResNet returning `[stride-4 features, last-stage features]`."""
    kwargs = dict(features_only=True, out_indices=(1, 4), output_stride=output_stride)
    if channels is not None:
        kwargs["channels"] = tuple(channels)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights={weights} does not exist; {_weights_help(name)}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    default = Path("~/.cache/prcl/weights").expanduser() / f"{name}.pth"
    if default.is_file():
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(default)), **kwargs)
    online = _hub_reachable()
    previous = os.environ.get("HF_HUB_OFFLINE")
    if not online:  # only timm's local cache can help; don't let the hub client retry for a minute
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # hub/cache errors come in many types
        raise WeightsError(_weights_help(name)) from err
    finally:
        if not online:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous


def backbone_channels(backbone: nn.Module) -> tuple[int, int]:
    low, high = backbone.feature_info.channels()
    return low, high


def check_feature_strides(backbone: nn.Module, output_stride: int) -> None:
    low, high = backbone.feature_info.reduction()
    if low != 4 or high != output_stride:
        raise ValueError(f"backbone gives strides {low}/{high}, expected 4/{output_stride}")
