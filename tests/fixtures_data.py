"""Tiny dataset trees in the exact official layouts, for the `tests/test_data_*` files.

File names, folder nesting, image modes and label encodings follow the real archives:
VOC 2012 (`VOCdevkit/VOC2012/...`, palette PNGs with the VOC colour map and 255 boundaries,
greyscale `SegmentationClassAug`), Cityscapes (`leftImg8bit/`, `gtFine/` with labelIds including
ignored ids) and the folder dataset of `prcl.data.folder`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
from PIL import Image

from prcl.data.palette import voc_palette

SIZE = (24, 16)  # (width, height) of every fixture image


def random_image(rng: np.random.Generator, size=SIZE) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def block_mask(rng: np.random.Generator, classes: Sequence[int], size=SIZE, boundary: bool = True) -> np.ndarray:
    """`[H, W]` uint8: vertical bands of `classes`, with a 1-pixel 255 line between bands."""
    w, h = size
    mask = np.zeros((h, w), dtype=np.uint8)
    edges = np.linspace(0, w, len(classes) + 1).astype(int)
    for c, (a, b) in zip(classes, zip(edges[:-1], edges[1:])):
        mask[:, a:b] = c
        if boundary and a > 0:
            mask[:, a] = 255
    mask[rng.integers(0, h), :] = mask[rng.integers(0, h), :]  # some row noise
    return mask


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    img.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save(img: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def voc_id(i: int) -> str:
    return f"{2007 + i % 5}_{i:06d}"


def make_voc(
    parent: Path, train: Sequence[str], val: Sequence[str], *, aug_only: Sequence[str] = (),
    with_aug: bool = False, classes: Optional[dict[str, Sequence[int]]] = None, seed: int = 0,
) -> Path:
    """Write `parent/VOCdevkit/VOC2012` and return that folder.

    `SegmentationClass/` (palette PNGs) covers train + val, like the VOC tar; with `with_aug`,
    `SegmentationClassAug/` (greyscale) covers train + `aug_only` + val, like SBD's zip.
    `classes[id]` fixes the classes present in an image (default: two random object classes).
    """
    rng = np.random.default_rng(seed)
    root = Path(parent) / "VOCdevkit" / "VOC2012"
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", train), ("val", val), ("trainval", list(train) + list(val))):
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "Annotations").mkdir(exist_ok=True)  # present in the real tar, never read
    for image_id in list(train) + list(val) + list(aug_only):
        save(random_image(rng), root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        cls = (classes or {}).get(image_id) or [0, *rng.integers(1, 21, 2).tolist()]
        mask = block_mask(rng, cls)
        if image_id not in aug_only:
            save_palette_png(mask, root / "SegmentationClass" / f"{image_id}.png")
        if with_aug:
            save(Image.fromarray(mask), root / "SegmentationClassAug" / f"{image_id}.png")
    return root


# Cityscapes labelIds written into fixtures: every id 0..33 appears somewhere.
ALL_LABEL_IDS = list(range(34))


def cityscapes_name(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def make_cityscapes(
    root: Path, frames: dict[str, Sequence[tuple[str, int, int]]], *, train_id_table: Optional[dict] = None,
    seed: int = 0,
) -> Path:
    """Write `leftImg8bit/<split>/<city>/...` and `gtFine/<split>/<city>/...` under `root`.

    Masks are labelIds (mode L) cycling through all 34 ids; `_gtFine_color.png`,
    `_gtFine_instanceIds.png` and `_gtFine_polygons.json` are written too, as in the real zip.
    With `train_id_table` ({labelId: trainId}), `_gtFine_labelTrainIds.png` files are added.
    """
    rng = np.random.default_rng(seed)
    k = 0
    for split, items in frames.items():
        for city, seq, frame in items:
            name = cityscapes_name(city, seq, frame)
            save(random_image(rng), root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            ids = [ALL_LABEL_IDS[(k + j) % 34] for j in range(6)]
            k += 6
            label_ids = block_mask(rng, ids, boundary=False)
            gt = root / "gtFine" / split / city
            save(Image.fromarray(label_ids), gt / f"{name}_gtFine_labelIds.png")
            save(Image.fromarray(np.zeros(label_ids.shape + (3,), np.uint8)), gt / f"{name}_gtFine_color.png")
            save(Image.fromarray(label_ids.astype(np.uint16) * 1000), gt / f"{name}_gtFine_instanceIds.png")
            (gt / f"{name}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": SIZE[1], "imgWidth": SIZE[0], "objects": []}))
            if train_id_table is not None:
                train_ids = np.vectorize(lambda v: train_id_table[int(v)])(label_ids).astype(np.uint8)
                save(Image.fromarray(train_ids), gt / f"{name}_gtFine_labelTrainIds.png")
    return root


def make_folder(
    root: Path, labeled: Sequence[str], unlabeled: Sequence[str] = (), *,
    class_names: Sequence[str] = ("background", "crack", "hole"), classes: Optional[dict[str, Sequence[int]]] = None,
    seed: int = 0,
) -> Path:
    """Write a folder dataset: `images/<rel>`, `masks/<rel>.png`, `unlabeled/<rel>`, classes.yaml."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["classes:"] + [f"  - {{name: {n}, color: [{10 * i}, {20 * i}, {30 * i}]}}" for i, n in enumerate(class_names)]
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    for rel in labeled:
        save(random_image(rng), root / "images" / rel)
        cls = (classes or {}).get(rel) or [0, int(rng.integers(1, len(class_names)))]
        save(Image.fromarray(block_mask(rng, cls)), (root / "masks" / rel).with_suffix(".png"))
    for rel in unlabeled:
        save(random_image(rng), root / "unlabeled" / rel)
    return root


def require_scikit_image() -> None:
    """The generated benchmarks' photographs ship in scikit-image, which is in the [photos] and [dev] extras, so CI
    runs their tests: fail, never skip, without it."""
    try:
        import skimage  # noqa: F401
    except ImportError:
        pytest.fail("scikit-image is missing: it is in the [photos] and [dev] extras (pip install -e '.[dev]')")


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
