"""What `prcl analyze` reads from a run: its networks and logs, and one pass over the val set.

The pass runs the *student* (the only network with the representation and probability heads)
for μ / σ² / the fused feature, and the *evaluated* network (the teacher when the method has one)
for predictions, which are also the pseudo-labels of Fig. 7.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.analysis.embedding import ClassReservoir
from prcl.analysis.errors import AnalysisError
from prcl.analysis.prototypes import Prototypes, load_prototype_trajectory, method_prototypes
from prcl.engine.prototype_log import TRAJECTORY_FILE
from prcl.engine.run_dir import CHECKPOINT_DIR, METRICS_LOG, TRAIN_LOG
from prcl.config import Config, apply_overrides
from prcl.data.transforms import denormalize
from prcl.engine.evaluate import pad_to_multiple, predict_logits
from prcl.inference import class_colors, model_from_checkpoint, resolve_checkpoint
from prcl.methods.contrastive_term import to_feature_resolution

UNCERTAINTY_PIXELS_PER_IMAGE = 4096  # pixels per image kept to compute the AUROC of σ²
# the AUROCs of σ² as a detector of wrong pseudo-labels, by the pixels they are taken over (short names for tables)
SIGMA_AUROCS = {"auroc_var_detects_wrong": "all pixels",
                "auroc_var_detects_wrong_confident": "confidence ≥ δw",
                "auroc_var_detects_wrong_within_class": "within class"}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log ([] when the file does not exist)."""
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise AnalysisError(f"{path}, line {n}: not JSON ({err}); remove the line") from err
    return records


@dataclass
class RunData:
    """A trained run: config, checkpoint, the two networks, logs and prototype state."""

    label: str
    run_dir: Optional[Path]  # None when only a checkpoint file was given
    checkpoint: Path
    cfg: Config
    state: dict  # iteration, num_classes, class_names of the checkpoint
    evaluated: torch.nn.Module
    student: torch.nn.Module
    train_log: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    trajectory: Optional[dict] = None
    prototypes: dict[str, Prototypes] = field(default_factory=dict)  # by kind: gdp, ema
    colors: Optional[np.ndarray] = None  # [C, 3] uint8 class colours as `prcl predict` paints them; None = VOC's

    @property
    def num_classes(self) -> int:
        return int(self.state["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.state.get("class_names") or [str(c) for c in range(self.num_classes)])

    @property
    def has_variance(self) -> bool:
        return getattr(self.student, "prob_head", None) is not None

    @property
    def feature(self) -> str:
        """The representation analysed: μ of the representation head, else the fused decoder feature."""
        return "mu" if getattr(self.student, "rep_head", None) is not None else "fused"

    @property
    def normalized(self) -> bool:
        """μ is L2-normalised where the contrastive loss normalises it (cosine, or MLS with normalize)."""
        c = self.cfg.method.contrastive
        return self.feature == "mu" and (c.mls.normalize or not c.pr)


def load_run(path: Path, *, checkpoint: str = "last", device: torch.device | str = "cpu",
             label: Optional[str] = None, overrides: Sequence[str] = ()) -> RunData:
    """Load a run directory (or one checkpoint file) for analysis; `overrides` patch its config
    (e.g. `data.root=...` when the data moved since training)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run {path} does not exist; give a run directory (runs/<name>) or a .pt file")
    ckpt = resolve_checkpoint(path, checkpoint)
    evaluated, cfg, state = model_from_checkpoint(ckpt, device)
    student = model_from_checkpoint(ckpt, device, which="student")[0] if state.get("teacher") is not None else evaluated
    apply_overrides(cfg, overrides)
    run_dir = path if path.is_dir() else (ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else None)
    slim = {k: state.get(k) for k in ("iteration", "num_classes", "class_names")}  # drop weights, optimiser
    run = RunData(label or (run_dir or ckpt).name, run_dir, ckpt, cfg, slim, evaluated, student,
                  prototypes=method_prototypes(state.get("method") or {}), colors=class_colors(state, cfg))
    if run_dir is not None:
        run.train_log = read_jsonl(run_dir / TRAIN_LOG)
        run.metrics = read_jsonl(run_dir / METRICS_LOG)
        if (run_dir / TRAJECTORY_FILE).is_file():
            run.trajectory = load_prototype_trajectory(run_dir / TRAJECTORY_FILE)
            classes = next(v for k, v in run.trajectory.items() if k != "iterations").shape[1]
            if classes != run.num_classes:
                raise AnalysisError(f"{run_dir / TRAJECTORY_FILE} has {classes} classes but the checkpoint "
                                    f"{run.num_classes}; delete the file (it is from another run)")
    return run


@dataclass
class ValPass:
    """Everything the figures and metrics need from the val images."""

    features: np.ndarray  # [N, D] float32, at most max_per_class rows per class
    labels: np.ndarray  # [N]
    pixels_per_class: np.ndarray  # [C] labeled stride-4 pixels seen per class
    examples: list[dict]  # the first images: image [H,W,3], gt, pred [H,W], var [H,W] or None
    uncertainty: Optional[dict]  # σ² on wrong vs correct pseudo-labels (runs with σ²)
    num_images: int


class _UncertaintyStats:
    """Mean σ² (mean over D) on correctly vs wrongly pseudo-labeled labeled pixels, and its AUROC
    as a detector of wrong pseudo-labels (on up to UNCERTAINTY_PIXELS_PER_IMAGE pixels per image):
    over all of them, over the confident ones (confidence ≥ δw, the only ones the contrastive loss
    takes from unlabeled images), and within each ground-truth class (macro mean over the classes
    with both outcomes: σ² that only tells background from objects scores 0.5 there)."""

    def __init__(self, seed: int) -> None:
        self.sums, self.counts = np.zeros(2), np.zeros(2, dtype=np.int64)  # [correct, wrong]
        self.kept: list[tuple[np.ndarray, ...]] = []  # (σ², wrong, confident, ground-truth class)
        self.rng = np.random.default_rng(seed)

    def add(self, var_mean: np.ndarray, wrong: np.ndarray, confident: np.ndarray, gt: np.ndarray) -> None:
        for k in (0, 1):
            sel = wrong == bool(k)
            self.sums[k] += float(var_mean[sel].astype(np.float64).sum())
            self.counts[k] += int(sel.sum())
        keep = self.rng.permutation(wrong.size)[:UNCERTAINTY_PIXELS_PER_IMAGE]
        self.kept.append((var_mean[keep], wrong[keep], confident[keep], gt[keep]))

    @staticmethod
    def _auroc(scores: np.ndarray, wrong: np.ndarray) -> Optional[float]:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(wrong, scores)) if 0 < wrong.sum() < wrong.size else None

    def result(self) -> dict:
        means = [float(self.sums[k] / self.counts[k]) if self.counts[k] else None for k in (0, 1)]
        scores, wrong, confident, gt = (np.concatenate(a) for a in zip(*self.kept)) if self.kept else (
            np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64))
        per_class = [a for c in np.unique(gt) if (a := self._auroc(scores[gt == c], wrong[gt == c])) is not None]
        return {
            "mean_var_correct": means[0], "mean_var_wrong": means[1],
            "ratio_wrong_to_correct": means[1] / means[0] if None not in means and means[0] > 0 else None,
            "auroc_var_detects_wrong": self._auroc(scores, wrong),
            "auroc_var_detects_wrong_confident": self._auroc(scores[confident], wrong[confident]),
            "auroc_var_detects_wrong_within_class": float(np.mean(per_class)) if per_class else None,
            "pixels_correct": int(self.counts[0]), "pixels_wrong": int(self.counts[1]),
        }


def _pixels(feat: torch.Tensor) -> np.ndarray:
    """[1, D, h, w] -> [h*w, D] float32 numpy."""
    return feat[0].flatten(1).t().float().cpu().numpy()


def student_outputs(student: torch.nn.Module, image: torch.Tensor) -> dict:
    """The student's outputs on `image` [1, 3, H, W]. A ViT (`size_multiple` 14) sees the image zero-padded to
    multiples of its patch; its logits are cut back to the image and its feature maps to the cells that overlap
    it."""
    padded = pad_to_multiple(image, getattr(student, "size_multiple", 1))
    out = student(padded)
    if padded is image:
        return out
    (h, w), (hp, wp) = image.shape[-2:], padded.shape[-2:]

    def cut(t: torch.Tensor) -> torch.Tensor:
        fh, fw = t.shape[-2:]
        return t[..., :math.ceil(h * fh / hp), :math.ceil(w * fw / wp)]

    return {k: cut(v) if torch.is_tensor(v) and v.dim() == 4 else v for k, v in out.items()}


@torch.no_grad()
def collect_val(run: RunData, dataset, *, num_images: int = 4, max_per_class: int = 500,
                max_images: Optional[int] = None, seed: int = 0) -> ValPass:
    """One pass over `dataset` (samples with `image` and `mask`), one image at a time."""
    device = next(run.student.parameters()).device
    e, c = run.cfg.eval, run.num_classes
    mode = "sliding" if e.mode == "sliding" else "whole"
    reservoir = ClassReservoir(c, max_per_class, seed)
    stats = _UncertaintyStats(seed) if run.has_variance else None
    examples: list[dict] = []
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in range(total):
        sample = dataset[i]
        x, mask = sample["image"][None].to(device), sample["mask"]
        out = student_outputs(run.student, x)
        feat = out[run.feature]  # [1, D, h, w]
        if run.normalized:
            feat = F.normalize(feat, dim=1)
        size = feat.shape[-2:]
        same = run.evaluated is run.student and mode == "whole"
        logits = out["logits"] if same else predict_logits(run.evaluated, x, c, mode, e.crop_size, e.stride)
        pred = logits.argmax(1)[0].cpu()  # [H, W]
        gt_small = to_feature_resolution(mask[None], size)[0].flatten().numpy()
        labeled = gt_small != IGNORE_INDEX
        reservoir.add(_pixels(feat)[labeled], gt_small[labeled])
        var_map = None
        if stats is not None:
            var_mean = out["var"].float().mean(1)  # [1, h, w]: σ² averaged over D
            pred_small = to_feature_resolution(pred[None], size)[0].flatten().numpy()
            confidence = to_feature_resolution(logits.softmax(1).amax(1).cpu(), size)[0].flatten().numpy()
            stats.add(var_mean.flatten().cpu().numpy()[labeled], (pred_small != gt_small)[labeled],
                      (confidence >= run.cfg.method.contrastive.weak_threshold)[labeled], gt_small[labeled])
            if i < num_images:
                up = F.interpolate(var_mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                var_map = (up / up.mean()).squeeze().cpu().numpy()  # ℓ1-normalised, x H·W: image mean = 1
        if i < num_images:
            examples.append({"image": denormalize(x[0]).permute(1, 2, 0).cpu().numpy(),
                             "gt": mask.numpy(), "pred": pred.numpy(), "var": var_map})
    if not reservoir.offered.any():
        raise AnalysisError(f"no labeled pixel in the {total} val images of {run.label} "
                            f"({run.cfg.data.dataset} at {run.cfg.data.root}); check the val masks or --max-images")
    feats, labels = reservoir.sample()
    return ValPass(feats, labels, reservoir.offered, examples, stats.result() if stats else None, total)
