"""Your own data: a folder of images, index-PNG masks and a class list.

Layout (paths in split files are relative to the root):

    root/
      classes.yaml         # or classes.yml / classes.json, see `read_class_file`
      images/**.jpg|png    # labeled images (sub-folders allowed)
      masks/**.png         # one index PNG per image, same relative path, `.png` suffix
      unlabeled/**.jpg     # optional: images without masks

Mask pixels hold the class index (0..C-1) or 255 for "ignore".
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
import yaml

from prcl.data.dataset import DataError, Sample
from prcl.data.palette import voc_colormap
from prcl.data.splits import SplitEntry

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_CLASSES = 255  # 255 is the ignore label
CLASS_KEYS = ("name", "color")  # the keys of a class entry


def read_class_file(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names and `[C, 3]` uint8 colours from a YAML/JSON class file.

    Accepted forms (colours are optional and default to the VOC palette)::

        classes:                       classes: [background, crack]
          - {name: background, color: [0, 0, 0]}
          - {name: crack, color: [255, 0, 0]}
    """
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise DataError(f"cannot parse class file {path}: {err}") from err
    items = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise DataError(f"class file {path} must hold a non-empty list under the key `classes`")
    if len(items) > MAX_CLASSES:
        raise DataError(
            f"class file {path} lists {len(items)} classes; at most {MAX_CLASSES} are allowed"
        )
    palette = voc_colormap(256)
    names, colors = [], []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise DataError(f"class {index} in {path} needs a non-empty `name`, got {item!r}")
        unknown = sorted(str(k) for k in item if k not in CLASS_KEYS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], CLASS_KEYS, n=1, cutoff=0.6)
            meant = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"class {item['name']!r} in {path} has unknown key(s) {unknown}{meant}; a class entry "
                            f"allows only {list(CLASS_KEYS)}")
        color = item.get("color", palette[index].tolist())
        if (
            not isinstance(color, (list, tuple)) or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise DataError(
                f"class {item['name']!r} in {path}: `color` must be three integers 0-255, "
                f"got {color!r}"
            )
        names.append(item["name"])
        colors.append(color)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"class file {path} repeats class names {duplicates}")
    return tuple(names), np.asarray(colors, dtype=np.uint8)


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


class FolderSource:
    """Where the files of a folder dataset live; see `prcl.data.sources.DatasetSource`."""

    name = "folder"
    label_lut = None
    raw_label_values = None
    split_sizes: dict[str, int] = {}
    schemes = {"default": ("labeled", "all")}
    val_split: Optional[str] = None  # held out by `prcl data split --val-size N`

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._classes: Optional[tuple[tuple[str, ...], np.ndarray]] = None

    def class_file(self) -> Optional[Path]:
        return next((self.root / n for n in CLASS_FILES if (self.root / n).is_file()), None)

    def _read_classes(self) -> tuple[tuple[str, ...], np.ndarray]:
        if self._classes is None:
            path = self.class_file()
            if path is None:
                raise DataError(self._no_class_file())
            self._classes = read_class_file(path)
        return self._classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._read_classes()[0]

    @property
    def colors(self) -> np.ndarray:
        return self._read_classes()[1]

    def origin(self, folder: str) -> str:
        return "see the layout in prcl.data.folder's docstring (images/, masks/, classes.yaml)"

    def _no_class_file(self) -> str:
        return f"no classes.yaml (or .yml/.json) under {self.root}: {self.origin('classes.yaml')}"

    def layout_errors(self) -> list[str]:
        if not self.root.is_dir():
            return [f"dataset root {self.root} does not exist"]
        errors = [
            f"folder {f}/ is missing under {self.root}: {self.origin(f)}"
            for f in ("images", "masks") if not (self.root / f).is_dir()
        ]
        if self.class_file() is None:
            errors.append(self._no_class_file())
        return errors

    def standard_splits(self) -> tuple[str, ...]:
        return ("labeled", "unlabeled", "all")

    def standard_entries(self, name: str) -> list[SplitEntry]:
        folders = {
            "labeled": ("images",), "unlabeled": ("unlabeled",), "all": ("images", "unlabeled"),
        }
        if name not in folders:
            raise DataError(
                f"unknown standard split {name!r} of a folder dataset; use one of {list(folders)}"
            )
        paths = [p for f in folders[name] if (self.root / f).is_dir()
                 for p in list_images(self.root / f)]
        return [SplitEntry(p.relative_to(self.root).as_posix()) for p in paths]

    def check_splits(self) -> tuple[tuple[str, bool], ...]:
        unlabeled = (("unlabeled", False),) if (self.root / "unlabeled").is_dir() else ()
        return (("labeled", True),) + unlabeled

    def key(self, entry: SplitEntry) -> str:
        return PurePosixPath(entry.image).as_posix()

    def mask_rel(self, entry: SplitEntry) -> Optional[str]:
        """The mask named in the entry, else `masks/<path under images/>.png`, else None."""
        if entry.mask is not None:
            return entry.mask
        parts = PurePosixPath(entry.image).parts
        if len(parts) > 1 and parts[0] == "images":
            return PurePosixPath("masks", *parts[1:]).with_suffix(".png").as_posix()
        return None

    def sample(self, entry: SplitEntry, labeled: bool = True) -> Sample:
        mask = self.mask_rel(entry) if labeled else None
        if labeled and mask is None:
            raise DataError(
                f"line {entry.line}: {entry.image} is not under images/, so it has no mask; list "
                "labeled images from images/ (masks/ mirrors its paths) or add the mask as a "
                "second column"
            )
        return Sample(self.root / entry.image, self.root / mask if mask else None)

    def line(self, entry: SplitEntry, fmt: str = "ids") -> str:
        mask = self.mask_rel(entry)
        return entry.image if fmt == "ids" or mask is None else f"{entry.image} {mask}"
