"""PASCAL VOC 2012 layout: `JPEGImages/`, `SegmentationClass[Aug]/`, `ImageSets/Segmentation/`.

Root is the `VOC2012` folder (its parent, or the folder holding `VOCdevkit/`, also work).
Masks are index PNGs: `SegmentationClass` stores them as palette PNGs, `SegmentationClassAug`
(the SBD-augmented masks, 10,582 train_aug + 1,449 val) as greyscale; both hold the class index
per pixel and 255 on object boundaries ("void"), which is the ignore label.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional

from prcl.data.dataset import DataError, Sample
from prcl.data.splits import SplitEntry

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
AUG_ARCHIVE = "SegmentationClassAug.zip"

# Official sizes of the standard id lists, and the labeled counts of the paper's partitions.
VOC_SPLIT_SIZES = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}
VOC_LABELED_COUNTS = {"classic": (92, 183, 366, 732, 1464), "blender": (662, 1323, 2646, 5291)}


def find_voc_root(root: Path) -> Path:
    """`root` itself if it holds `JPEGImages/`, else `root/VOCdevkit/VOC2012` or `root/VOC2012`."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    for inner in (root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (inner / "JPEGImages").is_dir():
            return inner
    return root


def voc_id(entry: SplitEntry) -> str:
    """`2007_000032`, `2007_000032.jpg` and `JPEGImages/2007_000032.jpg` all name id 2007_000032."""
    image_id = PurePosixPath(entry.image).stem
    if entry.mask is not None and PurePosixPath(entry.mask).stem != image_id:
        raise DataError(
            f"line {entry.line}: mask {entry.mask} does not belong to image {entry.image} "
            "(their file names differ)"
        )
    return image_id


class VocSource:
    """Where the files of a VOC-layout dataset live; see `prcl.data.sources.DatasetSource`."""

    name = "voc"
    class_names: tuple[str, ...] = VOC_CLASSES
    label_lut = None
    raw_label_values = None
    colors = None  # the VOC palette
    split_sizes = VOC_SPLIT_SIZES
    # scheme -> (standard split the labeled images come from, the one unlabeled images come from)
    # ("train" needs no SBD masks but is not a setting of the paper)
    schemes = {
        "classic": ("train", "train_aug"),
        "blender": ("train_aug", "train_aug"),
        "train": ("train", "train"),
    }
    val_split: Optional[str] = "val"
    image_ext = ".jpg"

    def __init__(self, root: Path) -> None:
        self.root = find_voc_root(Path(root))
        aug = self.root / "SegmentationClassAug"
        self.mask_dir = aug if aug.is_dir() else self.root / "SegmentationClass"

    def origin(self, folder: str) -> str:
        """Which download a missing folder comes from, and how to get it in place."""
        archive = AUG_ARCHIVE if folder == "SegmentationClassAug" else VOC_ARCHIVE
        return (f"it comes from {archive}; run "
                f"`prcl data prepare voc --archives DIR --out {self.root}`")

    def layout_errors(self) -> list[str]:
        if not self.root.is_dir():
            return [f"dataset root {self.root} does not exist"]
        errors = []
        for folder in ("JPEGImages", "ImageSets/Segmentation"):
            if not (self.root / folder).is_dir():
                errors.append(
                    f"folder {folder}/ is missing under {self.root}: {self.origin(folder)}"
                )
        if not self.mask_dir.is_dir():
            errors.append(
                f"no mask folder under {self.root}: SegmentationClassAug/ "
                f"({self.origin('SegmentationClassAug')}) or SegmentationClass/ "
                f"({self.origin('SegmentationClass')})"
            )
        return errors

    def standard_splits(self) -> tuple[str, ...]:
        lists = self.root / "ImageSets" / "Segmentation"
        names = {p.stem for p in lists.glob("*.txt")} if lists.is_dir() else set()
        return tuple(sorted(names | {"train_aug"}))

    def standard_entries(self, name: str) -> list[SplitEntry]:
        path = self.root / "ImageSets" / "Segmentation" / f"{name}.txt"
        if name == "train_aug" and not path.is_file():
            return self._train_aug_entries()
        if not path.is_file():
            raise DataError(f"id list {path} is missing: {self.origin('ImageSets')}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        return [SplitEntry(i) for i in ids]

    def _train_aug_entries(self) -> list[SplitEntry]:
        """train_aug = every SegmentationClassAug mask that is not a val image (10,582 ids)."""
        aug = self.root / "SegmentationClassAug"
        if not aug.is_dir():
            raise DataError(
                f"the train_aug id list (10,582 images, used by the blender partitions and as the "
                f"unlabeled pool) needs SegmentationClassAug/ under {self.root}: "
                f"{self.origin('SegmentationClassAug')}"
            )
        val = {e.image for e in self.standard_entries("val")}
        return [SplitEntry(p.stem) for p in sorted(aug.glob("*.png")) if p.stem not in val]

    def check_splits(self) -> tuple[tuple[str, bool], ...]:
        """(standard split, labeled) pairs that `prcl data check` reads by default."""
        train = "train_aug" if self.mask_dir.name == "SegmentationClassAug" else "train"
        return ((train, True), ("val", True))

    def key(self, entry: SplitEntry) -> str:
        return voc_id(entry)

    def mask_path(self, image_id: str) -> Path:
        """`SegmentationClassAug/<id>.png`, or `SegmentationClass/<id>.png` where only that exists
        (both hold class indices, so mixing them is safe)."""
        mask = self.mask_dir / f"{image_id}.png"
        fallback = self.root / "SegmentationClass" / f"{image_id}.png"
        return fallback if not mask.is_file() and fallback.is_file() else mask

    def sample(self, entry: SplitEntry, labeled: bool = True) -> Sample:
        image_id = voc_id(entry)
        mask = self.mask_path(image_id) if labeled else None
        return Sample(self.root / "JPEGImages" / f"{image_id}{self.image_ext}", mask)

    def line(self, entry: SplitEntry, fmt: str = "ids") -> str:
        image_id = voc_id(entry)
        if fmt == "ids":
            return image_id
        return f"JPEGImages/{image_id}{self.image_ext} {self.mask_dir.name}/{image_id}.png"
