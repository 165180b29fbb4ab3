"""Bad inputs through the `prcl` command line: exit code 2 and one line on stderr that names the
key/file and the fix, never a traceback (also not one re-raised from a DataLoader worker).
Also: disk full while saving a checkpoint keeps the previous one. (Issue 6, items 4 and 2.)"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL
from prcl import cli
from prcl.config import from_dict, load_config
from prcl.data.loaders import ResumableSampler
from prcl.engine import checkpoint as ckpt_mod
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.trainer import Trainer
from prcl.models import build_model


def tiny_args(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    """`key=value` overrides for a supervised run of a ~50k-parameter model on 32-px crops."""
    return [
        f"data.root={root}", f"output_dir={out}", f"name={name}", "method.name=supervised",
        "data.labeled_split=splits/1_4/labeled.txt", "data.unlabeled_split=splits/1_4/unlabeled.txt",
        "data.crop_size=32", "data.batch_size=2", "data.num_workers=0", "data.max_val_images=2",
        "eval.batch_size=2", "train.iterations=2", "train.eval_every=100", "train.log_every=1",
        *TINY_MODEL, *extra,
    ]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `prcl ARGV` in-process; returns (exit code, stderr) and checks stderr has no traceback."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def error_line(err: str) -> str:
    """The single `prcl <command>: error: ...` line of stderr."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def data(synth_root, tmp_path) -> Path:
    """A private copy of the tiny synthetic dataset, free to damage."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


def first_labeled(root: Path) -> tuple[Path, Path]:
    """(image, mask) of the first sample the training loader draws (seed 0), so damage shows at once."""
    ids = (root / "splits/1_4/labeled.txt").read_text().split()
    index = next(iter(ResumableSampler(len(ids), seed=0)))[0]
    return root / "JPEGImages" / f"{ids[index]}.jpg", root / "SegmentationClass" / f"{ids[index]}.png"


def rewrite_mask(path: Path, fn) -> None:
    with Image.open(path) as img:
        palette, values = img.getpalette(), fn(np.asarray(img).copy())
    out = Image.fromarray(values.astype(np.uint8), mode="P")
    out.putpalette(palette)
    out.save(path)


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override, message", [
    ("trian.iterations=5", "unknown config key 'trian.iterations'; did you mean 'train.iterations'?"),
    ("train.iterations=many", "config key 'train.iterations' must be int, got 'many'"),
    ("optim.lr=-0.1", "config key 'optim.lr' must be > 0, got -0.1"),
    ("method.contrastive.strong_threshold=1.5", "'method.contrastive.strong_threshold' must be in (0, 1]"),
    ("data.unlabeled_split=null", "needs unlabeled data: set data.unlabeled_split"),
])
def test_bad_config_values(capsys, data, tmp_path, override, message):
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", "method.name=classmix", override))
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "runs" / "x").exists()  # nothing half-created


def test_crop_larger_than_the_images_is_padded_with_ignore(data):
    """Not an error: a crop bigger than the (rescaled) image is padded, the padding labeled 255."""
    from prcl.data.transforms import TrainTransform

    image_path, mask_path = first_labeled(data)
    with Image.open(image_path) as img, Image.open(mask_path) as mask:
        labels = np.array(mask)
        torch.manual_seed(0)
        out = TrainTransform(160, (1.0, 1.0))(img.convert("RGB"), labels)
    assert out["image"].shape[-2:] == (160, 160) and out["mask"].shape == (160, 160)
    padding = 160 * 160 - 64 * 64
    assert (out["mask"] == 255).sum() == padding + (labels == 255).sum()  # the padding is ignored
    assert np.bincount(out["mask"].flatten(), minlength=256)[:255].sum() == (labels != 255).sum()


# ----------------------------------------------------------------------------- dataset files
def test_missing_dataset_root(capsys, tmp_path):
    code, err = run_cli(capsys, "train", *tiny_args(tmp_path / "nowhere", tmp_path / "runs", "x", "data.dataset=voc"))
    line = error_line(err)
    assert code == 2 and f"data.root {tmp_path / 'nowhere'} does not exist; set data.root=..." in line, line


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_in_the_training_split(capsys, data, tmp_path, workers):
    image, _ = first_labeled(data)
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", f"data.num_workers={workers}",
                                                    "data.check_masks=false"))  # found when drawn, by a worker
    line = error_line(err)
    assert code == 2 and f"cannot read image {image}" in line and "Re-extract" in line, line
    assert "DataLoader worker" not in err


@pytest.mark.slow
def test_mask_size_mismatch(capsys, data, tmp_path):
    image, mask = first_labeled(data)
    rewrite_mask(mask, lambda m: m[:40, :50])
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", "data.num_workers=2",
                                                    "data.check_masks=false"))  # found when drawn
    line = error_line(err)
    assert code == 2 and f"mask {mask} is 50x40 but image {image} is 64x64" in line, line


@pytest.mark.slow
def test_label_out_of_range(capsys, data, tmp_path):
    """Formerly silent: an out-of-range class id in a mask trained without complaint."""
    _, mask = first_labeled(data)
    rewrite_mask(mask, lambda m: np.where(np.arange(m.shape[1]) < 2, 12, m))
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", "data.check_masks=false"))
    line = error_line(err)  # found when drawn (tests/test_own_data_mistakes.py: before the first step)
    assert code == 2 and f"mask {mask} has label value 12 outside [0, 8) and 255" in line, line


def test_empty_and_mismatched_splits(capsys, data, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", f"data.labeled_split={empty}"))
    assert code == 2 and f"split file {empty} is empty" in error_line(err)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("train_00001\nnot_an_image\n")
    code, err = run_cli(capsys, "train", *tiny_args(data, tmp_path / "runs", "x", f"data.labeled_split={wrong}"))
    assert code == 2 and "not_an_image" in error_line(err)


# ----------------------------------------------------------------------------- run directory
def test_output_dir_not_writable(capsys, data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a path under a regular file cannot be created, even by root
    code, err = run_cli(capsys, "train", *tiny_args(data, blocker / "runs", "x"))
    line = error_line(err)
    assert code == 2 and f"cannot create run directory {blocker / 'runs' / 'x'}" in line and "output_dir=" in line


def test_existing_run_dir_is_refused(capsys, data, tmp_path):
    args = tiny_args(data, tmp_path / "runs", "x")
    Trainer(load_config(None, args))  # creates runs/x
    code, err = run_cli(capsys, "train", *args)
    line = error_line(err)
    assert code == 2 and "already exists" in line and "--resume" in line and "--overwrite" in line


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def run_with_checkpoint(data, tmp_path) -> Path:
    """A run directory whose checkpoints/last.pt holds an untrained model at iteration 0."""
    trainer = Trainer(load_config(None, tiny_args(data, tmp_path / "runs", "r", "train.iterations=1")))
    trainer.save(0)
    return trainer.run_dir


@pytest.mark.slow
def test_resume_with_a_changed_experiment_needs_force(capsys, run_with_checkpoint):
    run = str(run_with_checkpoint)
    code, err = run_cli(capsys, "train", "--resume", run, "optim.lr=0.5", "data.num_workers=2")
    line = error_line(err)
    assert code == 2 and "optim.lr" in line and "--force" in line and "num_workers" not in line
    assert run_cli(capsys, "train", "--resume", run, "optim.lr=0.5", "--force")[0] == 0
    assert load_checkpoint(run_with_checkpoint / "checkpoints" / "last.pt")["iteration"] == 1


def test_checkpoint_that_is_not_a_checkpoint(capsys, run_with_checkpoint, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    code, err = run_cli(capsys, "eval", str(junk))
    line = error_line(err)
    assert code == 2 and f"{junk} is not a loadable prcl checkpoint (refused by the weights-only loader" in line
    assert "weights_only=False" not in line  # torch's advice to unpickle arbitrary code is not passed on
    last = run_with_checkpoint / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a torn copy
    code, err = run_cli(capsys, "train", "--resume", str(run_with_checkpoint))
    line = error_line(err)
    assert code == 2 and f"{last} is not a loadable prcl checkpoint (RuntimeError: PytorchStreamReader" in line
    assert line.endswith("it is truncated, corrupt, or not written by prcl"), line


def test_checkpoint_with_another_number_of_classes(capsys, run_with_checkpoint):
    last = run_with_checkpoint / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    model = build_model(from_dict(state["config"]), 5)
    state.update(num_classes=5, class_names=[f"c{i}" for i in range(5)], model=model.state_dict())
    torch.save(state, last)
    code, err = run_cli(capsys, "eval", str(last))
    assert code == 2 and f"{last} predicts 5 classes but synthetic has 8" in error_line(err)
    code, err = run_cli(capsys, "train", "--resume", str(run_with_checkpoint))
    assert code == 2 and f"{last} has 5 classes but synthetic has 8" in error_line(err)


def test_checkpoint_of_another_architecture(capsys, run_with_checkpoint):
    """e.g. last.pt copied over from a run with narrower heads."""
    last = run_with_checkpoint / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["config"]["model"]["head_channels"] = 8
    state["model"] = build_model(from_dict(state["config"]), 8).state_dict()
    torch.save(state, last)
    code, err = run_cli(capsys, "train", "--resume", str(run_with_checkpoint))
    line = error_line(err)
    assert code == 2 and "model.head_channels" in line and "--force" in line, line
    code, err = run_cli(capsys, "train", "--resume", str(run_with_checkpoint), "--force")
    line = error_line(err)
    assert code == 2 and f"{last} does not fit this model/method" in line and "size mismatch" in line, line


# ----------------------------------------------------------------------------- disk full
@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint(capsys, data, tmp_path, monkeypatch):
    real_fsync, writes = os.fsync, []

    def fsync(fd: int) -> None:  # the second checkpoint write runs out of space
        if stat.S_ISREG(os.fstat(fd).st_mode):
            writes.append(fd)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)
    args = tiny_args(data, tmp_path / "runs", "x", "train.iterations=3", "train.checkpoint_every=1")
    code, err = run_cli(capsys, "train", *args)
    last = tmp_path / "runs" / "x" / "checkpoints" / "last.pt"
    line = error_line(err)
    assert code == 2 and f"cannot write checkpoint {last} (No space left on device)" in line, line
    assert "the previous last.pt is intact" in line and "--resume" in line
    monkeypatch.undo()
    assert load_checkpoint(last)["iteration"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temp file left behind
    assert run_cli(capsys, "train", "--resume", str(last.parent.parent))[0] == 0
    assert load_checkpoint(last)["iteration"] == 3
