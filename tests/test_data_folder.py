"""Folder dataset ("your own data"): class files, mask discovery, list files, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from fixtures_data import make_folder
from prcl.data.dataset import DataError, load_mask
from prcl.data.folder import read_class_file
from prcl.data.palette import voc_colormap
from prcl.data.sources import dataset_info, load_split

LABELED = ["a.jpg", "sub/b.png", "sub/c.jpg"]
UNLABELED = ["u1.jpg", "more/u2.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"), LABELED, UNLABELED)


def test_info_reads_names_and_colours(folder):
    info = dataset_info("folder", folder)
    assert info.class_names == ("background", "crack", "hole") and info.num_classes == 3
    assert info.colors.tolist() == [[0, 0, 0], [10, 20, 30], [20, 40, 60]]
    assert info.label_lut is None


def test_standard_splits_find_images_and_masks(folder):
    labeled = load_split("folder", folder, "labeled")
    assert [s.image.relative_to(folder).as_posix() for s in labeled] == sorted(f"images/{r}" for r in LABELED)
    assert [s.mask.relative_to(folder).as_posix() for s in labeled] == [
        "masks/a.png", "masks/sub/b.png", "masks/sub/c.png"]
    unlabeled = load_split("folder", folder, "unlabeled", labeled=False)
    assert sorted(s.image.name for s in unlabeled) == ["u1.jpg", "u2.png"]
    assert all(s.mask is None for s in unlabeled)
    assert set(np.unique(load_mask(labeled[0].mask))) <= {0, 1, 2, 255}


def test_list_files_in_both_formats(folder, tmp_path):
    (tmp_path / "ids.txt").write_text("images/sub/b.png\n")
    (tmp_path / "pairs.txt").write_text("images/sub/b.png masks/sub/b.png\n")
    assert load_split("folder", folder, tmp_path / "ids.txt") == load_split("folder", folder, tmp_path / "pairs.txt")


def test_unlabeled_image_cannot_be_listed_as_labeled(folder, tmp_path):
    (tmp_path / "bad.txt").write_text("unlabeled/u1.jpg\n")
    with pytest.raises(DataError, match=r"bad.txt, line 1: unlabeled/u1.jpg is not under images/, so it has no mask"):
        load_split("folder", folder, tmp_path / "bad.txt")
    assert len(load_split("folder", folder, tmp_path / "bad.txt", labeled=False)) == 1


def test_class_file_forms(tmp_path):
    (tmp_path / "a.yaml").write_text("classes: [background, crack]\n")
    names, colors = read_class_file(tmp_path / "a.yaml")
    assert names == ("background", "crack") and np.array_equal(colors, voc_colormap(2))
    (tmp_path / "b.json").write_text(json.dumps({"classes": [{"name": "x", "color": [1, 2, 3]}]}))
    names, colors = read_class_file(tmp_path / "b.json")
    assert names == ("x",) and colors.tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("text, message", [
    ("classes: []\n", "non-empty list under the key `classes`"),
    ("classes: [a, a]\n", r"repeats class names \['a'\]"),
    ("classes:\n  - {color: [1, 2, 3]}\n", "class 0 in .* needs a non-empty `name`"),
    ("classes:\n  - {name: a, color: [1, 2]}\n", "class 'a' in .*: `color` must be three integers 0-255"),
    ("classes:\n  - {name: a, color: [1, 2, 300]}\n", "`color` must be three integers 0-255"),
    ("classes: [a\n", "cannot parse class file"),
])
def test_class_file_errors(tmp_path, text, message):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(DataError, match=message):
        read_class_file(tmp_path / "classes.yaml")


def test_missing_class_file_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "x.png")
    with pytest.raises(DataError, match=r"no classes.yaml \(or .yml/.json\) under"):
        dataset_info("folder", tmp_path)


def test_16_bit_masks_through_the_training_loaders(tmp_path):
    """16-bit PNG masks (mode I;16) reach training through `SegmentationDataset` with their values: the val
    set whole, the labeled loader's crops (rows of one value each, so the 16-px crop and the flip keep every
    row). A mask holding 258 (2, a valid class, if cut to 8 bits) is refused, naming the file, by both."""
    from prcl.config import apply_overrides, load_config
    from prcl.data.loaders import build_train_data

    root = make_folder(tmp_path / "data", ["a.png", "b.png"])
    rows = np.array([0, 1, 2, 255] * 4, np.uint16)  # the 16 rows of a 24×16 fixture image
    values = np.repeat(rows[:, None], 24, axis=1)
    for name in ("a", "b"):
        Image.fromarray(values).save(root / "masks" / f"{name}.png")
    with Image.open(root / "masks" / "a.png") as img:
        assert img.mode == "I;16"
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.labeled_split=labeled",
                             "data.unlabeled_split=null", "data.val_split=labeled", "data.crop_size=16",
                             "data.scale_range=[1.0,1.0]", "data.batch_size=2"])
    data = build_train_data(cfg, with_unlabeled=False)
    for i in range(2):
        np.testing.assert_array_equal(data.val[i]["mask"].numpy(), values)
    batch = next(iter(data.labeled))
    np.testing.assert_array_equal(batch["mask"].numpy(), np.broadcast_to(rows[:, None], (2, 16, 16)))

    bad = values.copy()
    bad[3, 5] = 258
    Image.fromarray(bad).save(root / "masks" / "b.png")
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'masks' / 'b.png'))} has label values \[258\]"):
        build_train_data(cfg, with_unlabeled=False)  # data.check_masks: refused before any step
    message = rf"mask {re.escape(str(root / 'masks' / 'b.png'))} has label value 258 > 255"
    data = build_train_data(apply_overrides(cfg, ["data.check_masks=false"]), with_unlabeled=False)
    with pytest.raises(DataError, match=message):
        data.val[1]
    with pytest.raises(DataError, match=message):
        next(iter(data.labeled))
