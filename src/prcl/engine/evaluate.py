"""Evaluation: whole-image, centre-crop and sliding-window inference -> confusion matrix -> mIoU.

Under DDP the val set is sharded without padding (image i goes to rank i mod world), so every image
is counted exactly once and mIoU does not depend on the number of processes.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from prcl import IGNORE_INDEX
from prcl.distributed import rank, world_size
from prcl.engine.metrics import ConfusionMatrix


class ShardSampler(Sampler[int]):
    """Indices `rank, rank + world, ...`: an unpadded shard of the dataset."""

    def __init__(self, length: int, rank_: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank_, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sliding_window_logits(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, num_classes: int, crop: int, stride: int
) -> torch.Tensor:
    """Average the logits of overlapping `crop`² windows; images smaller than `crop` are padded."""
    _, _, h, w = image.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    x = F.pad(image, (0, pw, 0, ph))
    H, W = x.shape[2:]
    ys = sorted(set(list(range(0, H - crop + 1, stride)) + [H - crop]))
    xs = sorted(set(list(range(0, W - crop + 1, stride)) + [W - crop]))
    logits = x.new_zeros(x.shape[0], num_classes, H, W)
    count = x.new_zeros(1, 1, H, W)
    for y in ys:
        for x0 in xs:
            logits[:, :, y : y + crop, x0 : x0 + crop] += predict(x[:, :, y : y + crop, x0 : x0 + crop])
            count[:, :, y : y + crop, x0 : x0 + crop] += 1
    return (logits / count)[:, :, :h, :w]


def center_crop(image: torch.Tensor, mask: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Central `crop`² region; smaller images are padded (mask with the ignore label)."""
    h, w = image.shape[-2:]
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    image = F.pad(image, (0, pw, 0, ph))
    mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
    h, w = image.shape[-2:]
    y, x = (h - crop) // 2, (w - crop) // 2
    return image[..., y : y + crop, x : x + crop], mask[..., y : y + crop, x : x + crop]


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """`image` [..., H, W] zero-padded at the bottom and right up to the next multiples of `multiple` (a ViT's
    patch size, `model.size_multiple`); `image` itself when its sides already are."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % multiple, 0, -h % multiple)) if h % multiple or w % multiple else image


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, image: torch.Tensor, num_classes: int, mode: str = "whole",
    crop: int = 512, stride: Optional[int] = None,
) -> torch.Tensor:
    """`[B, C, H, W]` logits for a normalised image batch. A model whose inputs must measure multiples of
    `model.size_multiple` (a ViT's patch size) sees each image (or window) zero-padded at the bottom and
    right up to the next multiple, and its logits are cropped back."""
    multiple = getattr(model, "size_multiple", 1)

    def forward(x: torch.Tensor) -> torch.Tensor:  # segmentation only: the μ/σ² heads are not run
        h, w = x.shape[-2:]
        return model(pad_to_multiple(x, multiple), heads=False)["logits"][..., :h, :w].float()

    if mode == "sliding":
        return sliding_window_logits(forward, image, num_classes, crop, stride or max(1, crop * 2 // 3))
    return forward(image)


def _batches(samples: list[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stack consecutive samples of equal size; yield (images, masks)."""
    group: list[dict] = []
    for s in samples + [None]:  # type: ignore[list-item]
        if group and (s is None or s["image"].shape != group[0]["image"].shape):
            yield torch.stack([g["image"] for g in group]), torch.stack([g["mask"] for g in group])
            group = []
        if s is not None:
            group.append(s)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, dataset: Dataset, num_classes: int, *, device: torch.device,
    mode: str = "whole", crop: int = 512, stride: Optional[int] = None, batch_size: int = 8,
    num_workers: int = 0, autocast: Optional[Callable] = None,
) -> ConfusionMatrix:
    """Confusion matrix of `model` on `dataset` (which yields `image`, `mask`), summed over ranks."""
    was_training = model.training
    model.eval()
    sampler = ShardSampler(len(dataset), rank(), world_size())
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, device)
    for samples in loader:
        for images, masks in _batches(samples):
            if mode == "center_crop":
                images, masks = center_crop(images, masks, crop)
            images, masks = images.to(device), masks.to(device)
            if autocast is not None:
                with autocast():
                    logits = predict_logits(model, images, num_classes, mode, crop, stride)
            else:
                logits = predict_logits(model, images, num_classes, mode, crop, stride)
            cm.update(logits.argmax(1), masks)
    cm.all_reduce()
    model.train(was_training)
    return cm
