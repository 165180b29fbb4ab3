"""Cityscapes layout (`leftImg8bit/`, `gtFine/`) and the labelId -> trainId table (19 classes).

Images: `leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`; masks:
`gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`, remapped on the fly to the
19 evaluation classes by a 256-entry lookup table. If `*_gtFine_labelTrainIds.png` files are
present (made by cityscapesscripts' `createTrainIdLabelImgs`), they are read instead, without the
table. The choice is made once per root so that every mask of a run has the same encoding.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from prcl import IGNORE_INDEX
from prcl.data.dataset import DataError, Sample
from prcl.data.splits import SplitEntry

# (labelId, name, trainId): facts from the Cityscapes label definition. trainId 255 = ignored;
# "license plate" has labelId -1, so it never appears in a uint8 labelIds image.
CITYSCAPES_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255),
    (3, "out of roi", 255), (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", 255), (10, "rail track", 255),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", 255),
    (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9),
    (23, "sky", 10), (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14),
    (28, "bus", 15), (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16),
    (32, "motorcycle", 17), (33, "bicycle", 18), (-1, "license plate", 255),
)

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    name for _, name, train_id in sorted(CITYSCAPES_LABELS, key=lambda r: r[2]) if train_id != 255
)

IMAGES_ARCHIVE = "leftImg8bit_trainvaltest.zip"
MASKS_ARCHIVE = "gtFine_trainvaltest.zip"
CITYSCAPES_SPLIT_SIZES = {"train": 2975, "val": 500}
CITYSCAPES_LABELED_COUNTS = (186, 372, 744, 1488)
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}


def train_id_lut() -> np.ndarray:
    """`[256]` uint8 table labelId -> trainId; ids not in the table (and 255) map to 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, _, train_id in CITYSCAPES_LABELS:
        if label_id >= 0:
            lut[label_id] = train_id
    return lut


def has_train_id_masks(root: Path) -> bool:
    """True if any `*_gtFine_labelTrainIds.png` exists under `gtFine/train` or `gtFine/val`."""
    for split in ("train", "val"):
        split_dir = Path(root) / "gtFine" / split
        if not split_dir.is_dir():
            continue
        for city in os.scandir(split_dir):
            if city.is_dir() and any(
                f.name.endswith(MASK_SUFFIXES["trainIds"]) for f in os.scandir(city.path)
            ):
                return True
    return False


def frame_key(entry: SplitEntry) -> str:
    """`train/aachen/aachen_000000_000019` from `[leftImg8bit/]train/aachen/..._leftImg8bit.png`."""
    parts = PurePosixPath(entry.image).parts
    if parts and parts[0] == "leftImg8bit":
        parts = parts[1:]
    if not (len(parts) == 3 and parts[2].startswith(f"{parts[1]}_")
            and parts[2].endswith(IMAGE_SUFFIX)):
        raise DataError(
            f"line {entry.line}: {entry.image!r} is not a Cityscapes image path like "
            f"leftImg8bit/train/aachen/aachen_000000_000019{IMAGE_SUFFIX}"
        )
    split, city, name = parts
    prefix = name[: -len(IMAGE_SUFFIX)]
    if entry.mask is not None and not PurePosixPath(entry.mask).name.startswith(prefix + "_gtFine"):
        raise DataError(
            f"line {entry.line}: mask {entry.mask} does not belong to image {entry.image}"
        )
    return f"{split}/{city}/{prefix}"


class CityscapesSource:
    """Where Cityscapes files live; see `prcl.data.sources.DatasetSource`."""

    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    colors = None
    split_sizes = CITYSCAPES_SPLIT_SIZES
    schemes = {"train": ("train", "train")}
    val_split: Optional[str] = "val"

    def __init__(self, root: Path, label_mode: Optional[str] = None) -> None:
        self.root = Path(root)
        if label_mode is None:
            label_mode = "trainIds" if has_train_id_masks(self.root) else "labelIds"
        if label_mode not in MASK_SUFFIXES:
            raise DataError(
                f"unknown Cityscapes label mode {label_mode!r}; use labelIds or trainIds"
            )
        self.label_mode = label_mode
        self.label_lut = train_id_lut() if label_mode == "labelIds" else None
        # raw values allowed in the masks read (labelIds 0..33; 255 is always "ignore")
        self.raw_label_values = (
            tuple(i for i, _, _ in CITYSCAPES_LABELS if i >= 0) + (IGNORE_INDEX,)
            if label_mode == "labelIds" else None
        )

    def origin(self, folder: str) -> str:
        archive = IMAGES_ARCHIVE if folder.startswith("leftImg8bit") else MASKS_ARCHIVE
        return (f"it comes from {archive}; run "
                f"`prcl data prepare cityscapes --archives DIR --out {self.root}`")

    def layout_errors(self) -> list[str]:
        if not self.root.is_dir():
            return [f"dataset root {self.root} does not exist"]
        folders = ("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val")
        return [
            f"folder {f}/ is missing under {self.root}: {self.origin(f)}"
            for f in folders if not (self.root / f).is_dir()
        ]

    def standard_splits(self) -> tuple[str, ...]:
        return ("train", "val")

    def standard_entries(self, name: str) -> list[SplitEntry]:
        if name not in self.standard_splits():
            raise DataError(f"unknown standard split {name!r} of cityscapes; use train or val")
        split_dir = self.root / "leftImg8bit" / name
        if not split_dir.is_dir():
            raise DataError(
                f"folder leftImg8bit/{name}/ is missing under {self.root}: "
                f"{self.origin('leftImg8bit')}"
            )
        images = sorted(split_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        return [SplitEntry(p.relative_to(self.root).as_posix()) for p in images]

    def check_splits(self) -> tuple[tuple[str, bool], ...]:
        return (("train", True), ("val", True))

    def key(self, entry: SplitEntry) -> str:
        return frame_key(entry)

    def mask_path(self, key: str) -> Path:
        return self.root / "gtFine" / f"{key}{MASK_SUFFIXES[self.label_mode]}"

    def sample(self, entry: SplitEntry, labeled: bool = True) -> Sample:
        key = frame_key(entry)
        image = self.root / "leftImg8bit" / f"{key}{IMAGE_SUFFIX}"
        mask = self.mask_path(key) if labeled else None
        if mask is not None and self.label_mode == "trainIds" and not mask.is_file():
            raise DataError(
                f"{mask} is missing, but other *_labelTrainIds.png files exist under "
                f"{self.root / 'gtFine'}: create them for every image (cityscapesscripts' "
                "createTrainIdLabelImgs) or delete them all so labelIds are mapped on the fly"
            )
        return Sample(image, mask)

    def line(self, entry: SplitEntry, fmt: str = "ids") -> str:
        key = frame_key(entry)
        image = f"leftImg8bit/{key}{IMAGE_SUFFIX}"
        if fmt == "ids":
            return image
        return f"{image} gtFine/{key}{MASK_SUFFIXES[self.label_mode]}"
