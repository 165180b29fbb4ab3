"""A second benchmark made of real photographs that ship inside PyPI wheels (issue #19).

The built-in dataset (`prcl.data.synthetic`) is procedural: flat textures and sharp shapes, on which
ImageNet features and pseudo-labels do well. This one is unlike it. Every pixel is from a real
photograph, a class is the *content of one photograph* (a cat, a coffee cup, an astronaut...), and an
image is a collage: a ground texture, then 3-5 irregular patches, each cut from a random place and
scale of its class's photograph. Patches of different photographs share sky, skin, dark fabric and
wood, so a model trained on few labels confuses them and its pseudo-labels are wrong where real ones
are: in confidently labeled regions that look like another class.

Train and val images are cut from disjoint parts of each photograph (val: its rightmost
`VAL_FRACTION` of columns), so val measures how a model generalises from one part of a scene to another.

==  ==========  =========================================================
id  name        photograph (package, file)
==  ==========  =========================================================
0   ground      scikit-image: brick.png, grass.png, gravel.png (greyscale, given a random colour cast)
1   cat         scikit-image: chelsea.png
2   coffee      scikit-image: coffee.png
3   astronaut   scikit-image: astronaut.png
4   rocket      scikit-image: rocket.jpg
5   motorcycle  scikit-image: motorcycle_left.png
6   temple      scikit-learn: china.jpg
7   flower      scikit-learn: flower.jpg
8   portrait    matplotlib: grace_hopper.jpg
==  ==========  =========================================================

The photographs are read from the installed packages' files (scikit-image only needs to be
installed: `pip install prcl[photos]`); nothing is downloaded. Layout: a folder dataset
(`prcl.data.folder`) with `images/`, `masks/` (every image has a mask, the unlabeled ones too, for
the reliability diagnostics only), `classes.yaml`, the nested splits of
`prcl.data.generated.write_nested_splits` and `meta.json`, written last.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from prcl.data.dataset import DataError
from prcl.data.palette import voc_colormap
from prcl.data.generated import generator_meta, write_folder_dataset

GENERATOR_VERSION = 1  # bump whenever the files change
VAL_FRACTION = 0.3
PHOTOS: dict[str, list[tuple[str, str]]] = {  # class -> [(package, file under the package)]
    "ground": [("skimage", "data/brick.png"), ("skimage", "data/grass.png"), ("skimage", "data/gravel.png")],
    "cat": [("skimage", "data/chelsea.png")],
    "coffee": [("skimage", "data/coffee.png")],
    "astronaut": [("skimage", "data/astronaut.png")],
    "rocket": [("skimage", "data/rocket.jpg")],
    "motorcycle": [("skimage", "data/motorcycle_left.png")],
    "temple": [("sklearn", "datasets/images/china.jpg")],
    "flower": [("sklearn", "datasets/images/flower.jpg")],
    "portrait": [("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")],
}
CLASS_NAMES: tuple[str, ...] = tuple(PHOTOS)
INSTALL = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def load_photo(package: str, file: str) -> np.ndarray:
    """One photograph from an installed package as `[H, W, 3]` uint8; a clear error if it is missing."""
    if importlib.util.find_spec(package) is None:
        raise DataError(f"the photo benchmark needs the package {INSTALL[package]} (it ships {file}); "
                        f"install it with `pip install {INSTALL[package]}` or `pip install prcl[photos]`")
    path = importlib.resources.files(package).joinpath(file)
    if not path.is_file():
        raise DataError(f"{INSTALL[package]} is installed but has no {file}; install a version that ships it "
                        f"(`pip install -U {INSTALL[package]}`)")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _part(photo: np.ndarray, split: str) -> np.ndarray:
    """The columns of `photo` that `split` may cut from: val the rightmost VAL_FRACTION, train the rest."""
    cut = round(photo.shape[1] * (1 - VAL_FRACTION))
    return photo[:, cut:] if split == "val" else photo[:, :cut]


def _cut(photo: np.ndarray, size: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A random square of side `lo`-`hi` × the photo's shorter side, flipped at random, resized to `size`."""
    h, w = photo.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(lo, hi)))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    patch = np.asarray(patch, dtype=np.float32)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return patch * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15)  # brightness/contrast: colour alone is no cue


def _blob(size: int, box: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A random star-convex polygon (8-14 vertices at 0.45-1 × the radius) as a boolean `[size, size]` mask."""
    cy, cx, r = box
    k = int(rng.integers(8, 15))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = r * rng.uniform(0.45, 1.0, k)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)],
                                   fill=1)
    return np.asarray(canvas, dtype=bool)


def render_photo_sample(photos: list[list[np.ndarray]], seed: int, split: str, index: int,
                        image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One collage `(image [S, S, 3] uint8, mask [S, S] uint8)`, deterministic in (seed, split, index);
    `photos[c]` are class c's photographs, already cut to the split's part."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split], index])
    ground = photos[0][rng.integers(len(photos[0]))]
    image = _cut(ground, image_size, rng, 0.3, 0.9) * rng.uniform(0.5, 1.2, 3)  # a colour cast: grey is no cue
    mask = np.zeros((image_size, image_size), np.uint8)
    for _ in range(int(rng.integers(3, 6))):
        c = int(rng.integers(1, len(photos)))
        r = int(image_size * rng.uniform(0.2, 0.5))
        cy, cx = (int(v) for v in rng.integers(0, image_size, 2))
        inside = _blob(image_size, (cy, cx, r), rng)
        photo = photos[c][rng.integers(len(photos[c]))]
        image[inside] = _cut(photo, image_size, rng, 0.25, 0.8)[inside]
        mask[inside] = c
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_photo_dataset(root: Union[str, Path], *, seed: int = 0, num_train: int = 2000, num_val: int = 300,
                           image_size: int = 128, progress: bool = False) -> Path:
    """Write the benchmark to `root` (a new or earlier photo-benchmark directory); returns `root`.
    Written to a sibling temporary directory, `meta.json` last, then renamed."""
    meta = {**generator_meta("the photo benchmark", "prcl.data.photos", GENERATOR_VERSION, seed=seed,
                             num_train=num_train, num_val=num_val, image_size=image_size),
            "class_names": list(CLASS_NAMES), "photos": {k: [f"{p}:{f}" for p, f in v] for k, v in PHOTOS.items()}}
    photos = {split: [[_part(load_photo(*src), split) for src in PHOTOS[name]] for name in CLASS_NAMES]
              for split in ("train", "val")}
    return write_folder_dataset(
        root, what="the photo benchmark", render=lambda split, i: render_photo_sample(photos[split], seed, split, i,
                                                                                      image_size),
        sizes={"train": num_train, "val": num_val}, seed=seed, class_names=CLASS_NAMES,
        colors=voc_colormap(len(CLASS_NAMES)), meta=meta, quality=92, progress=progress)
