"""Joint image/mask augmentation with torchvision transforms v2.

Masks are wrapped in `tv_tensors.Mask` so geometric transforms move them with the image (a plain
tensor would silently not be flipped or cropped) and padding fills them with the ignore label.
Weak view = rescale, crop, flip. Strong view = the weak view + colour jitter, greyscale, blur, so
teacher pseudo-labels on the weak view align pixel-for-pixel with the student's strong view.
"""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from prcl import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float `[3, H, W]` normalised with ImageNet statistics."""
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_normalized_tensor`, clamped to [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


class RandomRescale(v2.Transform):
    """Resize by a factor drawn uniformly from `scale_range` (bilinear image, nearest mask)."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        s = random.uniform(*self.scale_range)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        return TF.resize(inpt, params["size"], antialias=True)

    # torchvision < 0.21 names
    _get_params = make_params
    _transform = transform


class RandomGaussianBlur:
    """PIL Gaussian blur with probability `p` (PIL is ~7x faster than the tensor blur at 321²)."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return image.filter(ImageFilter.GaussianBlur(random.uniform(*self.sigma)))
        return image


def strong_view_keys(views: int) -> list[str]:
    """The batch keys of `views` strong views: `image_strong`, `image_strong2`, ..."""
    return ["image_strong"] + [f"image_strong{k}" for k in range(2, views + 1)]


class TrainTransform:
    """Training views of one image. Returns `image` (weak) and, for labeled data, `mask` (long, 255 =
    ignore incl. padding); for unlabeled data (`strong=True`) `padding` (bool, True = crop fill),
    `strong_views` strong views (`strong_view_keys`), each with its own draw of the photometric
    augmentations, and, when the image has a mask, its true labels as `truth` (for the reliability
    diagnostics only; cropped with the same draws, so the random streams do not change)."""

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        *,
        strong: bool = False,
        color_jitter: float = 0.8,
        blur: float = 0.5,
        strong_views: int = 1,
    ) -> None:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX, "others": 0}
        self.geometric = v2.Compose([
            RandomRescale(scale_range),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill),
            v2.RandomHorizontalFlip(),
        ])
        self.strong = strong
        self.strong_views = strong_views
        self.photometric = v2.Compose([
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=color_jitter),
            v2.RandomGrayscale(p=0.2),
            RandomGaussianBlur(blur),
        ])

    def __call__(self, image: Image.Image, mask: Optional[np.ndarray]) -> dict:
        labeled = mask is not None and not self.strong
        masks = [] if mask is None else [tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))]
        if not labeled:  # track padding through the crop with a dummy mask
            masks.append(tv_tensors.Mask(torch.zeros((image.height, image.width), dtype=torch.uint8)))
        img_t, *masks = self.geometric(tv_tensors.Image(TF.pil_to_tensor(image)), *masks)
        weak = TF.to_pil_image(img_t.as_subclass(torch.Tensor))
        out = {"image": to_normalized_tensor(weak)}
        masks = [m.as_subclass(torch.Tensor).long() for m in masks]
        if labeled:
            out["mask"] = masks[0]
        else:
            out["padding"] = masks[-1] == IGNORE_INDEX
            if mask is not None:
                out["truth"] = masks[0]
        if self.strong:
            for key in strong_view_keys(self.strong_views):
                out[key] = to_normalized_tensor(self.photometric(weak))
        return out


class EvalTransform:
    """Whole image, normalised; the mask (if any) as long."""

    def __call__(self, image: Image.Image, mask: Optional[np.ndarray]) -> dict:
        out = {"image": to_normalized_tensor(image)}
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return out
