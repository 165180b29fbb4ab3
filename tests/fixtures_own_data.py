"""A small "your own data" folder dataset with its own class colours, and the overrides that train a tiny model
on it in seconds (for `tests/test_segmenter.py` and `tests/test_docs_own_data.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_MODEL

CLASSES = (("background", (20, 20, 20)), ("crack", (250, 40, 10)), ("stain", (30, 200, 90)))
"""Names and colours of the dataset's classes: none of them is a VOC colour."""

TINY_TRAINING = [*TINY_MODEL, "data.crop_size=32", "data.batch_size=2", "eval.crop_size=32", "eval.batch_size=4",
                 "method.contrastive.num_anchors=8", "method.contrastive.num_negatives=16", "train.log_every=1",
                 "train.diagnostics_every=0", "train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2"]
"""Overrides that make `prcl train` on this dataset take seconds: a ~50k-parameter model, two iterations."""


def picture(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An `[H, W, 3]` uint8 image of a noisy grey background crossed by a dark line ("crack", class 1) and a
    green disc ("stain", class 2), and its `[H, W]` mask with a 255 (ignore) ring around the disc."""
    h, w = size
    image = rng.normal(150, 25, (h, w, 3)).clip(0, 255)
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    row = int(rng.integers(h // 4, 3 * h // 4))
    line = np.abs(yy - row - (xx - w / 2) * rng.uniform(-0.3, 0.3)) < 1.5
    image[line], mask[line] = (40, 40, 40), 1
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), min(h, w) / 6
    dist = np.hypot(yy - cy, xx - cx)
    image[dist < r], mask[dist < r] = (60, 170, 80), 2
    mask[(dist >= r) & (dist < r + 1)] = 255
    return image.astype(np.uint8), mask


def make_own_data(root: Path, labeled: int = 8, unlabeled: int = 6, size: tuple[int, int] = (40, 52),
                  seed: int = 0, suffix: str = ".png") -> Path:
    """The layout of `docs/own-data.md`: `classes.yaml` (names and colours), `images/*<suffix>`, `masks/*.png`
    (index PNGs, 255 = ignore) and `unlabeled/*<suffix>`."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks", "unlabeled"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    lines = ["classes:"] + [f"  - {{name: {n}, color: [{r}, {g}, {b}]}}" for n, (r, g, b) in CLASSES]
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    for i in range(labeled):
        image, mask = picture(rng, size)
        Image.fromarray(image).save(root / "images" / f"img{i:03d}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"img{i:03d}.png")
    for i in range(unlabeled):
        Image.fromarray(picture(rng, size)[0]).save(root / "unlabeled" / f"extra{i:03d}{suffix}")
    return root


def train_tiny_run(root: Path, out: Path, name: str = "tiny", *overrides: str) -> Path:
    """Split `root` (4 labeled, 2 val, the rest unlabeled) and train PRCL on it for two iterations with
    `prcl.cli.main`, as a user would; returns the run directory."""
    from prcl.cli import main

    splits = root / "splits" / "4"
    assert main(["data", "split", "--dataset", "folder", "--root", str(root), "--labeled", "4", "--val-size", "2",
                 "--out", str(splits), "--quiet"]) == 0
    assert main(["train", "data.dataset=folder", f"data.root={root}", f"data.labeled_split={splits}/labeled.txt",
                 f"data.unlabeled_split={splits}/unlabeled.txt", f"data.val_split={splits}/val.txt",
                 f"output_dir={out}", f"name={name}", *TINY_TRAINING, *overrides]) == 0
    return out / name


def vary_predictions(checkpoint: Path, image: np.ndarray, part: str = "teacher") -> None:
    """Make the saved network's class predictions vary over the image (a two-iteration model predicts one class
    everywhere, which would let a wrong code path go unseen): its last layer becomes a random projection of its
    standardised input features, measured on `image`, then the checkpoint is saved back."""
    import torch

    from prcl.engine.checkpoint import load_checkpoint, save_checkpoint
    from prcl.inference import model_from_checkpoint
    from prcl.data.transforms import to_normalized_tensor

    model = model_from_checkpoint(checkpoint, "cpu", "reported" if part == "teacher" else "student")[0]
    hidden: list = []
    hook = model.seg_head[-1].register_forward_hook(lambda module, args, out: hidden.append(args[0]))
    with torch.no_grad():
        model(to_normalized_tensor(Image.fromarray(image))[None], heads=False)
    hook.remove()
    features = hidden[0][0].flatten(1)  # [hidden, H·W], the last layer's input
    mean, std = features.mean(1), features.std(1) + 1e-3
    state = load_checkpoint(checkpoint)
    num_classes = state["num_classes"]
    w = torch.randn(num_classes, len(mean), generator=torch.Generator().manual_seed(0)) / std
    state[part]["seg_head.1.weight"] = w[:, :, None, None].to(state[part]["seg_head.1.weight"].dtype)
    state[part]["seg_head.1.bias"] = -w @ mean
    save_checkpoint(state, checkpoint)
