"""DINOv2 ViT encoders through timm, read as UniMatch V2 reads them: four intermediate blocks, each
through the final LayerNorm (DINOv2's `get_intermediate_layers(norm=True)`), as NCHW maps at stride 14.

`vit_{small,base,large}_patch14_dinov2`, optionally tagged `.lvd142m`, are built with
`dynamic_img_size=True`: timm resamples the 37×37 position embedding of the 518² pretraining to the
input's grid, so any input whose sides are multiples of 14 works; another size is a `ValueError` naming
the nearest valid ones (config validation refuses such crops before training; evaluation pads whole
images, `prcl.engine.evaluate.predict_logits`).

Weights (`create_vit_encoder`):
- `weights=PATH`: Meta's release (`dinov2_vits14_pretrain.pth`: `cls_token`, `pos_embed`, `mask_token`,
  `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
  ls2.gamma}.*`, `norm.*`) or a timm state dict of the same model. Meta's names are timm's; the one key
  dropped is `mask_token` (the token DINOv2's masked-image-modelling loss puts in place of masked patches,
  unused by the encoder). Every other tensor must fill a model tensor of the same shape, and every model
  tensor must be filled (`check_mapping`), or `WeightsError` names the keys.
- `pretrained=True` without a file: our weights folder, Hugging Face's or torch.hub's cache
  (`cached_weights`), else the hub when it is reachable, else `WeightsError` at once naming the file to
  download and where to put it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import timm
import torch
from timm.models._features import FeatureInfo
from torch import nn

from prcl.models import weights as weight_sources  # a module alias: `weights` is a parameter below
from prcl.models.state_dicts import WeightsError, check_mapping, read_state_dict
from prcl.sizes import nearest_multiples

VIT_LAYERS: dict[str, tuple[int, ...]] = {
    "vit_small_patch14_dinov2": (2, 5, 8, 11),
    "vit_base_patch14_dinov2": (2, 5, 8, 11),
    "vit_large_patch14_dinov2": (4, 11, 17, 23),
}
"""The blocks whose outputs the decoder reads, per encoder (UniMatch V2's `intermediate_layer_idx`)."""
WEIGHT_TAGS = ("lvd142m",)
META_ONLY = ("mask_token",)
"""Keys of Meta's checkpoints that the encoder has no use for: dropped, and only these."""


def vit_arch(name: str) -> Optional[str]:
    """The untagged timm name of a DINOv2 encoder name (`vit_small_patch14_dinov2.lvd142m` ->
    `vit_small_patch14_dinov2`); None for any other backbone."""
    arch, _, tag = name.partition(".")
    return arch if arch in VIT_LAYERS and (not tag or tag in WEIGHT_TAGS) else None


def check_input_size(height: int, width: int, multiple: int) -> None:
    """`ValueError` naming the size and the nearest valid ones unless both sides are multiples of `multiple`."""
    wrong = [f"{side} {n} -> {nearest_multiples(n, multiple)}" for side, n in (("height", height), ("width", width))
             if n % multiple]
    if wrong:
        raise ValueError(
            f"input {height}×{width} does not fit the ViT's {multiple}-pixel patches: each side must be a multiple "
            f"of {multiple} ({', '.join(wrong)}); set data.crop_size (and eval.crop_size) to such a size "
            "(whole-image evaluation pads by itself)")


class ViTEncoder(nn.Module):
    """A timm ViT returning the outputs of blocks `layers` through its final norm: `len(layers)` maps
    `[B, D, H/p, W/p]`. `feature_info` describes them as timm's `features_only` models do."""

    def __init__(self, vit: nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        if not layers or max(layers) >= len(vit.blocks):
            raise ValueError(f"layers {tuple(layers)} must index the ViT's {len(vit.blocks)} blocks")
        self.vit = vit
        self.layers = tuple(layers)
        self.patch_size = vit.patch_embed.patch_size[0]
        self.feature_info = FeatureInfo([vit.feature_info[i] for i in self.layers],
                                        out_indices=tuple(range(len(self.layers))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(x.shape[-2], x.shape[-1], self.patch_size)
        return self.vit.forward_intermediates(x, indices=list(self.layers), norm=True, stop_early=True,
                                              output_fmt="NCHW", intermediates_only=True)


def dinov2_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Meta-format or timm-format DINOv2 state dict as the timm model's (`target`): `mask_token`
    dropped, every other key kept by name; `WeightsError` unless they fill `target` one to one."""
    renamed = {k: v for k, v in source.items() if k not in META_ONLY}
    check_mapping(renamed, target)
    return renamed


def load_vit_weights(vit: nn.Module, path: Path) -> None:
    """Fill the timm ViT `vit` from the file `path` (Meta's or timm's naming)."""
    vit.load_state_dict(dinov2_to_timm(read_state_dict(path), vit.state_dict()), strict=True)


def create_vit_encoder(
    name: str, *, pretrained: bool = False, weights: Optional[str] = None,
    layers: Optional[Sequence[int]] = None, **timm_kwargs: Any,
) -> ViTEncoder:
    """The DINOv2 encoder `name` (see `VIT_LAYERS`), reading blocks `layers` (default: UniMatch V2's).
    `timm_kwargs` reach `timm.create_model` (tests build tiny ViTs with `depth`, `embed_dim`, ...)."""
    arch = vit_arch(name)
    if arch is None:
        raise ValueError(f"unknown ViT backbone {name!r}; choose one of {sorted(VIT_LAYERS)} (optionally with "
                         f"the tag .{WEIGHT_TAGS[0]})")
    kwargs = dict(pretrained=False, dynamic_img_size=True, num_classes=0, **timm_kwargs)
    layers = VIT_LAYERS[arch] if layers is None else layers
    path = Path(weights).expanduser() if weights is not None else weight_sources.cached_weights(name) if pretrained else None
    if weights is not None and not path.is_file():
        raise WeightsError(f"model.weights={weights} does not exist; {weight_sources.weights_help(name)}")
    if path is None and pretrained:
        if not weight_sources.hub_reachable():
            raise WeightsError(weight_sources.weights_help(name))
        kwargs["pretrained"] = True  # timm downloads and converts
    try:
        vit = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError) as err:  # a failed download
        raise WeightsError(f"loading weights for '{name}' failed ({err}); {weight_sources.weights_help(name)}") from err
    if path is not None:
        try:
            load_vit_weights(vit, path)
        except WeightsError as err:
            raise WeightsError(f"{path} does not fit backbone '{name}': {err}") from err
    return ViTEncoder(vit, layers)
