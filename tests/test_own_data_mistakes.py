"""Own data, first run (issue #32): the mistakes a user with 30 labeled and 60 unlabeled photos of 3 classes
made, each now an error at once that names the file or key and the fix, not a silent pass or a failure
hours into training."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_data import make_folder
from prcl import cli
from prcl.data.dataset import DataError, load_image, load_mask
from prcl.data.folder import read_class_file

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
    assert line == (f"prcl predict: error: image missing.jpg does not exist (no file {Path('missing.jpg').absolute()}); "
                    "check the path")
