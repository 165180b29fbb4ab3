"""The Python predict API (`prcl.segmenter.Segmenter`): the masks `prcl predict` writes, for every input form and both
window modes; probabilities that are a distribution whose argmax is the mask; clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_own_data import make_own_data, picture, train_tiny_run, vary_predictions
from prcl.segmenter import Segmenter
from prcl.cli import main
from prcl.data.dataset import DataError
from prcl.inference import model_from_checkpoint

WINDOW = ["--crop", "24", "--stride", "8"]  # sliding windows smaller than every test image


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A PRCL run trained for two iterations on a small folder dataset, its reported network (the teacher) made
    to predict varied classes."""
    base = tmp_path_factory.mktemp("own")
    run = train_tiny_run(make_own_data(base / "data"), base / "runs")
    vary_predictions(run / "checkpoints" / "best.pt", picture(np.random.default_rng(5), (40, 52))[0])
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """PNG files (lossless, so a numpy or PIL copy is the same picture) of three sizes, one not a multiple of
    anything, one larger than the training images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(40, 52), (33, 47), (70, 90)]):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(picture(rng, size)[0]).save(paths[-1])
    return paths


def written_mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_the_api_gives_the_masks_prcl_predict_writes_for_paths_pil_images_and_arrays(run, images, tmp_path, mode):
    out = tmp_path / "out"
    assert main(["predict", str(run), *map(str, images), "--out", str(out), "--mode", mode, *WINDOW]) == 0
    segmenter = Segmenter.load(run, device="cpu", mode=mode, crop=24, stride=8)
    for path in images:
        expected = written_mask(out / f"{path.stem}.png")
        with Image.open(path) as pil:
            pil.load()
            array = np.asarray(pil.convert("RGB")).copy()
            for given in (path, str(path), pil, array):
                mask = segmenter.predict(given)
                assert mask.dtype == np.uint8 and mask.shape == expected.shape, (path.name, type(given))
                assert np.array_equal(mask, expected), (path.name, type(given))
        shares = np.bincount(expected.ravel(), minlength=3) / expected.size
        assert (shares > 0.02).sum() >= 2, shares  # the prediction varies, so equality means something
    listed = segmenter.predict(images)
    assert [m.shape for m in listed] == [written_mask(out / f"{p.stem}.png").shape for p in images]


def test_sliding_windows_change_the_prediction(run, images):
    whole = Segmenter.load(run, device="cpu", mode="whole").predict(images[2])
    sliding = Segmenter.load(run, device="cpu", mode="sliding", crop=24, stride=8).predict(images[2])
    assert (whole != sliding).mean() > 0.05  # the window option really reaches the network


def test_defaults_are_the_runs_evaluation_settings_and_the_reported_model(run):
    from prcl.config import load_config

    cfg = load_config(run / "config.yaml")
    segmenter = Segmenter.load(run, device="cpu")
    assert (segmenter.mode, segmenter.crop, segmenter.stride) == (cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride)
    teacher = model_from_checkpoint(run / "checkpoints" / "best.pt")[0]
    assert segmenter.model.rep_head is None  # the teacher, not the student (which has the μ head)
    for key, value in teacher.state_dict().items():
        assert torch.equal(segmenter.model.state_dict()[key], value), key
    assert Segmenter.load(run, device="cpu", which="student").model.rep_head is not None


def test_model_from_checkpoint_takes_a_run_directory_as_prcl_predict_does(run):
    from_dir, _, state = model_from_checkpoint(run)
    from_file = model_from_checkpoint(run / "checkpoints" / "best.pt")[0]
    assert state["iteration"] == 2
    for key, value in from_file.state_dict().items():
        assert torch.equal(from_dir.state_dict()[key], value), key


def test_probabilities_are_a_distribution_whose_argmax_is_the_mask(run, images):
    segmenter = Segmenter.load(run, device="cpu", mode="sliding", crop=24, stride=8)
    for path in images:
        probs = segmenter.predict(path, probabilities=True)
        mask = segmenter.predict(path)
        assert probs.shape == (3,) + mask.shape and probs.dtype == np.float32
        assert (probs >= 0).all() and np.allclose(probs.sum(0), 1, atol=1e-5)
        top2 = np.sort(probs, axis=0)[-2:]
        sure = top2[1] - top2[0] > 1e-6  # ties could order either way
        assert sure.mean() > 0.99 and np.array_equal(probs.argmax(0)[sure], mask[sure])


def test_class_names_and_colors_come_from_the_datasets_class_file(run):
    from fixtures_own_data import CLASSES

    segmenter = Segmenter.load(run, device="cpu")
    assert segmenter.class_names == tuple(n for n, _ in CLASSES)
    assert segmenter.colors.tolist() == [list(c) for _, c in CLASSES]
    palette = segmenter.colorize(np.array([[0, 1], [2, 255]], np.uint8)).convert("RGB")
    assert np.asarray(palette).tolist() == [[[20, 20, 20], [250, 40, 10]], [[30, 200, 90], [224, 224, 192]]]


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((8, 8), np.uint8), ValueError, r"must be \[H, W, 3\] RGB, got shape \(8, 8\): a grey image\?"),
    (np.zeros((8, 8, 4), np.uint8), ValueError, r"got shape \(8, 8, 4\): RGBA\? a\[\.\.\., :3\]"),
    (np.zeros((3, 8, 8), np.uint8), ValueError, r"channels first\? a\.transpose\(1, 2, 0\)"),
    (np.full((8, 8, 3), 0.5, np.float32), ValueError, r"float32 is ambiguous .*\(a \* 255\)\.round\(\)"),
    (np.full((8, 8, 3), 300, np.int32), ValueError, r"int32 has values in \[300, 300\]; give 8-bit values"),
    ("no/such/photo.jpg", DataError, r"image no/such/photo\.jpg does not exist"),
    (torch.zeros(3, 8, 8), TypeError, r"type Tensor \(a \[3, H, W\] tensor: pass tensor\.permute\(1, 2, 0\)"),
])
def test_bad_input_is_refused_saying_what_to_pass(run, bad, error, message):
    with pytest.raises(error, match=message):
        Segmenter.load(run, device="cpu").predict(bad)


def test_an_unreadable_file_and_a_folder_are_named(run, tmp_path):
    from prcl.data.dataset import DataError

    (tmp_path / "broken.png").write_bytes(b"not a png")
    segmenter = Segmenter.load(run, device="cpu")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        segmenter.predict(tmp_path / "broken.png")
    with pytest.raises(DataError, match=r"is a folder, not a file"):
        segmenter.predict(tmp_path)


def test_prcl_predict_reports_a_missing_image_in_one_line(run, tmp_path, capsys):
    assert main(["predict", str(run), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")]) == 2
    assert "prcl predict: error: image" in capsys.readouterr().err
