"""Predict segmentation masks from Python: `Segmenter.load("runs/demo").predict(image)`.

One code path with `prcl predict` (which calls this class) and `prcl eval`: an image becomes 8-bit RGB as the
datasets' images do (`image_to_rgb`), is normalised by `to_normalized_tensor`, goes through `predict_logits`
(padding to the model's size multiple; the whole image or a sliding window), and its mask is the argmax of the
logits over classes.

    from prcl.segmenter import Segmenter

    segmenter = Segmenter.load("runs/demo")            # a run directory or a checkpoint file
    mask = segmenter.predict("photo.jpg")              # [H, W] uint8 class ids
    probs = segmenter.predict(image, probabilities=True)  # [C, H, W] float32, sums to 1 over C
    segmenter.colorize(mask).save("mask.png")          # palette PNG in the dataset's class colours
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from prcl.data.dataset import image_to_rgb, load_image
from prcl.data.palette import class_colormap
from prcl.data.transforms import to_normalized_tensor
from prcl.engine.evaluate import predict_logits
from prcl.inference import class_colors, model_from_checkpoint

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
"""What `Segmenter.predict` takes: an image file's path, a PIL image, or an `[H, W, 3]` uint8 RGB array."""

PREDICT_MODES = ("whole", "sliding")


class Segmenter:
    """A trained network that turns images into class masks, with its classes' names and colours.

    `mode="whole"` runs the network once on the whole image; `"sliding"` averages the logits of `crop`² windows
    `stride` px apart (default 2/3 of `crop`), for images much larger than the training crops."""

    def __init__(
        self, model: torch.nn.Module, num_classes: int, class_names: Sequence[str] = (),
        colors: Optional[np.ndarray] = None, *, mode: str = "whole", crop: int = 512, stride: Optional[int] = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if mode not in PREDICT_MODES:
            raise ValueError(f"mode must be one of {PREDICT_MODES}, got {mode!r}")
        if crop < 1 or (stride is not None and stride < 1):
            raise ValueError(f"crop and stride must be positive, got crop={crop}, stride={stride}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.num_classes = num_classes
        self.class_names: tuple[str, ...] = tuple(class_names) or tuple(f"class {c}" for c in range(num_classes))
        self.colors: np.ndarray = class_colormap(colors)[:num_classes]  # [C, 3] uint8
        self.mode, self.crop, self.stride = mode, crop, stride

    @classmethod
    def load(
        cls, path: Union[str, os.PathLike], *, device: Optional[torch.device | str] = None,
        checkpoint: str = "best", which: str = "reported", mode: Optional[str] = None, crop: Optional[int] = None,
        stride: Optional[int] = None,
    ) -> "Segmenter":
        """The network of a run directory (its `checkpoints/best.pt`, or `checkpoint="last"`) or of a checkpoint
        file. `which="reported"` (default, as `prcl predict`) is the model the run reports, e.g. the teacher of a
        mean-teacher method; `"student"` the student. `device` defaults to CUDA when available. `mode`, `crop`
        and `stride` default to the run's evaluation settings (`eval.mode`, `eval.crop_size`, `eval.stride`;
        a run evaluated on centre crops predicts whole images)."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, cfg, state = model_from_checkpoint(Path(path), dev, which, checkpoint)
        return cls(model, state["num_classes"], state.get("class_names") or (), class_colors(state, cfg),
                   mode=mode or ("sliding" if cfg.eval.mode == "sliding" else "whole"),
                   crop=crop or cfg.eval.crop_size, stride=stride or cfg.eval.stride, device=dev)

    def predict(self, image: ImageInput | Sequence[ImageInput], *, probabilities: bool = False) -> np.ndarray | list:
        """The `[H, W]` uint8 mask of class ids of `image` (a path, a PIL image or an `[H, W, 3]` uint8 RGB
        array), or with `probabilities=True` the `[C, H, W]` float32 class probabilities (softmax of the logits;
        their argmax is the mask). A list of images gives a list of results."""
        if isinstance(image, (list, tuple)):
            return [self.predict(one, probabilities=probabilities) for one in image]
        logits = self.logits(image)  # [C, H, W]
        if probabilities:
            return logits.softmax(0).cpu().numpy()
        return logits.argmax(0).to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def logits(self, image: ImageInput) -> torch.Tensor:
        """`[C, H, W]` float32 logits of one image, on `self.device`."""
        x = to_normalized_tensor(as_rgb_image(image))[None].to(self.device)  # [1, 3, H, W]
        return predict_logits(self.model, x, self.num_classes, self.mode, self.crop, self.stride)[0]

    def colorize(self, mask: np.ndarray) -> Image.Image:
        """A mask as a palette PNG image in the classes' colours (255, ignore, in VOC's void colour)."""
        return palette_image(mask, self.colors)


def palette_image(mask: np.ndarray, colors: Optional[np.ndarray] = None) -> Image.Image:
    """`[H, W]` class ids -> palette ("P") image whose palette holds `colors` ([C, 3] uint8; None = VOC's)."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(class_colormap(colors).reshape(-1).tolist())
    return img


def as_rgb_image(image: ImageInput) -> Image.Image:
    """An 8-bit RGB PIL image of a path, a PIL image or an `[H, W, 3]` array; errors say what to pass instead."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image))  # a missing file or a folder: a `DataError` naming it
    if isinstance(image, Image.Image):
        return image_to_rgb(image, "given as a PIL image")
    if isinstance(image, np.ndarray):
        return Image.fromarray(checked_rgb_array(image), mode="RGB")
    hint = " (a [3, H, W] tensor: pass tensor.permute(1, 2, 0).cpu().numpy() as uint8)" if isinstance(
        image, torch.Tensor) else ""
    raise TypeError(f"cannot predict on an object of type {type(image).__name__}{hint}; give an image file's path, "
                    "a PIL image, or a numpy [H, W, 3] uint8 RGB array")


def checked_rgb_array(array: np.ndarray) -> np.ndarray:
    """`array` as `[H, W, 3]` uint8, or a ValueError that says how to make it one. Float arrays are refused:
    whether they hold 0-1 or 0-255 cannot be told, and guessing wrong would predict on a black image."""
    shape = tuple(array.shape)
    if array.ndim != 3 or shape[2] != 3 or 0 in shape:
        hint = ("a grey image? np.repeat(a[..., None], 3, axis=2) makes it RGB" if array.ndim == 2 else
                "RGBA? a[..., :3] drops the alpha channel" if array.ndim == 3 and shape[2] == 4 else
                "channels first? a.transpose(1, 2, 0) puts them last" if array.ndim == 3 and shape[0] == 3 else
                "a batch? pass a list of [H, W, 3] arrays" if array.ndim == 4 else "give an RGB image")
        raise ValueError(f"an image array must be [H, W, 3] RGB, got shape {shape}: {hint}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"an image array of {array.dtype} has values in [{low}, {high}]; give 8-bit values "
                             "0-255 (a 16-bit image: a // 257, or pass its file path)")
        return array.astype(np.uint8)
    raise ValueError(f"an image array of {array.dtype} is ambiguous (values 0-1 or 0-255?); give uint8 RGB: "
                     "(a * 255).round().astype(np.uint8) for values in [0, 1], a.round().astype(np.uint8) for "
                     "values in [0, 255]")
