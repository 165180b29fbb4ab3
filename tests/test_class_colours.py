"""Class colours: a folder dataset's `classes.yaml` colours travel in the checkpoint to `prcl predict`'s palette
PNGs and overlays and to `prcl analyze`'s mask figures; the built-in datasets keep the VOC colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_own_data import CLASSES, make_own_data, picture, train_tiny_run, vary_predictions
from prcl.cli import main
from prcl.data.palette import voc_colormap
from prcl.engine.checkpoint import load_checkpoint, save_checkpoint
from prcl.inference import class_colors
from prcl.config import from_dict

OWN = np.array([c for _, c in CLASSES], np.uint8)  # [3, 3]: the fixture dataset's colours, none a VOC colour


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("colours")
    run = train_tiny_run(make_own_data(base / "data"), base / "runs")
    vary_predictions(run / "checkpoints" / "best.pt", picture(np.random.default_rng(5), (40, 52))[0])
    return run


def colour_count(pixels: np.ndarray, colour) -> int:
    return int((pixels.reshape(-1, 3) == np.asarray(colour)).all(1).sum())


def interior(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """`[H, W]` bool: pixels whose (2r+1)² neighbourhood holds their class only (JPEG bleeds colour across edges)."""
    h, w = mask.shape
    padded = np.pad(mask.astype(int), r, constant_values=-1)
    same = np.ones_like(mask, bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            same &= padded[dy:dy + h, dx:dx + w] == mask
    return same


def test_the_checkpoint_carries_the_class_files_colours(run):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["class_colors"] == OWN.tolist()
    assert not (OWN[:, None] == voc_colormap()[None]).all(-1).any()  # the test would see VOC colours sneak in


def test_prcl_predict_paints_masks_and_overlays_in_the_class_files_colours(run, tmp_path):
    image = picture(np.random.default_rng(2), (48, 64))[0]
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert main(["predict", str(run), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "photo.png") as png:
        assert png.mode == "P"
        palette = np.array(png.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
        mask = np.asarray(png)
    assert np.array_equal(palette[:3], OWN) and np.array_equal(palette[255], voc_colormap()[255])
    assert len(np.unique(mask)) >= 2
    overlay = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.jpg").convert("RGB"), np.float32)
    blend = overlay[:48, 64:]  # image | blend, legend below
    inside = interior(mask)
    tested = [c for c in np.unique(mask) if (inside & (mask == c)).sum() >= 20]
    assert len(tested) >= 2
    for c in tested:  # mean colour inside each predicted class's regions: JPEG's errors average out there
        shown, base = blend[inside & (mask == c)].mean(0), image[inside & (mask == c)].mean(0)
        assert np.abs(shown - (0.5 * base + 0.5 * OWN[c])).max() < 4, c
        assert np.abs(shown - (0.5 * base + 0.5 * voc_colormap()[c])).max() > 8, c  # colours differ by ≥ 20


def test_prcl_analyze_draws_masks_in_the_class_files_colours(run, tmp_path):
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--out", str(out), "--max-images", "2", "--num-images", "2",
                 "--tsne-per-class", "10", "--max-per-class", "30"]) == 0
    figure = np.asarray(Image.open(out / "predictions.png").convert("RGB"))
    for colour in OWN:  # ground truth: background, the crack line and the stain disc
        assert colour_count(figure, colour) > 20, colour
    for colour in voc_colormap()[1:3]:
        assert colour_count(figure, colour) == 0, colour


def test_a_checkpoint_saved_without_colours_reads_them_from_its_dataset_while_it_is_there(run, tmp_path):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    del state["class_colors"]
    cfg = from_dict(state["config"])
    assert np.array_equal(class_colors(state, cfg), OWN)
    cfg.data.root = str(tmp_path / "moved")
    assert np.array_equal(class_colors(state, cfg), voc_colormap()[:3])


def test_the_built_in_dataset_keeps_the_voc_colours(synth_root, tmp_path):
    from conftest import tiny_config
    from prcl.engine.trainer import Trainer
    from prcl.segmenter import Segmenter

    trainer = Trainer(tiny_config(synth_root, tmp_path / "runs", "method.name=supervised", "data.max_val_images=2"))
    path = trainer.save(0)
    trainer.lock.release()
    state = load_checkpoint(path)
    assert state["class_colors"] is None
    assert np.array_equal(Segmenter.load(path, device="cpu").colors, voc_colormap()[: state["num_classes"]])
    save_checkpoint(state, tmp_path / "copy.pt")
