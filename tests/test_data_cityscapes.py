"""Cityscapes reader: trainId table vs torchvision / cityscapesscripts, arrays vs torchvision."""

from __future__ import annotations

import numpy as np
import pytest
from torchvision.datasets import Cityscapes

from fixtures_data import cityscapes_name, make_cityscapes
from prcl.data.cityscapes import (
    CITYSCAPES_CLASSES, CITYSCAPES_LABELED_COUNTS, CITYSCAPES_LABELS, CITYSCAPES_SPLIT_SIZES, train_id_lut,
)
from prcl.data.dataset import DataError, SegmentationDataset, load_image, load_mask
from prcl.data.sources import dataset_info, load_split

FRAMES = {
    "train": [("aachen", 0, 19), ("aachen", 1, 19), ("bremen", 0, 42), ("zurich", 7, 19)],
    "val": [("frankfurt", 0, 294), ("lindau", 3, 19)],
}


def torchvision_table() -> dict[int, int]:
    """labelId -> trainId from torchvision's own Cityscapes class list (-1 and 255 -> 255)."""
    return {c.id: (255 if c.train_id in (-1, 255) else c.train_id) for c in Cityscapes.classes}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), FRAMES)


@pytest.fixture(scope="module")
def city_train_ids(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes_tid"), FRAMES, train_id_table=torchvision_table())


def test_table_matches_torchvision():
    ours = {label_id: train_id for label_id, _, train_id in CITYSCAPES_LABELS}
    assert ours == torchvision_table()
    names = {c.id: c.name for c in Cityscapes.classes}
    assert all(names[i] == name for i, name, _ in CITYSCAPES_LABELS)
    assert ours[-1] == 255 and names[-1] == "license plate"


def test_table_matches_cityscapesscripts():
    try:  # a [dev] dependency, so that CI runs this test rather than skipping it
        from cityscapesscripts.helpers import labels
    except ImportError:
        pytest.fail("cityscapesscripts is missing: it is in the [dev] extra (pip install -e '.[dev]')")
    reference = {l.id: (255 if l.trainId in (-1, 255) else l.trainId) for l in labels.labels}
    assert {i: t for i, _, t in CITYSCAPES_LABELS} == reference
    train_names = tuple(l.name for l in sorted(labels.labels, key=lambda l: l.trainId) if 0 <= l.trainId < 255)
    assert CITYSCAPES_CLASSES == train_names


def test_lut_covers_every_byte():
    lut = train_id_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    table = torchvision_table()
    for raw in range(256):
        assert lut[raw] == table.get(raw, 255)
    assert sorted(set(lut.tolist()) - {255}) == list(range(19)) == list(range(len(CITYSCAPES_CLASSES)))
    assert CITYSCAPES_SPLIT_SIZES == {"train": 2975, "val": 500}
    assert CITYSCAPES_LABELED_COUNTS == (186, 372, 744, 1488)


@pytest.mark.parametrize("split", ["train", "val"])
def test_matches_torchvision_semantic_plus_table(city, split):
    reference = Cityscapes(str(city), split=split, mode="fine", target_type="semantic")
    table = np.array([torchvision_table().get(v, 255) for v in range(256)], dtype=np.uint8)
    expected = {}
    for index, path in enumerate(reference.images):
        image, target = reference[index]
        expected[path] = (np.asarray(image), table[np.asarray(target)])
    info = dataset_info("cityscapes", city)
    samples = load_split("cityscapes", city, split)
    assert sorted(str(s.image) for s in samples) == sorted(expected) and len(samples) == len(FRAMES[split])
    seen = set()
    for sample in samples:
        image, mask = expected[str(sample.image)]
        assert np.array_equal(np.asarray(load_image(sample.image)), image)
        assert np.array_equal(load_mask(sample.mask, info.label_lut), mask)
        seen |= set(np.unique(mask).tolist())
    assert 255 in seen and len(seen - {255}) >= 5 and max(seen - {255}) < 19


def test_label_train_ids_are_read_without_lut(city, city_train_ids):
    info = dataset_info("cityscapes", city_train_ids)
    assert info.label_lut is None
    samples = load_split("cityscapes", city_train_ids, "train")
    assert all(s.mask.name.endswith("_gtFine_labelTrainIds.png") for s in samples)
    mapped = load_split("cityscapes", city, "train")
    lut = dataset_info("cityscapes", city).label_lut
    for a, b in zip(samples, mapped):
        assert np.array_equal(load_mask(a.mask), load_mask(b.mask, lut))
    dataset = SegmentationDataset(samples, lambda image, mask: {"mask": mask}, info.label_lut)
    assert np.array_equal(dataset[0]["mask"], load_mask(mapped[0].mask, lut))


def test_partial_train_id_masks_are_an_error(tmp_path):
    root = make_cityscapes(tmp_path, FRAMES, train_id_table=torchvision_table())
    name = cityscapes_name("bremen", 0, 42)
    (root / "gtFine" / "train" / "bremen" / f"{name}_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="createTrainIdLabelImgs"):
        load_split("cityscapes", root, "train")


def test_u2pl_and_unimatch_lists(city, tmp_path):
    names = [("aachen", cityscapes_name("aachen", 1, 19)), ("zurich", cityscapes_name("zurich", 7, 19))]
    u2pl = [f"leftImg8bit/train/{c}/{n}_leftImg8bit.png" for c, n in names]
    # UniMatch lists name labelTrainIds masks; the reader still finds the masks this root has
    unimatch = [f"{img} gtFine/train/{c}/{n}_gtFine_labelTrainIds.png" for img, (c, n) in zip(u2pl, names)]
    (tmp_path / "u2pl.txt").write_text("\n".join(u2pl) + "\n")
    (tmp_path / "unimatch.txt").write_text("\n".join(unimatch) + "\n")
    a = load_split("cityscapes", city, tmp_path / "u2pl.txt")
    assert a == load_split("cityscapes", city, tmp_path / "unimatch.txt")
    assert [s.mask.name for s in a] == [f"{n}_gtFine_labelIds.png" for _, n in names]


def test_malformed_path_is_an_error(city, tmp_path):
    (tmp_path / "bad.txt").write_text("aachen_000000_000019\n")
    with pytest.raises(DataError, match=r"bad.txt, line 1: 'aachen_000000_000019' is not a Cityscapes image path"):
        load_split("cityscapes", city, tmp_path / "bad.txt")
