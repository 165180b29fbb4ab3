"""UniMatch V2's complementary dropout (Yang et al., 2024, Sec. 3.3): the two strong views of an image
get complementary channel masks on the encoder features, so together they see every channel once.

UniMatch V1's feature perturbation (`Dropout2d(0.5)` on a twin of the weak view) is inline in
`SegmentationModel.fused_feature`; this module holds V2's, as a pure function of the batch shape and
the global RNG (so resume reproduces it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def complementary_channel_masks(pairs: int, channels: Sequence[int], *, kept_fraction: float = 0.5,
                                shared: bool = True, device: Optional[torch.device] = None) -> list[torch.Tensor]:
    """Masks for a batch laid out as [view 1 of `pairs` images; view 2 of the same images], one `[2·pairs, C]`
    mask per feature level of width C in `channels`.

    Row i (view 1 of image i) has entries drawn from {0, 2} with probability ½ each; row pairs + i (view 2)
    has 2 − that, so the two views drop complementary channels and each mask keeps the expected scale
    (E = 1). A random ⌊pairs·kept_fraction⌋ of the images (shared by all levels) keep every channel:
    mask 1 in both views. `shared`: one draw for all levels, as wide as the widest, each level taking its
    first C channels (UniMatch V2: one mask for its four ViT layers, all of one width); otherwise an
    independent draw per level. UniMatch V2 uses kept_fraction = 0.5."""
    if pairs < 1:
        raise ValueError(f"complementary dropout needs two views of at least one image, got {pairs} pairs")
    kept = torch.randperm(pairs, device=device)[: int(pairs * kept_fraction)]

    def draw(width: int) -> torch.Tensor:  # [pairs, width] of view 1
        first = 2.0 * torch.randint(0, 2, (pairs, width), device=device, dtype=torch.float32)
        first[kept] = 1.0
        return first

    if shared:
        one = draw(max(channels))
        firsts = [one[:, :width] for width in channels]
    else:
        firsts = [draw(width) for width in channels]
    return [torch.cat([first, 2.0 - first]) for first in firsts]


def apply_channel_mask(feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`feature` `[B, C, H, W]` times a per-image, per-channel `mask` `[B, C]`."""
    return feature * mask.to(feature.dtype)[:, :, None, None]
