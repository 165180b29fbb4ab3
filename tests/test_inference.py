"""Using a checkpoint: the evaluated network is loaded strictly (a missing weight is an error naming it,
never a random layer), and `prcl predict` overlays carry a legend of the predicted classes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from prcl.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from prcl.engine.trainer import Trainer
from prcl.inference import model_from_checkpoint


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory):
    """An untrained PRCL run's last.pt: the student has rep/prob heads, the teacher none."""
    from conftest import tiny_config

    trainer = Trainer(tiny_config(synth_root, tmp_path_factory.mktemp("runs"), "method.name=prcl",
                                  "data.max_val_images=2"))
    path = trainer.save(0)
    trainer.lock.release()
    return path


def test_the_evaluated_teacher_has_exactly_the_saved_weights(checkpoint):
    state = load_checkpoint(checkpoint)
    teacher = model_from_checkpoint(checkpoint)[0]
    assert teacher.rep_head is None and teacher.prob_head is None
    assert teacher.state_dict().keys() == state["teacher"].keys()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state["teacher"][k]), k
    student = model_from_checkpoint(checkpoint, which="student")[0]
    assert student.state_dict().keys() == state["model"].keys() and student.prob_head is not None


@pytest.mark.parametrize("part, which, key", [("teacher", "reported", "seg_head.1.weight"),
                                              ("teacher", "reported", "aspp.project.0.1.running_var"),
                                              ("model", "student", "prob_head.net.0.weight")])
def test_a_checkpoint_missing_a_weight_is_an_error_naming_it(checkpoint, tmp_path, part, which, key):
    state = load_checkpoint(checkpoint)
    assert key in state[part]
    del state[part][key]
    damaged = tmp_path / "damaged.pt"
    save_checkpoint(state, damaged)
    with pytest.raises(CheckpointError, match=rf"damaged\.pt lacks {part} weights: {re.escape(key)};"):
        model_from_checkpoint(damaged, which=which)


def test_a_checkpoint_with_an_unexpected_weight_is_an_error_naming_it(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["teacher"]["rep_head.1.weight"] = torch.zeros(1)  # the teacher has no representation head
    damaged = tmp_path / "damaged.pt"
    save_checkpoint(state, damaged)
    with pytest.raises(CheckpointError, match=r"has unexpected teacher weights: rep_head\.1\.weight"):
        model_from_checkpoint(damaged)


def solid_block(pixels: np.ndarray, colour: np.ndarray, size: int = 6, tol: int = 24) -> bool:
    """Whether `pixels` [H, W, 3] hold a size×size block of `colour` (a swatch, not a text stroke)."""
    near = (np.abs(pixels.astype(int) - colour.astype(int)) <= tol).all(-1).astype(int)  # [H, W]
    sums = np.pad(near, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    blocks = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    return bool((blocks == size * size).any())


def test_predict_overlay_has_a_legend_of_the_predicted_classes_named_from_the_checkpoint(
        checkpoint, tmp_path, monkeypatch):
    from PIL import Image, ImageDraw

    from prcl import mask_files, segmenter
    from prcl.data.palette import voc_colormap

    state = load_checkpoint(checkpoint)
    state["class_names"] = [f"thing-{i}" for i in range(state["num_classes"])]
    renamed = tmp_path / "renamed.pt"
    save_checkpoint(state, renamed)
    h, w, predicted = 40, 60, [0, 2, 5]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = torch.tensor(predicted)[torch.arange(w) * len(predicted) // w].expand(h, w)  # three vertical stripes

    def stripes(model, x, num_classes, *args):
        return torch.nn.functional.one_hot(mask, num_classes).permute(2, 0, 1)[None].float()

    drawn, real_text = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(segmenter, "predict_logits", stripes)
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: (
        drawn.append(text), real_text(self, xy, text, *a, **k))[1])
    mask_files.predict_files(renamed, [tmp_path / "img.png"], tmp_path / "out", device="cpu")

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "img.png")), mask.numpy())
    overlay = np.asarray(Image.open(tmp_path / "out" / "img_overlay.jpg").convert("RGB"))
    assert overlay.shape[1] == 2 * w and overlay.shape[0] > h  # image | blend, legend underneath
    legend, colours = overlay[h:], voc_colormap()
    for c in predicted:
        assert solid_block(legend, colours[c]), f"no swatch of class {c}"
    assert not solid_block(legend, colours[1])  # not predicted, not listed
    assert drawn == ["thing-0", "thing-2", "thing-5"]  # the checkpoint's names, in class order


def _written(out_dir, stem: str) -> np.ndarray:
    from PIL import Image

    with Image.open(out_dir / f"{stem}.png") as mask:
        return np.asarray(mask)


@pytest.mark.parametrize("eval_mode", ["whole", "sliding"])
def test_predict_runs_the_real_model_on_grey_rgba_16_bit_and_small_images(checkpoint, tmp_path, eval_mode):
    """`prcl predict` end to end (no stand-in for the model): every image gets a mask of its own size with
    class ids of the checkpoint. A grey image, its RGBA copy (alpha dropped) and its 16-bit copy (scaled
    v·255/65535, not clipped to white) give the same prediction; an image smaller than the crop works in
    both evaluation modes."""
    from PIL import Image

    from prcl import mask_files
    from prcl.data.dataset import load_image

    state = load_checkpoint(checkpoint)
    state["config"]["eval"].update(mode=eval_mode, crop_size=48)
    path = tmp_path / "model.pt"
    save_checkpoint(state, path)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.dstack([grey, grey, grey, rng.integers(0, 256, (40, 56), dtype=np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit, same picture
    Image.fromarray(rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert deep.mode.startswith("I")  # really read as 16-bit
    assert np.array_equal(np.asarray(load_image(tmp_path / "deep.png")), np.asarray(load_image(tmp_path / "grey.png")))

    out = tmp_path / "out"
    names = ["grey", "rgba", "deep", "small"]
    mask_files.predict_files(path, [tmp_path / f"{n}.png" for n in names], out, device="cpu")
    masks = {n: _written(out, n) for n in names}
    for n, size in zip(names, [(40, 56)] * 3 + [(21, 13)]):
        assert masks[n].shape == size and int(masks[n].max()) < state["num_classes"], n
        assert (out / f"{n}_overlay.jpg").is_file()
    assert np.array_equal(masks["rgba"], masks["grey"]) and np.array_equal(masks["deep"], masks["grey"])


def reference_logits(model: torch.nn.Module, image: np.ndarray, crop: int = 0, stride: int = 0) -> torch.Tensor:
    """`[C, H, W]` logits of `model` for an RGB uint8 image, written out here: ImageNet normalisation, then one
    forward, or (crop > 0) the mean over crop² windows at multiples of `stride` plus one flush with the far side."""
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((torch.from_numpy(image).permute(2, 0, 1).double() / 255 - mean) / std)[None].float()  # [1, 3, H, W]
    if not crop:
        return model(x)["logits"][0]
    h, w = image.shape[:2]
    total, count = torch.zeros(model.seg_head[-1].out_channels, h, w), torch.zeros(h, w)
    for y in sorted({*range(0, h - crop + 1, stride), h - crop}):
        for x0 in sorted({*range(0, w - crop + 1, stride), w - crop}):
            total[:, y:y + crop, x0:x0 + crop] += model(x[..., y:y + crop, x0:x0 + crop])["logits"][0]
            count[y:y + crop, x0:x0 + crop] += 1
    return total / count


@pytest.mark.slow
@torch.no_grad()
def test_predict_writes_the_checkpoint_models_own_argmax(checkpoint, tmp_path):
    """The masks `prcl predict` writes are the argmax of the checkpoint's evaluated network (the teacher) run
    here: whole-image and 48² windows at stride 16. The teacher's last layer is made random on standardised
    features, so its prediction varies over the image and differs from the student's; pixels whose two best
    logits lie within 1e-3 (float rounding could order them either way) are left out, and they are few."""
    from PIL import Image

    from prcl import mask_files
    from prcl.config import from_dict
    from prcl.models import build_model

    state = load_checkpoint(checkpoint)
    teacher = build_model(from_dict(state["config"]), state["num_classes"])
    teacher.rep_head = teacher.prob_head = None
    teacher.load_state_dict(state["teacher"])
    teacher.eval()
    image = np.random.default_rng(1).integers(0, 256, (52, 72, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    hidden = []
    hook = teacher.seg_head[-1].register_forward_hook(lambda module, args, out: hidden.append(args[0]))
    reference_logits(teacher, image)
    hook.remove()
    features = hidden[0][0].flatten(1)  # [hidden, h·w], the last layer's input
    mean, std = features.mean(1), features.std(1) + 1e-3
    w = torch.randn(state["num_classes"], len(mean), generator=torch.Generator().manual_seed(0)) / std
    state["teacher"]["seg_head.1.weight"] = w[:, :, None, None]  # logits = w (f - mean)
    state["teacher"]["seg_head.1.bias"] = -w @ mean
    teacher.load_state_dict(state["teacher"])
    written = {}
    for mode, crop, stride in (("whole", 0, 0), ("sliding", 48, 16)):
        state["config"]["eval"].update(mode=mode, crop_size=48, stride=16)
        save_checkpoint(state, tmp_path / f"{mode}.pt")
        mask_files.predict_files(tmp_path / f"{mode}.pt", [tmp_path / "img.png"], tmp_path / mode, device="cpu")
        written[mode] = _written(tmp_path / mode, "img")
        logits = reference_logits(teacher, image, crop, stride)
        top2 = logits.topk(2, dim=0).values
        sure = (top2[0] - top2[1] > 1e-3).numpy()
        expected = logits.argmax(0).numpy()
        assert sure.mean() > 0.99 and np.bincount(expected.ravel()).max() < 0.5 * expected.size, mode  # varied
        assert written[mode].shape == expected.shape and np.array_equal(written[mode][sure], expected[sure]), mode
    assert (written["whole"] != written["sliding"]).mean() > 0.1  # the windows change the prediction


def test_an_image_beyond_16_bits_is_refused_naming_it(tmp_path):
    from PIL import Image

    from prcl.data.dataset import DataError, load_image

    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32), mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide\.tif has values in \[70000, 70000\], outside the 16-bit range"):
        load_image(tmp_path / "wide.tif")
