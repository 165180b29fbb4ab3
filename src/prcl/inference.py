"""Using a trained checkpoint: rebuild its network and read its classes' names and colours, evaluate it.

Predicting masks from Python is `prcl.segmenter.Segmenter`; writing them as files (`prcl predict`) is
`prcl.mask_files.predict_files`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from prcl.config import Config, apply_overrides, from_dict
from prcl.data.dataset import DataError
from prcl.data.loaders import build_val_dataset
from prcl.data.palette import class_colormap
from prcl.data.sources import dataset_info
from prcl.engine.checkpoint import CheckpointError, load_checkpoint
from prcl.engine.evaluate import evaluate
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
    path: Path, device: torch.device | str = "cpu", which: str = "reported", checkpoint: str = "best",
) -> tuple[SegmentationModel, Config, dict]:
    """A network of a checkpoint (a `.pt` file, or a run directory: its `checkpoint` = best|last, as
    `resolve_checkpoint`) in eval mode: `which="reported"` is the model the run reports (`eval.model`: for methods
    with a teacher, its authors' choice by default; the teacher comes without representation/probability
    heads), `"student"` the student with all its heads.

    Loaded strictly: the network is built with exactly the modules the saved one had (the teacher's
    heads are removed, as `EMATeacher` does), and a checkpoint lacking any of its weights is a
    `CheckpointError` naming them, never a network with some weights left at random."""
    if which not in ("reported", "student"):
        raise ValueError(f"which must be 'reported' or 'student', got {which!r}")
    path = resolve_checkpoint(Path(path), checkpoint)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    cfg.model.pretrained, cfg.model.weights = False, None  # weights come from the checkpoint
    model = build_model(cfg, state["num_classes"])
    part = "teacher" if which == "reported" and reported_model_name(cfg) == "teacher" else "model"
    if part == "teacher":
        model.rep_head = model.prob_head = None
    load_weights(model, state[part], path, part)
    return model.to(device).eval(), cfg, state


def class_colors(state: dict, cfg: Config) -> np.ndarray:
    """`[C, 3]` uint8 display colours of a checkpoint's C classes: the dataset's (its class file's `color`s for a
    folder dataset) as saved in the checkpoint; for a checkpoint saved without them, those of the dataset its
    config names, when it is still there; else the VOC colours (the built-in datasets')."""
    if "class_colors" in state:
        colors = state["class_colors"]
    else:
        try:
            colors = dataset_info(cfg.data.dataset, cfg.data.root).colors
        except (DataError, OSError):  # the data moved or is gone: the colours cannot be known
            colors = None
    return class_colormap(None if colors is None else np.asarray(colors))[: state["num_classes"]]


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
