"""PASCAL VOC 2012 reader: same arrays as torchvision, both mask folders, both list formats."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from torchvision.datasets import VOCSegmentation

from fixtures_data import make_voc, voc_id
from prcl.data.dataset import DataError, SegmentationDataset, load_image, load_mask
from prcl.data.sources import dataset_info, load_split
from prcl.data.voc import VOC_CLASSES, VOC_LABELED_COUNTS, VOC_SPLIT_SIZES

TRAIN = [voc_id(i) for i in range(6)]
VAL = [voc_id(i) for i in range(6, 9)]
AUG_ONLY = [voc_id(i) for i in range(9, 13)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), TRAIN, VAL)


@pytest.fixture(scope="module")
def voc_aug(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc_aug"), TRAIN, VAL, aug_only=AUG_ONLY, with_aug=True, seed=1)


@pytest.mark.parametrize("image_set", ["train", "val"])
def test_matches_torchvision(voc, image_set):
    reference = VOCSegmentation(str(voc.parent.parent), year="2012", image_set=image_set, download=False)
    samples = load_split("voc", voc, image_set)
    assert len(samples) == len(reference) > 0
    for sample, (image, target) in zip(samples, reference):
        assert np.array_equal(np.asarray(load_image(sample.image)), np.asarray(image))
        expected = np.asarray(target)
        assert target.mode == "P" and 255 in expected and expected.max() == 255
        assert np.array_equal(load_mask(sample.mask), expected)


def test_root_may_be_the_folder_holding_vocdevkit(voc):
    direct = load_split("voc", voc, "val")
    assert load_split("voc", voc.parent.parent, "val") == direct


def test_constants_and_info(voc):
    info = dataset_info("voc", voc)
    assert info.num_classes == 21 == len(VOC_CLASSES) and info.label_lut is None
    assert VOC_SPLIT_SIZES["train"] == 1464 == VOC_LABELED_COUNTS["classic"][-1]
    assert VOC_SPLIT_SIZES["train_aug"] == 10582 and VOC_SPLIT_SIZES["val"] == 1449
    assert VOC_LABELED_COUNTS["blender"] == (662, 1323, 2646, 5291)


def test_aug_masks_are_preferred_and_read_as_greyscale_indices(voc_aug):
    samples = load_split("voc", voc_aug, "train")
    assert all(s.mask.parent.name == "SegmentationClassAug" for s in samples)
    for s in samples:  # the palette PNG and the greyscale PNG hold the same indices
        assert np.array_equal(load_mask(s.mask), load_mask(voc_aug / "SegmentationClass" / s.mask.name))


def test_mask_missing_from_aug_falls_back_to_segmentation_class(voc_aug, tmp_path):
    root = shutil.copytree(voc_aug, tmp_path / "VOC2012")
    (root / "SegmentationClassAug" / f"{VAL[0]}.png").unlink()
    masks = [s.mask for s in load_split("voc", root, "val")]
    assert masks[0] == root / "SegmentationClass" / f"{VAL[0]}.png"
    assert all(m.parent.name == "SegmentationClassAug" for m in masks[1:])


def test_train_aug_is_every_aug_mask_except_val(voc_aug):
    ids = [s.id for s in load_split("voc", voc_aug, "train_aug")]
    assert ids == sorted(TRAIN + AUG_ONLY)


def test_train_aug_without_aug_folder_names_the_archive(voc):
    with pytest.raises(DataError, match="SegmentationClassAug.zip"):
        load_split("voc", voc, "train_aug")


def test_u2pl_and_unimatch_lists_give_the_same_samples(voc, tmp_path):
    ids = TRAIN[:3]
    (tmp_path / "u2pl.txt").write_text("\n".join(ids) + "\n")
    pairs = [f"JPEGImages/{i}.jpg SegmentationClass/{i}.png" for i in ids]
    (tmp_path / "unimatch.txt").write_text("# UniMatch format\n" + "\n".join(pairs) + "\n\n")
    u2pl = load_split("voc", voc, tmp_path / "u2pl.txt")
    assert u2pl == load_split("voc", voc, tmp_path / "unimatch.txt")
    assert [s.id for s in u2pl] == ids
    unlabeled = load_split("voc", voc, tmp_path / "u2pl.txt", labeled=False)
    assert all(s.mask is None for s in unlabeled)


def test_split_paths_are_relative_to_the_root(voc):
    (voc / "my_split.txt").write_text(f"{TRAIN[0]}\n")
    assert [s.id for s in load_split("voc", voc, "my_split.txt")] == [TRAIN[0]]


def test_pair_with_foreign_mask_is_an_error(voc, tmp_path):
    (tmp_path / "bad.txt").write_text(f"JPEGImages/{TRAIN[0]}.jpg SegmentationClass/{TRAIN[1]}.png\n")
    with pytest.raises(DataError, match=r"bad.txt, line 1: mask .* does not belong to image"):
        load_split("voc", voc, tmp_path / "bad.txt")


def test_missing_entries_are_named_with_the_root(voc, tmp_path):
    (tmp_path / "split.txt").write_text("\n".join([TRAIN[0], "2099_000001", "2099_000002"]) + "\n")
    with pytest.raises(DataError) as err:
        load_split("voc", voc, tmp_path / "split.txt")
    message = str(err.value)
    assert "2099_000001.jpg" in message and "2099_000002.jpg" in message and str(voc) in message
    assert TRAIN[0] not in message


def test_unknown_split_lists_the_standard_ones(voc):
    with pytest.raises(DataError, match=r"neither a list file .* nor a standard split of voc \(.*train.*val"):
        load_split("voc", voc, "nonexistent.txt")


def test_dataset_yields_remapped_tensors(voc):
    samples = load_split("voc", voc, "val")
    item = SegmentationDataset(samples, lambda image, mask: {"mask": mask})[0]
    assert np.array_equal(item["mask"], load_mask(samples[0].mask))
