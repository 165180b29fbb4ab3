"""Split lists: format detection, seeded (class-balanced) generation, writing, copying to a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_data import make_folder, make_voc, voc_id
from prcl.data.dataset import DataError
from prcl.data.sources import (copy_split, generate_split, load_split, open_source, resolve_split,
                               write_generated_split)
from prcl.data.splits import choose_labeled, class_balanced_choice, class_presence, read_split_file

TRAIN = [voc_id(i) for i in range(8)]
VAL = [voc_id(i) for i in range(8, 11)]
AUG_ONLY = [voc_id(i) for i in range(11, 17)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), TRAIN, VAL, aug_only=AUG_ONLY, with_aug=True)


# --- reading list files ---------------------------------------------------------------------------

def test_formats_are_detected(tmp_path):
    (tmp_path / "ids.txt").write_text("# comment\n2007_000032\n\n2007_000039\n")
    (tmp_path / "pairs.txt").write_text("JPEGImages/a.jpg SegmentationClass/a.png\n")
    ids = read_split_file(tmp_path / "ids.txt")
    assert ids.format == "ids" and [e.image for e in ids.entries] == ["2007_000032", "2007_000039"]
    assert [e.line for e in ids.entries] == [2, 4]
    pairs = read_split_file(tmp_path / "pairs.txt")
    assert pairs.format == "pairs" and pairs.entries[0].mask == "SegmentationClass/a.png"


@pytest.mark.parametrize("text, message", [
    ("a\nb c\n", r"mixes one-field and two-field lines \(line 1 vs line 2\)"),
    ("a b c\n", "line 1 of split file .* has 3 fields"),
    ("# only a comment\n\n", "is empty: it lists no images"),
])
def test_bad_list_files(tmp_path, text, message):
    (tmp_path / "split.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_split_file(tmp_path / "split.txt")


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match="does not exist; generate one with `prcl data split`"):
        read_split_file(tmp_path / "nope.txt")


# --- choosing the labeled subset --------------------------------------------------------------------

def test_random_choice_is_a_function_of_the_seed():
    a = choose_labeled(100, 10, seed=3)
    assert np.array_equal(a, choose_labeled(100, 10, seed=3))
    assert not np.array_equal(a, choose_labeled(100, 10, seed=4))
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0) and a.max() < 100
    with pytest.raises(DataError, match="cannot choose 11 labeled images out of 10"):
        choose_labeled(10, 11, seed=0)
    with pytest.raises(DataError, match="unknown split method 'nope'"):
        choose_labeled(10, 1, seed=0, method="nope")


def synthetic_presence(seed: int = 0) -> np.ndarray:
    """60 images, 6 classes: class 0 everywhere, 1-3 common, 4 in 3 images, 5 in 2 images."""
    rng = np.random.default_rng(seed)
    presence = np.zeros((60, 6), dtype=bool)
    presence[:, 0] = True
    presence[:, 1:4] = rng.random((60, 3)) < [0.6, 0.4, 0.25]
    presence[rng.choice(60, 3, replace=False), 4] = True
    presence[rng.choice(60, 2, replace=False), 5] = True
    return presence


def test_balanced_choice_covers_rare_classes_that_random_misses():
    presence = synthetic_presence()
    random_covers = [presence[choose_labeled(60, 6, s)].any(0).all() for s in range(50)]
    assert not all(random_covers)  # the test is meaningful: random subsets miss rare classes
    for seed in range(10):
        chosen = choose_labeled(60, 6, seed, "balanced", presence)
        assert len(set(chosen.tolist())) == 6 and presence[chosen].any(0).all()


def test_balanced_choice_tracks_class_proportions():
    presence = synthetic_presence(1)
    freq = presence.mean(0)

    def error(idx):
        return np.abs(presence[idx].mean(0) - freq).max()

    balanced = [error(class_balanced_choice(presence, 20, np.random.default_rng(s))) for s in range(10)]
    random = [error(choose_labeled(60, 20, s)) for s in range(200)]
    assert max(balanced) <= np.median(random)
    assert np.array_equal(class_balanced_choice(presence, 20, np.random.default_rng(5)),
                          class_balanced_choice(presence, 20, np.random.default_rng(5)))


def test_class_presence_ignores_255():
    masks = [np.array([[0, 255], [2, 2]], np.uint8), np.full((2, 2), 255, np.uint8)]
    assert class_presence(masks, 3).tolist() == [[True, False, True], [False, False, False]]


# --- generating, writing and copying splits -----------------------------------------------------

def keys(entries):
    return [e.image for e in entries]


def test_voc_classic_and_blender_pools(voc):
    classic = generate_split("voc", voc, 3, scheme="classic", seed=1)
    assert set(keys(classic.labeled)) <= set(TRAIN) and len(classic.labeled) == 3
    assert sorted(keys(classic.labeled) + keys(classic.unlabeled)) == sorted(TRAIN + AUG_ONLY)
    assert keys(classic.val) == VAL
    assert any("official voc train has 1464" in n for n in classic.notes)
    blender = generate_split("voc", voc, 5, scheme="blender", seed=1)
    assert set(keys(blender.labeled)) <= set(TRAIN + AUG_ONLY)
    assert not set(keys(blender.labeled)) & set(keys(blender.unlabeled))
    assert keys(generate_split("voc", voc, 3, scheme="classic", seed=1).labeled) == keys(classic.labeled)
    with pytest.raises(DataError, match=r"unknown split scheme 'x' for voc; choose one of \['classic', 'blender', 'train'\]"):
        generate_split("voc", voc, 3, scheme="x")


def test_balanced_generation_reads_masks(voc):
    split = generate_split("voc", voc, 4, scheme="blender", method="balanced", seed=0, workers=2)
    assert len(split.labeled) == 4 and len(set(keys(split.labeled))) == 4


@pytest.mark.parametrize("fmt", ["ids", "pairs"])
def test_written_split_reloads(voc, tmp_path, fmt):
    split = generate_split("voc", voc, 3, seed=2)
    files = write_generated_split("voc", voc, split, tmp_path, fmt)
    assert sorted(files) == ["labeled", "unlabeled", "val"]
    assert read_split_file(files["labeled"]).format == fmt
    assert [s.id for s in load_split("voc", voc, files["labeled"])] == keys(split.labeled)
    assert len(load_split("voc", voc, files["unlabeled"], labeled=False)) == len(split.unlabeled)


def test_folder_split_holds_out_val(tmp_path):
    root = make_folder(tmp_path / "f", [f"{i}.jpg" for i in range(10)], ["u.jpg"])
    split = generate_split("folder", root, 3, val_size=2, seed=0)
    lab, unl, val = set(keys(split.labeled)), set(keys(split.unlabeled)), set(keys(split.val))
    assert len(val) == 2 and len(lab) == 3 and not (lab & val or unl & val or lab & unl)
    assert lab | unl | val == {f"images/{i}.jpg" for i in range(10)} | {"unlabeled/u.jpg"}
    files = write_generated_split("folder", root, split, tmp_path / "out", "pairs")
    assert read_split_file(files["labeled"]).format == "pairs"
    assert read_split_file(files["unlabeled"]).format == "ids"  # unlabeled/ images have no mask
    with pytest.raises(DataError, match="has an official val split; --val-size is for folder datasets"):
        generate_split("voc", tmp_path, 1, val_size=1)


def test_copy_split_to_run_dir(voc, tmp_path):
    listed = tmp_path / "labeled.txt"
    listed.write_text(f"# mine\n{TRAIN[0]}\n{TRAIN[1]}\n")
    dest = tmp_path / "runs" / "x" / "split"
    src = open_source("voc", voc)
    out = copy_split(src, {"labeled": resolve_split(src, listed), "val": resolve_split(src, "val")}, dest)
    assert sorted(out) == ["labeled", "val"]
    assert (dest / "labeled.txt").read_bytes() == listed.read_bytes()
    assert (dest / "val.txt").read_text().split() == VAL
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["splits"]["labeled"]["entries"] == 2 and manifest["splits"]["val"]["entries"] == 3
    assert manifest["splits"]["val"]["source"] == "standard split val"
    assert manifest["splits"]["labeled"]["source"] == str(listed.absolute())
