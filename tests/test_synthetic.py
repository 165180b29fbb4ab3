"""Tests for the built-in procedural dataset (prcl.data.synthetic): determinism, layout, splits."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prcl.data import synthetic
from prcl.data.dataset import DataError, SegmentationDataset, load_mask
from prcl.data.palette import voc_palette
from prcl.data.sources import load_split
from prcl.data.generated import LABELED_FRACTIONS
from prcl.data.synthetic import (
    CLASS_NAMES,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    render_sample,
)

TINY = dict(num_train=24, num_val=8, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _ids(path: Path) -> list[str]:
    return path.read_text().split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", seed=3, **TINY)


def test_same_seed_gives_identical_files_and_other_seed_differs(tiny, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", seed=3, **TINY)
    other = generate_synthetic_dataset(tmp_path / "other", seed=4, **TINY)
    reference = _files(tiny)
    assert _files(again) == reference
    other_files = _files(other)
    assert other_files.keys() == reference.keys()
    pictures = [k for k in reference if k.endswith((".png", ".jpg"))]
    assert len(pictures) == 2 * (TINY["num_train"] + TINY["num_val"])
    assert all(other_files[k] != reference[k] for k in pictures)


def test_worker_count_does_not_change_the_output(tiny, tmp_path):
    parallel = generate_synthetic_dataset(tmp_path / "par", seed=3, workers=2, **TINY)
    assert _files(parallel) == _files(tiny)


def test_masks_are_voc_palette_pngs_matching_their_images(tiny):
    ids = _ids(tiny / "ImageSets/Segmentation/train.txt") + _ids(tiny / "splits/val.txt")
    assert len(ids) == TINY["num_train"] + TINY["num_val"]
    for sid in ids:
        with Image.open(tiny / "SegmentationClass" / f"{sid}.png") as mask:
            assert mask.mode == "P"
            assert mask.getpalette()[: 3 * 256] == voc_palette()
            values = set(np.unique(np.asarray(mask)).tolist())
        assert values <= set(range(len(CLASS_NAMES))) | {255}
        with Image.open(tiny / "JPEGImages" / f"{sid}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == mask.size == (TINY["image_size"],) * 2


def test_every_class_and_the_ignore_label_appear_in_a_moderate_set():
    seen = set()
    for i in range(40):
        _, mask = render_sample(0, "train", i, image_size=64)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(CLASS_NAMES))) | {255}
    assert len(CLASS_NAMES) >= 7 and CLASS_NAMES[0] == "background"


def test_module_docstring_table_matches_the_class_definitions():
    """The README cites the docstring's class table: it must not drift from the code."""
    rows = {line.split()[1]: line for line in synthetic.__doc__.splitlines()
            if line[:1].isdigit()}
    assert list(rows) == list(CLASS_NAMES)
    for spec in synthetic.OBJECT_CLASSES:
        lo, hi = (int(h) % 360 for h in spec.hue)
        assert f" {lo}-{hi} " in rows[spec.name], f"{spec.name}: hue {lo}-{hi} not in the table"
        assert spec.texture.rstrip("s")[:5] in rows[spec.name].replace("-", "")


@pytest.mark.parametrize("distractor_last", [True, False])
def test_later_layers_occlude_earlier_ones_in_the_mask(monkeypatch, distractor_last):
    """A small background distractor centred on a big tile: whichever is painted last wins."""
    tile = (3, "rect", "checker", synthetic.OBJECT_CLASSES[2].hue)
    clutter = (0, "rect", "grain", None)
    order = [tile, clutter] if distractor_last else [clutter, tile]
    poses = iter({"centre": np.array([32.0, 32.0]), "angle": 0.0, "aspect": 1.0,
                  "scale": 20.0 if layer is tile else 8.0} for layer in order)
    monkeypatch.setattr(synthetic, "_layers", lambda rng: order)
    monkeypatch.setattr(synthetic, "_random_pose", lambda *args: next(poses))
    _, mask = render_sample(0, "train", 0, image_size=64, ignore_boundary=0)
    # the tile's half side is 20 * sqrt(pi) / 2 = 17.7 px, the distractor's 7.1 px
    assert mask[32, 32] == (0 if distractor_last else 3)
    assert mask[32, 45] == mask[20, 32] == 3
    assert mask[2, 2] == mask[32, 55] == 0


def test_ignore_band_is_the_label_change_neighbourhood():
    """The 255 band = pixels whose (2w+1)^2 window, scipy's reference filters, holds two labels."""
    ndimage = pytest.importorskip("scipy.ndimage")
    _, plain = render_sample(5, "val", 2, image_size=64, ignore_boundary=0)
    assert 255 not in plain and len(np.unique(plain)) > 1
    for width in (1, 2):
        _, banded = render_sample(5, "val", 2, image_size=64, ignore_boundary=width)
        size = 2 * width + 1
        band = ndimage.maximum_filter(plain, size, mode="nearest") != ndimage.minimum_filter(
            plain, size, mode="nearest")
        np.testing.assert_array_equal(banded, np.where(band, 255, plain))


def test_split_files_are_nested_disjoint_and_cover_train(tiny):
    train = _ids(tiny / "ImageSets/Segmentation/train.txt")
    val = _ids(tiny / "ImageSets/Segmentation/val.txt")
    assert _ids(tiny / "splits/val.txt") == val
    assert not set(train) & set(val)
    assert train == [f"train_{i:05d}" for i in range(TINY["num_train"])]
    previous: set[str] = set()
    for frac in LABELED_FRACTIONS:
        labeled = set(_ids(tiny / "splits" / frac / "labeled.txt"))
        unlabeled_file = tiny / "splits" / frac / "unlabeled.txt"
        unlabeled = set(_ids(unlabeled_file)) if unlabeled_file.exists() else set()
        denom = 1 if frac == "full" else int(frac.split("_")[1])
        assert len(labeled) == max(1, TINY["num_train"] // denom)
        assert previous <= labeled, f"{frac} does not contain the smaller labeled subset"
        assert not labeled & unlabeled and labeled | unlabeled == set(train)
        previous = labeled
    assert not (tiny / "splits/full/unlabeled.txt").exists()


def test_meta_records_parameters_and_counts(tiny):
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["params"] == {"seed": 3, "ignore_boundary": 1, **TINY}
    assert meta["version"] == synthetic.GENERATOR_VERSION
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["counts"]["1_4"] == {"labeled": 6, "unlabeled": 18}
    assert abs(sum(meta["pixel_fraction"].values()) - 1) < 1e-3


def test_ensure_is_idempotent_and_rejects_other_parameters(tiny):
    stamps = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert ensure_synthetic_dataset(tiny, seed=3, **TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == stamps
    with pytest.raises(DataError, match=r"seed=3 \(wanted 9\)") as err:
        ensure_synthetic_dataset(tiny, seed=9, **TINY)
    assert str(tiny) in str(err.value) and "Delete" in str(err.value)
    with pytest.raises(TypeError, match="colour"):
        ensure_synthetic_dataset(tiny, colour="red")


def test_ensure_regenerates_an_incomplete_directory(tiny, tmp_path):
    root = generate_synthetic_dataset(tmp_path / "data", seed=3, **TINY)
    (root / "meta.json").unlink()
    (root / "JPEGImages" / "train_00004.jpg").unlink()
    ensure_synthetic_dataset(root, seed=3, **TINY)
    assert _files(root) == _files(tiny)


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(job)

    real = synthetic._write_sample
    monkeypatch.setattr(synthetic, "_write_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "data", **TINY)
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        ensure_synthetic_dataset(tmp_path, **TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_train, num_val >= 1"):
        generate_synthetic_dataset(tmp_path / "d", num_train=0)


def test_loads_through_the_common_loader(tiny):
    samples = load_split("synthetic", tiny, "splits/1_4/labeled.txt")
    assert len(samples) == TINY["num_train"] // 4
    dataset = SegmentationDataset(samples, transform=lambda img, mask: {"image": img, "mask": mask})
    item = dataset[0]
    assert item["image"].size == (TINY["image_size"],) * 2
    assert item["mask"].shape == (TINY["image_size"],) * 2
    np.testing.assert_array_equal(item["mask"], load_mask(samples[0].mask))
    unlabeled = load_split("synthetic", tiny, "splits/1_4/unlabeled.txt", labeled=False)
    assert all(s.mask is None for s in unlabeled)
    assert not {s.id for s in samples} & {s.id for s in unlabeled}


def test_training_refuses_a_dataset_from_another_generator_version(tiny, tmp_path):
    from prcl.config import load_config
    from prcl.data.loaders import prepare_root

    root = tmp_path / "old"
    shutil.copytree(tiny, root)
    meta = json.loads((root / "meta.json").read_text())
    cfg = load_config(None, [f"data.root={root}"])
    assert prepare_root(cfg) == root
    (root / "meta.json").write_text(json.dumps({**meta, "version": synthetic.GENERATOR_VERSION - 1}))
    with pytest.raises(DataError, match=f"version {synthetic.GENERATOR_VERSION - 1}.*delete {root}"):
        prepare_root(cfg)
