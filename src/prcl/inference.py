"""Using a trained checkpoint: rebuild its model, evaluate it, predict masks for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from prcl.config import Config, apply_overrides, from_dict
from prcl.data.dataset import load_image
from prcl.data.loaders import build_val_dataset
from prcl.data.palette import voc_colormap, voc_palette
from prcl.data.transforms import to_normalized_tensor
from prcl.engine.checkpoint import CheckpointError, load_checkpoint
from prcl.engine.evaluate import evaluate, predict_logits
from prcl.engine.run_dir import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT
from prcl.methods import reported_model_name
from prcl.models import SegmentationModel, build_model


def resolve_checkpoint(path: Path, which: str = "best") -> Path:
    """A checkpoint file, or `<run>/checkpoints/{best,last}.pt` for a run directory."""
    if path.is_file():
        return path
    for name in ({"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}[which], LAST_CHECKPOINT):
        candidate = path / CHECKPOINT_DIR / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no checkpoint at {path} (expected a .pt file or a run directory with checkpoints/)")


def model_from_checkpoint(
    path: Path, device: torch.device | str = "cpu", which: str = "reported"
) -> tuple[SegmentationModel, Config, dict]:
    """A network of a checkpoint in eval mode: `which="reported"` is the model the run reports (`eval.model`:
    for methods with a teacher, its authors' choice by default; the teacher comes without representation/
    probability heads), `"student"` the student with all its heads.

    Loaded strictly: the network is built with exactly the modules the saved one had (the teacher's
    heads are removed, as `EMATeacher` does), and a checkpoint lacking any of its weights is a
    `CheckpointError` naming them, never a network with some weights left at random."""
    if which not in ("reported", "student"):
        raise ValueError(f"which must be 'reported' or 'student', got {which!r}")
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    cfg.model.pretrained, cfg.model.weights = False, None  # weights come from the checkpoint
    model = build_model(cfg, state["num_classes"])
    part = "teacher" if which == "reported" and reported_model_name(cfg) == "teacher" else "model"
    if part == "teacher":
        model.rep_head = model.prob_head = None
    load_weights(model, state[part], path, part)
    return model.to(device).eval(), cfg, state


def load_weights(model: torch.nn.Module, weights: dict, path: Path, part: str) -> None:
    """`model.load_state_dict(weights)`, strict, with errors that name the keys at fault."""
    expected, given = set(model.state_dict()), set(weights)
    for problem, keys in (("lacks", expected - given), ("has unexpected", given - expected)):
        if keys:
            names = sorted(keys)
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
            raise CheckpointError(f"{path} {problem} {part} weights: {shown}; the file is damaged or from another "
                                  "model/version (use the run's own checkpoint)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # e.g. a tensor of the wrong shape
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path} does not match its own config: {detail}") from err


def evaluate_checkpoint(
    path: Path, *, mode: Optional[str] = None, crop: Optional[int] = None, stride: Optional[int] = None,
    overrides: Sequence[str] = (), device: Optional[str] = None,
) -> dict:
    """mIoU and per-class IoU of a checkpoint on its config's val split (data keys may be overridden)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, state = model_from_checkpoint(path, dev)
    apply_overrides(cfg, overrides)
    info, val = build_val_dataset(cfg)
    if info.num_classes != state["num_classes"]:
        raise CheckpointError(f"{path} predicts {state['num_classes']} classes but {cfg.data.dataset} has "
                              f"{info.num_classes}; evaluate it on the dataset it was trained on (data.dataset=..., "
                              "data.root=...)")
    mode = mode or cfg.eval.mode
    cm = evaluate(model, val, info.num_classes, device=dev, mode=mode, crop=crop or cfg.eval.crop_size,
                  stride=stride or cfg.eval.stride, batch_size=cfg.eval.batch_size)
    iou = [None if np.isnan(v) else v for v in cm.iou().tolist()]
    return {"miou": cm.miou(), "per_class_iou": iou, "class_names": list(info.class_names),
            "num_images": len(val), "mode": mode, "checkpoint": str(path)}


def colorize(mask: np.ndarray) -> Image.Image:
    """Index mask -> palette PNG image with the VOC colours."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img


SWATCH, GAP = 14, 6  # legend: colour square and spacing, px


def legend_strip(classes: Sequence[int], names: Sequence[str], colours: np.ndarray, width: int) -> Image.Image:
    """A white strip `width` px wide listing `classes` as colour swatch + name, wrapped into rows."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x, y, places = GAP, GAP, []
    for c in classes:
        name = names[c] if c < len(names) else f"class {c}"
        left, _, right, _ = measure.textbbox((0, 0), name, font=font)
        entry = SWATCH + GAP // 2 + right - left
        if x > GAP and x + entry > width - GAP:  # next row
            x, y = GAP, y + SWATCH + GAP
        places.append((x, y, c, name))
        x += entry + 2 * GAP
    strip = Image.new("RGB", (width, y + SWATCH + GAP), "white")
    draw = ImageDraw.Draw(strip)
    _, top, _, bottom = measure.textbbox((0, 0), "Ag", font=font)  # one baseline for every name
    for x, y, c, name in places:
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=tuple(int(v) for v in colours[c]),
                       outline=(128, 128, 128))
        draw.text((x + SWATCH + GAP // 2, y + (SWATCH - (bottom - top)) // 2 - top), name, fill=(0, 0, 0), font=font)
    return strip


@torch.no_grad()
def predict_files(path: Path, images: Sequence[Path], out_dir: Path, device: Optional[str] = None) -> list[Path]:
    """For each image write `<stem>.png` (palette mask) and `<stem>_overlay.jpg`: image | blend, above a
    legend of the predicted classes (the checkpoint's `class_names`, each with its colour)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, state = model_from_checkpoint(path, dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = voc_colormap()
    names = state.get("class_names") or []
    written = []
    for image_path in images:
        image = load_image(image_path)
        x = to_normalized_tensor(image)[None].to(dev)
        mode = "sliding" if cfg.eval.mode == "sliding" else "whole"
        logits = predict_logits(model, x, state["num_classes"], mode, cfg.eval.crop_size, cfg.eval.stride)
        mask = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_path = out_dir / f"{image_path.stem}.png"
        colorize(mask).save(mask_path)
        rgb = np.asarray(image, dtype=np.float32)
        blend = (0.5 * rgb + 0.5 * colours[mask]).astype(np.uint8)
        pair = Image.fromarray(np.concatenate([np.asarray(image), blend], axis=1))
        legend = legend_strip(np.unique(mask).tolist(), names, colours, pair.width)
        overlay = Image.new("RGB", (pair.width, pair.height + legend.height), "white")
        overlay.paste(pair, (0, 0))
        overlay.paste(legend, (0, pair.height))
        overlay.save(out_dir / f"{image_path.stem}_overlay.jpg", quality=95)
        written.append(mask_path)
    return written
