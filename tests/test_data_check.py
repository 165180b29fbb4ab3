"""`check_dataset`: counts, pixel frequencies, and one precise message per kind of bad data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from fixtures_data import make_cityscapes, make_folder, make_voc, voc_id
from prcl.data.check import check_dataset

TRAIN = [voc_id(i) for i in range(5)]
VAL = [voc_id(i) for i in range(5, 8)]


@pytest.fixture(scope="module")
def pristine_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), TRAIN, VAL)


@pytest.fixture
def voc(pristine_voc, tmp_path):
    return shutil.copytree(pristine_voc, tmp_path / "VOC2012")


def only_error(report) -> str:
    assert not report.ok and len(report.errors) == 1, report.errors
    return report.errors[0]


def test_clean_dataset_reports_counts_and_frequencies(pristine_voc):
    report = check_dataset("voc", pristine_voc, workers=2)
    assert report.ok, report.errors
    assert [(s.role, s.entries, s.labeled) for s in report.splits] == [("train", 5, True), ("val", 3, True)]
    for split, ids in zip(report.splits, (TRAIN, VAL)):  # independent count, straight from the PNGs
        values = np.concatenate([np.asarray(Image.open(pristine_voc / "SegmentationClass" / f"{i}.png")).ravel() for i in ids])
        expected = np.r_[np.bincount(values[values != 255], minlength=21), (values == 255).sum()]
        assert np.array_equal(split.class_pixels, expected)
    text = report.format()
    assert "split train" in text and "aeroplane" in text and "ignore (255)" in text and text.endswith("OK")
    assert "the official voc val has 1449" in text


@pytest.mark.parametrize("folder, archive", [
    ("SegmentationClass", "SegmentationClassAug.zip"),
    ("JPEGImages", "VOCtrainval_11-May-2012.tar"),
    ("ImageSets", "VOCtrainval_11-May-2012.tar"),
])
def test_missing_folder_names_its_archive(voc, folder, archive):
    shutil.rmtree(voc / folder)
    error = " ".join(check_dataset("voc", voc).errors)
    assert "missing under" in error or "no mask folder" in error
    assert archive in error and "prcl data prepare voc" in error


def test_missing_cityscapes_folder_names_its_archive(tmp_path):
    root = make_cityscapes(tmp_path, {"train": [("aachen", 0, 19)], "val": [("lindau", 0, 19)]})
    shutil.rmtree(root / "gtFine" / "val")
    assert only_error(check_dataset("cityscapes", root)) == (
        f"folder gtFine/val/ is missing under {root}: it comes from gtFine_trainvaltest.zip; "
        f"run `prcl data prepare cityscapes --archives DIR --out {root}`")


def test_image_without_mask(voc):
    (voc / "SegmentationClass" / f"{TRAIN[1]}.png").unlink()
    assert only_error(check_dataset("voc", voc)) == (
        f"image without mask: {voc / 'JPEGImages' / TRAIN[1]}.jpg has no mask {voc / 'SegmentationClass' / TRAIN[1]}.png")


def test_mask_size_differs_from_image(voc):
    path = voc / "SegmentationClass" / f"{VAL[0]}.png"
    with Image.open(path) as img:
        img.crop((0, 0, 20, 16)).save(path)
    assert only_error(check_dataset("voc", voc)) == (
        f"mask {path} is 20x16 but image {voc / 'JPEGImages' / VAL[0]}.jpg is 24x16; they must match")


def test_label_values_outside_range(voc):
    path = voc / "SegmentationClass" / f"{TRAIN[0]}.png"
    with Image.open(path) as img:
        mask = np.asarray(img).copy()
        palette = img.getpalette()
    mask[0, :3] = [21, 21, 254]
    bad = Image.frombytes("P", img.size, mask.tobytes())
    bad.putpalette(palette)
    bad.save(path)
    assert only_error(check_dataset("voc", voc)) == f"mask {path} has label values [21, 254] outside [0, 21) ∪ {{255}}"


def test_16_bit_mask_values_are_not_wrapped(tmp_path):
    root = make_folder(tmp_path, ["a.png"])
    mask = np.zeros((16, 24), np.uint16)
    mask[0, 0] = 258  # would wrap to 2, a valid class, if read as uint8
    Image.fromarray(mask).save(root / "masks" / "a.png")
    assert "has label values [258] outside [0, 3) ∪ {255}" in only_error(check_dataset("folder", root))


def test_cityscapes_label_ids_outside_table(tmp_path):
    root = make_cityscapes(tmp_path, {"train": [("aachen", 0, 19)], "val": [("lindau", 0, 19)]})
    path = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 40
    Image.fromarray(mask).save(path)
    assert only_error(check_dataset("cityscapes", root)) == f"mask {path} has label values [40] outside the allowed values 0-33, 255"


def test_colour_mask_is_rejected(voc):
    path = voc / "SegmentationClass" / f"{TRAIN[2]}.png"
    Image.open(path).convert("RGB").save(path)
    assert "has mode RGB; expected an index PNG" in only_error(check_dataset("voc", voc))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated"),  # PIL: "image file is truncated" / "Truncated File Read"
    (lambda b: b"not an image", "cannot identify image file"),
])
def test_unreadable_image(voc, damage, message):
    path = voc / "JPEGImages" / f"{VAL[2]}.jpg"
    path.write_bytes(damage(path.read_bytes()))
    error = only_error(check_dataset("voc", voc))
    assert error.startswith(f"unreadable image {path}: ") and message in error.lower()
    assert error.endswith("re-extract it from its archive or drop it from the split")


def test_empty_split(voc, tmp_path):
    (tmp_path / "labeled.txt").write_text("\n")
    assert only_error(check_dataset("voc", voc, [tmp_path / "labeled.txt"])) == (
        f"split labeled: split file {tmp_path / 'labeled.txt'} is empty: it lists no images")


def test_split_entries_not_found(voc, tmp_path):
    (tmp_path / "labeled.txt").write_text(f"{TRAIN[0]}\n2099_000001\n2099_000002\n")
    assert only_error(check_dataset("voc", voc, [tmp_path / "labeled.txt"])) == (
        f"split {tmp_path / 'labeled.txt'}: 2 entries not found under root {voc}: 2099_000001, 2099_000002")


def test_duplicates_across_and_within_splits(voc, tmp_path):
    (tmp_path / "labeled.txt").write_text(f"{TRAIN[0]}\n{TRAIN[1]}\n{TRAIN[1]}\n")
    (tmp_path / "unlabeled.txt").write_text(f"{TRAIN[0]}\n{TRAIN[2]}\n{VAL[0]}\n")
    report = check_dataset("voc", voc, [tmp_path / "labeled.txt", tmp_path / "unlabeled.txt", "val"])
    assert sorted(report.errors) == sorted([
        f"split {tmp_path / 'labeled.txt'}: 1 ids listed more than once: {TRAIN[1]}",
        f"1 ids appear in both labeled and unlabeled: {TRAIN[0]}; a split must not overlap another",
        f"1 ids appear in both unlabeled and val: {VAL[0]}; a split must not overlap another",
    ])
    assert [s.labeled for s in report.splits] == [True, False, True]


def test_unlabeled_split_needs_no_masks(tmp_path):
    root = make_folder(tmp_path, ["a.jpg", "b.jpg"], ["u.jpg"])
    report = check_dataset("folder", root)
    assert report.ok and [(s.role, s.entries, s.labeled) for s in report.splits] == [
        ("labeled", 2, True), ("unlabeled", 1, False)]


def test_errors_are_collected_not_stopped_at_the_first(voc):
    (voc / "SegmentationClass" / f"{TRAIN[0]}.png").unlink()
    (voc / "JPEGImages" / f"{VAL[0]}.jpg").write_bytes(b"x")
    report = check_dataset("voc", voc)
    assert len(report.errors) == 2 and "FAILED" in report.format()
