"""One torch Dataset for every source: a list of (image, mask) files plus a joint transform.

Dataset-specific code (VOC, Cityscapes, folders, the built-in synthetic set) only produces the
list of `Sample`s and, where masks need remapping, a 256-entry lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Sample:
    """One image and, when labeled, its index mask (values in [0, C) or 255)."""

    image: Path
    mask: Optional[Path] = None

    @property
    def id(self) -> str:
        return self.image.stem


class DataError(ValueError):
    """Bad dataset files or split lists; the message names the file and the fix."""


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")


def load_image(path: Path) -> Image.Image:
    """Read an image as 8-bit RGB (`image_to_rgb`), turning PIL's errors into a message that names the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return image_to_rgb(img, path)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(_not_a_file("image", path)) from err
    except (OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}. Re-extract or delete the file.") from err


def _not_a_file(kind: str, path: Path) -> str:
    """The message for a path that names no file: a typo, not a damaged file."""
    if Path(path).is_dir():
        return f"{kind} {path} is a folder, not a file; name the files in it"
    return f"{kind} {path} does not exist (no file {Path(path).absolute()}); check the path"


def image_to_rgb(img: Image.Image, name: Union[Path, str]) -> Image.Image:
    """`img` as 8-bit RGB, the form every model input takes; `name` (its file) goes into the errors. Grey and
    palette images are expanded, an alpha channel is dropped, and 16-bit grey images (microscopy, remote
    sensing) are scaled from their type's full range, v·255/65535 (PIL's `convert("RGB")` would clip every
    value above 255 to white); other high-bit-depth images are refused."""
    if img.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(np.asarray(img), name)
    if img.mode == "F":
        raise DataError(f"image {name} holds 32-bit floats (mode F); save it as 8-bit or 16-bit PNG/JPEG")
    return img.convert("RGB")


def _sixteen_bit_to_rgb(values: np.ndarray, name: Union[Path, str]) -> Image.Image:
    """`[H, W]` integers in [0, 65535] -> 8-bit grey-as-RGB, rounded: v·255/65535."""
    if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
        raise DataError(f"image {name} has values in [{int(values.min())}, {int(values.max())}], outside the 16-bit "
                        "range [0, 65535]; rescale it to 8 or 16 bits first")
    grey = (values.astype(np.int64) * 255 + 32767) // 65535
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")


def load_mask(path: Path, label_lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Read an index mask (palette or greyscale PNG) as `[H, W]` uint8, remapped by `label_lut`."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"mask {path} has mode {img.mode}; expected an index PNG (mode P or L) "
                    "whose pixel values are class ids"
                )
            mask = np.asarray(img)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(_not_a_file("mask", path)) from err
    except (OSError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path}: {err}. Re-extract or delete the file.") from err
    if mask.size and mask.max() > 255:
        raise DataError(f"mask {path} has label value {int(mask.max())} > 255; masks must hold class ids or 255")
    if label_lut is not None:
        mask = label_lut[mask.astype(np.int64)]
    return mask.astype(np.uint8)


class SegmentationDataset(Dataset):
    """Reads `samples` and applies `transform(image, mask) -> dict` (mask is None if unlabeled)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable,
        label_lut: Optional[np.ndarray] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        if len(samples) == 0:
            raise DataError("empty dataset: the split lists no images")
        self.samples = list(samples)
        self.transform = transform
        self.label_lut = label_lut
        self.num_classes = num_classes  # when given, mask values must lie in [0, C) or be 255

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.image)
        mask = None
        if sample.mask is not None:
            mask = load_mask(sample.mask, self.label_lut)
            if mask.shape != (image.height, image.width):
                raise DataError(
                    f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{sample.image} is {image.width}x{image.height}; they must match"
                )
            bad = mask[(mask >= self.num_classes) & (mask != 255)] if self.num_classes else mask[:0]
            if bad.size:
                raise DataError(
                    f"mask {sample.mask} has label value {int(bad.max())} outside [0, {self.num_classes}) "
                    "and 255 (ignore); fix the mask or data.dataset, see `prcl data check`"
                )
        out = self.transform(image, mask)
        out["index"] = index
        return out
