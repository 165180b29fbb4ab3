"""ClassMix and CutMix for the strong view: images, pseudo-labels and confidences mixed together.

Image i is pasted onto a partner image through a binary mask: ClassMix takes the pixels of half of the
classes in image i's pseudo-label; CutMix a random box (`cutmix`: half the image, always, as the PRCL
release; `cutmix_unimatch`: UniMatch's box, pasted from the partner). `mix_masks` picks the mask by the
`method.mix` name; `mix_strong_view` does the whole step and measures it.

**Partners come from the global batch.** Under DDP each process holds B of the N = world·B unlabeled
images of a step. The batch is gathered across processes (`all_gather_rows`, as the PRCL release
gathers before mixing) and the partner of global image g is g − shift (mod N); for one process this is
a roll of the batch. So with one image per process (8 + 8 on 8 GPUs) every image still gets another
image as partner; a global batch of one image has no partner and is refused (`PartnerError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from prcl import IGNORE_INDEX
from prcl.distributed import all_gather_rows, rank, world_size


class PartnerError(ValueError):
    """Mixing was asked for where no image has a partner (a global unlabeled batch of one image)."""


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


def require_partners(global_batch: int) -> None:
    """Refuse mixing when the global unlabeled batch has no second image to take a partner from."""
    if global_batch < 2:
        raise PartnerError(
            f"mixing (method.mix) pastes each unlabeled image onto another one, but the global unlabeled batch holds "
            f"{global_batch} image; set data.unlabeled_batch_size (or data.batch_size) to 2 or more, or "
            "method.mix=none")


def global_row_index(batch: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """`[B]` the index of this process's rows in the global batch: rank·B, ..., rank·B + B − 1."""
    return rank() * batch + torch.arange(batch, device=device)


def partner_rows(t: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """`[B, ...]`: for each of this process's rows g (global index), row g − shift (mod N) of the
    global batch of N = world·B rows, gathered across processes (one process: `t.roll(shift, 0)`)."""
    if world_size() == 1:
        return t.roll(shift, dims=0)
    everyone = all_gather_rows(t)  # [N, ...]
    index = (global_row_index(t.shape[0], t.device) - shift) % everyone.shape[0]
    return everyone[index]


def partner_shifts(global_batch: int, views: int) -> list[int]:
    """The partner shift of each of `views` strong views: 1, 2, ... (mod N − 1, so never the image itself),
    so the views get different partners when the global batch has more than two images. With two, both
    views pair with the other image (as in UniMatch, whose two strong views share one partner image and
    differ in its augmentation and in the box)."""
    require_partners(global_batch)
    return [1 + k % (global_batch - 1) for k in range(views)]


def mix_with_partner(mask: torch.Tensor, *tensors: torch.Tensor, shift: int = 1) -> list[torch.Tensor]:
    """Where `mask[i]` take `t[i]`, elsewhere its partner's (`partner_rows`); `t` is `[B, H, W]` or
    `[B, C, H, W]`."""
    require_partners(mask.shape[0] * world_size())
    out = []
    for t in tensors:
        m = mask if t.dim() == 3 else mask.unsqueeze(1)
        out.append(torch.where(m, t, partner_rows(t, shift)))
    return out


@dataclass
class MixedView:
    """A strong view after mixing: the student's input, the targets it learns, and how it was mixed."""

    image: torch.Tensor  # [B, 3, H, W]
    pseudo: torch.Tensor  # [B, H, W] pseudo-labels (255 = ignore)
    confidence: torch.Tensor  # [B, H, W]
    stats: dict[str, float]  # `mix/pasted`, `mix/from_other_image` (see `mix_strong_view`)
    aligned: list[torch.Tensor] = field(default_factory=list)  # other per-pixel maps, mixed the same way


def mix_strong_view(kind: str, image: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
                    *aligned: torch.Tensor, shift: int = 1) -> MixedView:
    """The student's input and targets: `image` pasted onto its partner `shift` places back in the global
    batch through a `mix_masks(kind)` mask (`kind="none"`: unchanged, no stats). Stats of this process's
    rows: `mix/pasted`, the fraction of the view's pixels taken from the partner, and
    `mix/from_other_image`, the fraction of those pasted pixels whose partner is another image (1 when
    mixing works; 0 is a self-partner; left out when nothing was pasted). Measured by sending each row's
    global index through the same partner exchange as the pixels. `aligned` maps (the true labels of the
    reliability diagnostics) are mixed the same way and returned in `MixedView.aligned`."""
    if kind == "none":
        return MixedView(image, pseudo, confidence, {}, list(aligned))
    mask = mix_masks(kind, pseudo)
    image, pseudo, confidence, *aligned = mix_with_partner(mask, image, pseudo, confidence, *aligned, shift=shift)
    own = global_row_index(mask.shape[0], mask.device).float()
    pasted = ~mask  # [B, H, W]
    from_other = pasted & (partner_rows(own, shift) != own)[:, None, None]
    stats = {"mix/pasted": float(pasted.float().mean())}
    if pasted.any():
        stats["mix/from_other_image"] = float(from_other.sum() / pasted.sum())
    return MixedView(image, pseudo, confidence, stats, aligned)


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
