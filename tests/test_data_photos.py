"""The wheel-photograph benchmark (`prcl.data.photos`, issue #19): real pixels, a folder dataset that loads."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
from PIL import Image

from prcl.cli import main
from prcl.data import photos
from prcl.data.dataset import DataError
from prcl.data.sources import load_split

pytest.importorskip("skimage")  # the dev extra installs it


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return photos.generate_photo_dataset(tmp_path_factory.mktemp("photos") / "p", num_train=12, num_val=4,
                                         image_size=48)


def test_same_seed_gives_identical_files(tiny, tmp_path):
    again = photos.generate_photo_dataset(tmp_path / "p", num_train=12, num_val=4, image_size=48)
    assert _digest(again) == _digest(tiny)


def test_every_patch_is_cut_from_its_own_class_photograph():
    """Rendered from photographs that are constant images of value 20·c for class c: every pixel the mask
    gives class c > 0 must hold 20·c up to the patch jitter (× 0.8-1.2, ± 15)."""
    flat = [[np.full((60, 80, 3), 20 * c, np.uint8)] for c in range(len(photos.CLASS_NAMES))]
    image, mask = photos.render_photo_sample(flat, seed=1, split="train", index=3, image_size=64)
    assert len(np.unique(mask)) >= 3
    for c in np.unique(mask)[1:]:
        values = image[mask == c].astype(float)
        assert np.all(np.abs(values - 20.0 * c) <= 4.0 * c + 15 + 1), c


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
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not part of the photo benchmark"):
        photos.generate_photo_dataset(tmp_path / "p", num_train=2, num_val=1, image_size=32)
