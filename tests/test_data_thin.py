"""The rare thin-structure benchmark (`prcl.data.thin_structures`, issue #35): deterministic, rare, thin,
train and val from disjoint parts of the photographs, a folder dataset that loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from fixtures_data import file_digests, require_scikit_image
from prcl.cli import main
from prcl.data import thin_structures as thin
from prcl.data.dataset import DataError
from prcl.data.sources import load_split

SIZES = ["--num-train", "16", "--num-val", "4", "--image-size", "48"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 train and 4 val images of 48², written through `prcl data thin`."""
    require_scikit_image()
    root = tmp_path_factory.mktemp("thin") / "t"
    assert main(["data", "thin", "--out", str(root), *SIZES]) == 0
    return root


@pytest.fixture(scope="module")
def grounds():
    require_scikit_image()
    return {split: [thin.ground_part(thin.load_photo(*src), split) for src in thin.GROUNDS.values()]
            for split in ("train", "val")}


def test_same_seed_gives_identical_files_and_another_seed_other_images(tiny, tmp_path):
    again = thin.generate_thin_dataset(tmp_path / "t", num_train=16, num_val=4, image_size=48)
    assert file_digests(again) == file_digests(tiny)
    other = thin.generate_thin_dataset(tmp_path / "o", seed=1, num_train=16, num_val=4, image_size=48)
    images = [f"images/{s}_{i:05d}.jpg" for s, n in (("train", 16), ("val", 4)) for i in range(n)]
    assert not [name for name in images if file_digests(other)[name] == file_digests(tiny)[name]]


def test_loads_as_a_folder_dataset_with_two_classes_and_masks_for_every_image(tiny):
    assert (tiny / "classes.yaml").is_file() and (tiny / "meta.json").is_file()
    labeled = load_split("folder", tiny, "splits/1_4/labeled.txt")
    unlabeled = load_split("folder", tiny, "splits/1_4/unlabeled.txt", labeled=True)  # diagnostics read these
    val = load_split("folder", tiny, "splits/val.txt")
    assert (len(labeled), len(unlabeled), len(val)) == (4, 12, 4)
    assert not {s.image for s in labeled} & {s.image for s in unlabeled}
    for s in labeled + unlabeled + val:
        with Image.open(s.image) as img, Image.open(s.mask) as m:
            assert img.size == m.size == (48, 48) and m.mode == "P"
            assert set(np.unique(np.asarray(m))) <= {0, 1}
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["version"] == thin.GENERATOR_VERSION and meta["class_names"] == ["background", "structure"]
    assert main(["data", "check", "--dataset", "folder", "--root", str(tiny), "--quiet"]) == 0


def test_meta_records_the_foreground_fraction_of_the_masks(tiny):
    masks = [np.asarray(Image.open(p)) for p in sorted((tiny / "masks").glob("*.png"))]
    recorded = json.loads((tiny / "meta.json").read_text())["pixel_fraction"]["structure"]
    assert recorded == pytest.approx(np.mean(masks), abs=1e-5)


def test_the_structure_is_rare_at_the_benchmark_size(grounds):
    """Over 24 images of 128² (train and val), 3-10 % of the pixels are structure (about 6 % over 800);
    a few images hold none, none holds more than a quarter."""
    fractions = [thin.render_thin_sample(grounds[split], 0, split, i)[1].mean()
                 for split in ("train", "val") for i in range(12)]
    assert 0.03 <= np.mean(fractions) <= 0.10
    assert max(fractions) < 0.25


def test_the_structures_are_thin(grounds):
    """1-3 px wide: one 3×3 erosion keeps a core (the wider parts), two remove nearly all of it."""
    masks = np.stack([thin.render_thin_sample(grounds["train"], 1, "train", i, image_size=64)[1].astype(bool)
                      for i in range(8)])
    square = np.ones((3, 3), bool)
    kept = [sum(binary_erosion(m, square, iterations=k, border_value=1).sum() for m in masks) / masks.sum()
            for k in (1, 2)]
    assert masks.sum() > 0 and kept[0] > 0.02 and kept[1] < 0.01, kept


def test_a_straight_stroke_covers_its_width_times_its_length():
    """`render_strokes`' coverage is the stroke's area (end caps included), its value the value × coverage,
    and its mask (coverage ≥ 0.5) is `width` rows thick for an integer width."""
    for width in (1.0, 2.0, 3.0):
        stroke = thin.Stroke(np.array([[8.0, 20.0], [40.0, 20.0]]), np.full(2, width), np.full(2, 0.4))
        cover, value = thin.render_strokes([stroke], 64)
        assert cover.sum() == pytest.approx(32 * width + np.pi * width ** 2 / 4, rel=0.05)
        np.testing.assert_allclose(value, 0.4 * cover, atol=2 / 255)
        assert (cover[:, 20] >= 0.5).sum() == width


def test_train_and_val_cut_their_grounds_from_disjoint_columns():
    photo = np.arange(100 * 200).reshape(100, 200, 1).repeat(3, 2)
    train, val = thin.ground_part(photo, "train"), thin.ground_part(photo, "val")
    assert train.part.shape[1] + val.part.shape[1] == 200 and val.part.shape[1] == round(200 * thin.VAL_FRACTION)
    assert not np.intersect1d(train.part[..., 0], val.part[..., 0]).size
    assert train.full_side == val.full_side == 100


def test_every_pixel_of_an_image_comes_from_its_split_part(monkeypatch, tmp_path):
    """Grounds coded by colour, blue in the train columns and red in the val columns: every pixel of every
    train image stays bluer than red, and of every val image redder than blue, through casts, blends,
    strokes, blur and noise."""
    def coded(package, file):
        photo = np.empty((120, 150, 3), np.uint8)
        cut = round(150 * (1 - thin.VAL_FRACTION))
        photo[:, :cut], photo[:, cut:] = (20, 20, 200), (200, 20, 20)
        return photo

    monkeypatch.setattr(thin, "load_photo", coded)
    root = thin.generate_thin_dataset(tmp_path / "t", num_train=6, num_val=6, image_size=48)
    for split in ("train", "val"):
        for i in range(6):
            with Image.open(root / "images" / f"{split}_{i:05d}.jpg") as img:
                x = np.asarray(img.convert("RGB"), dtype=int)
            blue_minus_red = x[..., 2] - x[..., 0]
            assert np.all(blue_minus_red > 0 if split == "train" else blue_minus_red < 0), (split, i)


def test_refuses_a_foreign_directory(tmp_path):
    require_scikit_image()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not part of the thin-structure benchmark"):
        thin.generate_thin_dataset(tmp_path / "t", num_train=2, num_val=1, image_size=32)
    assert main(["data", "thin", "--out", str(tmp_path / "t"), *SIZES]) == 2
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine"
