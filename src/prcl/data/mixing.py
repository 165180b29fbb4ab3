"""ClassMix and CutMix for the strong view: images, pseudo-labels and confidences mixed together.

Image i is pasted onto its partner i-shift (a roll within this process's batch; shift 1 by default),
through a binary mask: ClassMix takes the pixels of half of the classes in image i's pseudo-label; CutMix a random box
(`cutmix`: half the image, always, as the PRCL release; `cutmix_unimatch`: UniMatch's box, pasted from the partner).
`mix_masks` picks the mask by the `method.mix` name.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from prcl import IGNORE_INDEX


def classmix_masks(labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`[B, H, W]` bool: for each image, the pixels of a random half (rounded up) of its classes."""
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, lab in enumerate(labels):
        classes = lab.unique()
        classes = classes[classes != IGNORE_INDEX]
        if classes.numel() == 0:
            continue
        perm = torch.randperm(classes.numel(), generator=generator, device="cpu").to(classes.device)
        chosen = classes[perm[: math.ceil(classes.numel() / 2)]]
        masks[i] = torch.isin(lab, chosen)
    return masks


def cutmix_masks(
    batch: int, height: int, width: int, *, area: float = 0.5, generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """`[B, H, W]` bool: one random box covering `area` of each image."""
    bh, bw = max(1, round(height * math.sqrt(area))), max(1, round(width * math.sqrt(area)))
    masks = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    for i in range(batch):
        y = int(torch.randint(0, height - bh + 1, (1,), generator=generator))
        x = int(torch.randint(0, width - bw + 1, (1,), generator=generator))
        masks[i, y : y + bh, x : x + bw] = True
    return masks


def mix_with_partner(mask: torch.Tensor, *tensors: torch.Tensor, shift: int = 1) -> list[torch.Tensor]:
    """Where `mask[i]` take `t[i]`, elsewhere its partner `t[i-shift]`; `t` is `[B, H, W]` or `[B, C, H, W]`."""
    out = []
    for t in tensors:
        m = mask if t.dim() == 3 else mask.unsqueeze(1)
        out.append(torch.where(m, t, t.roll(shift, dims=0)))
    return out


def cutmix_box_masks(
    batch: int, height: int, width: int, *, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3), generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """`[B, H, W]` bool: UniMatch's CutMix box per image (`obtain_cutmix_box` of its data pipeline): with
    probability `p` a box of `area` ~ U(area)·H·W and aspect h/w ~ U(ratio), placed where it fits (drawn
    again until it does); otherwise no box. The box is the region that comes from the partner."""
    masks = torch.zeros(batch, height, width, dtype=torch.bool, device=device)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= p:
            continue
        size = uniform(*area) * height * width
        while True:
            r = uniform(*ratio)
            bh, bw = int(math.sqrt(size * r)), int(math.sqrt(size / r))
            y = int(torch.randint(0, height, (), generator=generator))
            x = int(torch.randint(0, width, (), generator=generator))
            if y + bh <= height and x + bw <= width:
                break
        masks[i, y : y + bh, x : x + bw] = True
    return masks


def mix_masks(kind: str, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`[B, H, W]` bool, True where an image keeps its own pixels, for `method.mix` = `kind` (classmix |
    cutmix | cutmix_unimatch) and the pseudo-labels `labels` `[B, H, W]` (ClassMix picks their classes)."""
    if kind == "classmix":
        return classmix_masks(labels, generator)
    if kind == "cutmix":
        return cutmix_masks(*labels.shape, generator=generator, device=labels.device)
    if kind == "cutmix_unimatch":
        return ~cutmix_box_masks(*labels.shape, generator=generator, device=labels.device)
    raise ValueError(f"unknown mix {kind!r}; use classmix, cutmix or cutmix_unimatch")
