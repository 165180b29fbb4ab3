"""The wheel-photograph benchmark (`prcl.data.photos`, issue #19): real pixels, a folder dataset that loads."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from fixtures_data import file_digests, require_scikit_image
from prcl.cli import main
from prcl.data import photos
from prcl.data.dataset import DataError
from prcl.data.sources import load_split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_scikit_image()
    return photos.generate_photo_dataset(tmp_path_factory.mktemp("photos") / "p", num_train=12, num_val=4,
                                         image_size=48)


def test_same_seed_gives_identical_files(tiny, tmp_path):
    again = photos.generate_photo_dataset(tmp_path / "p", num_train=12, num_val=4, image_size=48)
    assert file_digests(again) == file_digests(tiny)


FILES = {  # the module docstring's table, written out here: class -> the files of its photographs
    "ground": ["data/brick.png", "data/grass.png", "data/gravel.png"], "cat": ["data/chelsea.png"],
    "coffee": ["data/coffee.png"], "astronaut": ["data/astronaut.png"], "rocket": ["data/rocket.jpg"],
    "motorcycle": ["data/motorcycle_left.png"], "temple": ["datasets/images/china.jpg"],
    "flower": ["datasets/images/flower.jpg"], "portrait": ["mpl-data/sample_data/grace_hopper.jpg"]}
K = len(FILES)


def code(c: int, split: str) -> np.ndarray:
    """Class c's colour in `split`'s part of a coded photograph: (G - R) / (B - R) = c / 8, which a patch's
    jitter a·x + b (one a > 0 and b for all channels) keeps; B > R in the train part, B < R in the val part."""
    r = c / (K - 1)
    return np.round([20, 20 + 180 * r, 200] if split == "train" else [200, 200 - 180 * r, 20]).astype(np.uint8)


def part_width(width: int, split: str) -> int:
    """How many of a photograph's columns `split` may cut from: val the rightmost VAL_FRACTION, train the rest."""
    cut = round(width * (1 - photos.VAL_FRACTION))
    return width - cut if split == "val" else cut


def coded_photo(c: int, height: int, width: int) -> np.ndarray:
    """A photograph of class c: its train columns, then its val columns, in their codes."""
    photo = np.empty((height, width, 3), np.uint8)
    cut = part_width(width, "train")
    photo[:, :cut], photo[:, cut:] = code(c, "train"), code(c, "val")
    return photo


def class_code(image: np.ndarray) -> np.ndarray:
    """`[H, W]` (G - R) / (B - R) of an RGB image: c / 8 on the pixels of a coded photograph of class c."""
    x = image.astype(float)
    return (x[..., 1] - x[..., 0]) / (x[..., 2] - x[..., 0])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_patch_is_cut_from_its_own_class_photograph(seed):
    """Rendered from coded photographs: every pixel the mask gives class c > 0 holds class c's code, exactly
    up to uint8 rounding (neighbouring classes' codes differ by 0.125), at several seeds, in both splits."""
    seen = set()
    for split in ("train", "val"):
        parts = [[np.broadcast_to(code(c, split), (60, 90, 3)).copy()] for c in range(K)]
        for index in range(8):
            image, mask = photos.render_photo_sample(parts, seed=seed, split=split, index=index, image_size=48)
            for c in np.unique(mask)[1:]:
                np.testing.assert_allclose(class_code(image)[mask == c], c / (K - 1), atol=0.02,
                                           err_msg=f"class {c}, {split} {index}")
                seen.add(int(c))
    assert len(seen) >= K - 2  # nearly every class was drawn


def _luma(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("YCbCr"))[..., 0].astype(int)


def test_generated_images_take_each_class_from_its_photographs_and_each_split_from_its_columns(
        monkeypatch, tmp_path):
    """`generate_photo_dataset` on coded photographs (one per file, each a different size) at two seeds:
    every train pixel is from a train part (B > R), every val pixel from a val part (B < R); masks equal
    and images match (luma within JPEG error, per class region) the collage rendered from the parts this
    test cuts itself for each class's files; another seed gives other images."""
    sizes = {f: (50 + 7 * i, 70 + 11 * i) for i, f in enumerate(f for fs in FILES.values() for f in fs)}
    owner = {f: c for c, fs in enumerate(FILES.values()) for f in fs}
    monkeypatch.setattr(photos, "load_photo", lambda package, file: coded_photo(owner[file], *sizes[file]))
    parts = {split: [[np.broadcast_to(code(c, split), (sizes[f][0], part_width(sizes[f][1], split), 3)).copy()
                      for f in fs] for c, fs in enumerate(FILES.values())] for split in ("train", "val")}
    images = {}
    for seed in (0, 1):
        root = photos.generate_photo_dataset(tmp_path / f"seed{seed}", seed=seed, num_train=8, num_val=4,
                                             image_size=48)
        for split, n in (("train", 8), ("val", 4)):
            for i in range(n):
                name = f"{split}_{i:05d}"
                with Image.open(root / "images" / f"{name}.jpg") as img, \
                        Image.open(root / "masks" / f"{name}.png") as m:
                    image, mask = np.asarray(img.convert("RGB")), np.asarray(m)
                blue_minus_red = image[..., 2].astype(int) - image[..., 0]
                assert np.all(blue_minus_red > 0 if split == "train" else blue_minus_red < 0), (seed, name)
                ref_image, ref_mask = photos.render_photo_sample(parts[split], seed, split, i, 48)
                assert np.array_equal(mask, ref_mask), (seed, name)
                luma_error = np.abs(_luma(image) - _luma(ref_image))  # a neighbouring class: 10 or more
                for c in np.unique(mask):
                    assert np.median(luma_error[mask == c]) <= 5, (seed, name, c)
                images[seed, name] = image
    same = [name for seed, name in images if seed == 0 and np.array_equal(images[0, name], images[1, name])]
    assert not same, f"seeds 0 and 1 give the same {same}"


def test_train_and_val_come_from_disjoint_parts_of_each_photograph():
    photo = np.arange(100 * 200).reshape(100, 200, 1).repeat(3, 2)
    train, val = photos._part(photo, "train"), photos._part(photo, "val")
    assert train.shape[1] + val.shape[1] == 200 and val.shape[1] == round(200 * photos.VAL_FRACTION)
    assert not np.intersect1d(train[..., 0], val[..., 0]).size


def test_loads_as_a_folder_dataset_with_masks_for_every_image(tiny):
    assert (tiny / "classes.yaml").is_file() and (tiny / "meta.json").is_file()
    labeled = load_split("folder", tiny, "splits/1_4/labeled.txt")
    unlabeled = load_split("folder", tiny, "splits/1_4/unlabeled.txt", labeled=True)  # diagnostics read these
    val = load_split("folder", tiny, "splits/val.txt")
    assert (len(labeled), len(unlabeled), len(val)) == (3, 9, 4)
    for s in labeled + unlabeled + val:
        with Image.open(s.image) as img, Image.open(s.mask) as m:
            assert img.size == m.size == (48, 48) and m.mode == "P"
            assert np.asarray(m).max() < len(photos.CLASS_NAMES)
    assert main(["data", "check", "--dataset", "folder", "--root", str(tiny), "--quiet"]) == 0


def test_a_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install scikit-image.*prcl\[photos\]"):
        photos.load_photo("skimage", "data/chelsea.png")


def test_refuses_a_foreign_directory(tmp_path):
    require_scikit_image()  # the photographs are read first
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not part of the photo benchmark"):
        photos.generate_photo_dataset(tmp_path / "p", num_train=2, num_val=1, image_size=32)
