"""Own data, first run (issue #32): the mistakes a user with 30 labeled and 60 unlabeled photos of 3 classes
made, each now an error at once that names the file or key and the fix, not a silent pass or a failure
hours into training."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL
from fixtures_data import make_folder
from prcl import cli
from prcl.config import load_config
from prcl.data.dataset import DataError, load_image, load_mask
from prcl.data.folder import read_class_file
from prcl.data.loaders import build_train_data
from prcl.engine import trainer as trainer_module

LABELED = [f"photo{i:02d}.jpg" for i in range(10)]
UNLABELED = [f"u{i}.jpg" for i in range(6)]


def error_line(capsys, argv: list[str], code: int = 2) -> str:
    """Run `prcl ARGV` in-process, expecting exit `code` and one error line on stderr (no traceback)."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_folder(tmp_path / "mydata", LABELED, UNLABELED)


# ----------------------------------------------------------------------------- 2.1 split keys
def test_a_folder_dataset_without_split_files_names_all_three_keys_and_how_to_make_them(photos, tmp_path, capsys):
    argv = ["train", "data.dataset=folder", f"data.root={photos}", f"output_dir={tmp_path / 'runs'}"]
    line = error_line(capsys, argv)  # the user's command: the split keys left at their defaults
    for key, default in (("data.labeled_split", "splits/1_64/labeled.txt"),
                         ("data.unlabeled_split", "splits/1_64/unlabeled.txt"), ("data.val_split", "splits/val.txt")):
        assert f"{key}={default} not found (looked for {photos / default} and " in line, key
    command = f"prcl data split --dataset folder --root {photos} --labeled 8 --val-size 2 --out {photos / 'splits'}"
    assert f"`{command}`" in line, line
    assert not (tmp_path / "runs").exists()

    # the advice works: the command writes the files, and the keys it names find them
    assert cli.main(shlex.split(command)[1:] + ["--quiet"]) == 0
    keys = line.rsplit("then train with ", 1)[1].split()
    cfg = load_config(None, ["data.dataset=folder", f"data.root={photos}", *keys])
    data = build_train_data(cfg, with_unlabeled=True)
    sizes = {role: len(split.entries) for role, split in data.splits.items()}
    assert sizes == {"labeled": 8, "unlabeled": len(UNLABELED), "val": 2}


def test_one_missing_split_still_names_all_three_keys(photos, tmp_path):
    (photos / "splits").mkdir()
    (photos / "splits" / "mine.txt").write_text("images/photo00.jpg\n")
    cfg = load_config(None, ["data.dataset=folder", f"data.root={photos}", "data.labeled_split=splits/mine.txt",
                             "data.unlabeled_split=unlabeled"])
    with pytest.raises(DataError) as err:
        build_train_data(cfg, with_unlabeled=True)
    message = str(err.value)
    assert "data.labeled_split=splits/mine.txt found; data.unlabeled_split=unlabeled found; " in message
    assert f"data.val_split=splits/val.txt not found (looked for {photos / 'splits/val.txt'}" in message


# ----------------------------------------------------------------------------- 2.2 classes.yaml
def test_a_misspelt_key_in_a_class_entry_is_refused(photos, capsys):
    (photos / "classes.yaml").write_text("classes:\n  - {name: background}\n  - {name: crack, colour: [255, 0, 0]}\n"
                                         "  - {name: hole}\n")
    with pytest.raises(DataError) as err:
        read_class_file(photos / "classes.yaml")
    assert str(err.value) == (f"class 'crack' in {photos / 'classes.yaml'} has unknown key(s) ['colour'] (did you "
                              "mean 'color'?); a class entry allows only ['name', 'color']")
    assert cli.main(["data", "check", "--dataset", "folder", "--root", str(photos), "--quiet"]) == 1
    assert "has unknown key(s) ['colour']" in capsys.readouterr().out
    (photos / "classes.yaml").write_text("classes:\n  - {name: background}\n  - {name: crack, color: [255, 0, 0]}\n"
                                         "  - {name: hole}\n")
    assert read_class_file(photos / "classes.yaml")[1][1].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------- 2.3 masks checked before step 1
@pytest.fixture
def data(synth_root, tmp_path) -> Path:
    """A private copy of the tiny synthetic dataset (8 classes), free to damage."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


def run_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", "name=x", "method.name=supervised",
            "data.labeled_split=splits/1_4/labeled.txt", "data.unlabeled_split=null", "data.crop_size=32",
            "data.batch_size=2", "data.max_val_images=4", "train.iterations=2", *TINY_MODEL, *extra]


def put_label(mask: Path, value: int) -> None:
    """Write `value` into one pixel of an index mask, keeping its palette."""
    with Image.open(mask) as img:
        palette, values = img.getpalette(), np.asarray(img).copy()
    values[-1, -1] = value
    out = Image.fromarray(values, mode="P")
    out.putpalette(palette)
    out.save(mask)


@pytest.mark.parametrize("split, position", [("splits/1_4/labeled.txt", -1), ("splits/val.txt", 3)])
def test_a_bad_mask_anywhere_stops_training_before_the_model_is_built(data, tmp_path, capsys, monkeypatch, split,
                                                                      position):
    image_id = (data / split).read_text().split()[position]  # the labeled split's last: drawn late, if ever
    mask = data / "SegmentationClass" / f"{image_id}.png"
    put_label(mask, 9)
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: pytest.fail("training started"))
    line = error_line(capsys, ["train", *run_args(data, tmp_path / "runs")])
    assert f"mask {mask} has label values [9] outside [0, 8) ∪ {{255}}" in line, line
    assert f"prcl data check --dataset synthetic --root {data} --split labeled=" in line
    assert line.endswith("or skip this check with data.check_masks=false")
    assert not (tmp_path / "runs").exists()  # nothing was created: a rerun needs no --overwrite
    monkeypatch.undo()
    cfg = load_config(None, run_args(data, tmp_path / "runs", "data.check_masks=false"))
    build_train_data(cfg, with_unlabeled=False)  # the switch skips the check


def test_the_check_lists_every_problem_once(data, tmp_path):
    ids = (data / "splits/1_4/labeled.txt").read_text().split()
    for image_id in ids[:4]:
        put_label(data / "SegmentationClass" / f"{image_id}.png", 30)
    also_val = tmp_path / "val.txt"
    also_val.write_text("\n".join(ids[:2]) + "\n")  # two of them in val as well: still checked once
    cfg = load_config(None, run_args(data, tmp_path / "runs", f"data.val_split={also_val}"))
    with pytest.raises(DataError, match=r"^4 problem\(s\) in the labeled and val files, found before the first step: "
                                        r".*\[30\].*\[30\].*\[30\].* \(and 1 more\)\. Fix them"):
        build_train_data(cfg, with_unlabeled=False)


# ----------------------------------------------------------------------------- 2.5 a mistyped path
def test_a_missing_image_or_mask_is_said_to_be_missing_not_damaged(tmp_path):
    for load, kind in ((load_image, "image"), (load_mask, "mask")):
        with pytest.raises(DataError) as err:
            load(tmp_path / "missing.jpg")
        assert str(err.value) == (f"{kind} {tmp_path / 'missing.jpg'} does not exist (no file "
                                  f"{tmp_path / 'missing.jpg'}); check the path")
    with pytest.raises(DataError, match=f"image {tmp_path} is a folder, not a file"):
        load_image(tmp_path)
    (tmp_path / "torn.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="Re-extract or delete the file"):  # a damaged file keeps its advice
        load_image(tmp_path / "torn.jpg")


def test_predict_names_a_mistyped_image_path(synth_root, tmp_path, capsys):
    from conftest import tiny_config
    from prcl.engine.trainer import Trainer

    trainer = Trainer(tiny_config(synth_root, tmp_path / "runs", "method.name=supervised", "data.max_val_images=2"))
    checkpoint = trainer.save(0)
    trainer.lock.release()
    line = error_line(capsys, ["predict", str(checkpoint), "missing.jpg", "--out", str(tmp_path / "out")])
    missing = Path("missing.jpg").absolute()
    assert line == f"prcl predict: error: image missing.jpg does not exist (no file {missing}); check the path"
