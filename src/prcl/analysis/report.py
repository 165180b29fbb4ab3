"""`analyze_run`: the metrics and figures of one trained run (or two, compared), written to a folder
with `metrics.json`, PNGs and a `report.md` that embeds them.

    collect_val (student: μ/σ²/fused; evaluated net: predictions = pseudo-labels)
      ├─ Table 4: Silhouette / DBI of the per-class pixel sample
      ├─ Fig. 6 / 9: one joint t-SNE of pixels + prototypes + VNs for two β
      ├─ Fig. 7: σ² maps, mean σ² on wrong vs correct pseudo-labels
      └─ Figs. 4-5: predictions side by side
    logs: curves; prototype_trajectory.pt: Fig. 8 (PCA)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prcl.analysis.class_balance import class_balance_summary, has_class_balance
from prcl.analysis.collect import RunData, ValPass, collect_val, load_run
from prcl.analysis.embedding import pca_2d, representation_quality, sample_per_class, tsne_2d
from prcl.analysis.errors import AnalysisError
from prcl.analysis.figures import (Cell, EmbeddingPanel, Markers, RunLogs, plot_class_balance, plot_curves,
                                   plot_embedding_panels, plot_image_grid, plot_trajectories)
from prcl.analysis.markdown import write_report
from prcl.analysis.prototypes import TRAJECTORY_KINDS, trajectory_drift
from prcl.data.loaders import build_val_dataset
from prcl.engine.prototype_log import TRAJECTORY_FILE
from prcl.engine.run_dir import CHECKPOINT_DIR
from prcl.probabilistic import virtual_negatives


def _name(path: Path) -> str:
    path = path.resolve()
    if path.is_dir():
        return path.name
    return path.parent.parent.name if path.parent.name == CHECKPOINT_DIR else path.stem


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [_name(p) for p in paths]
    return names if len(set(names)) == len(names) else [f"{n} ({k})" for n, k in zip(names, "AB")]


def _unit(x: np.ndarray, on: bool) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12) if on else x


def _prototype_points(run: RunData, vp: ValPass) -> tuple[np.ndarray, np.ndarray, str]:
    """Points to mark in Fig. 6: the checkpoint's prototypes (those of `method.contrastive.prototype`
    when kept, else its GDP), else the class means of the pixel sample; in the space of the sample
    (unit vectors when μ is normalised)."""
    kind = run.cfg.method.contrastive.prototype
    p = run.prototypes.get(kind) or run.prototypes.get("gdp")
    if p is not None and run.feature == "mu" and p.initialized.any():
        ids = np.flatnonzero(p.initialized)
        return _unit(p.mean[ids], run.normalized), ids, {"gdp": "GDP mean", "ema": "EMA prototype"}[p.kind]
    ids = np.unique(vp.labels)
    means = np.stack([vp.features[vp.labels == c].astype(np.float64).mean(0) for c in ids])
    return _unit(means, run.normalized), ids, "class mean (sample)"


def _virtual_negatives(run: RunData, betas: Sequence[float], per_class: int, seed: int) -> dict:
    """Eq. 10 VNs of every initialised GDP class for each β, as the loss draws them (normalised
    afterwards when μ is); returns {β: (points [G*n, D], classes [G*n], mean distance to the mean)}."""
    p = run.prototypes["gdp"]
    ids = np.flatnonzero(p.initialized)
    vn = run.cfg.method.contrastive.vn
    mean, var = torch.from_numpy(p.mean[ids]), torch.from_numpy(p.vn_var.get(vn.source, p.var)[ids])
    scale = vn.scale
    out = {}
    for beta in betas:
        g = torch.Generator().manual_seed(seed)
        vn = virtual_negatives(mean, var, per_class, beta, scale=scale, generator=g)  # [G, n, D]
        centre = mean[:, None].expand_as(vn)
        if run.normalized:
            vn, centre = F.normalize(vn, dim=-1), F.normalize(centre, dim=-1)
        spread = float((vn - centre).norm(dim=-1).mean())
        out[beta] = (vn.reshape(-1, vn.shape[-1]).numpy(), np.repeat(ids, per_class), spread)
    return out


def _embedding_figures(run: RunData, vp: ValPass, out: Path, suffix: str, *, seed: int, per_class: int,
                       betas: Sequence[float], vn_per_class: int) -> tuple[dict, Optional[dict]]:
    """Figs. 6 and 9 from one t-SNE of [pixels, prototypes, VNs(β1), VNs(β2)]; VNs are drawn
    from the checkpoint's GDP."""
    keep = sample_per_class(vp.labels, per_class, seed)
    feats, labels = vp.features[keep].astype(np.float64), vp.labels[keep]
    protos, proto_ids, proto_name = _prototype_points(run, vp)
    has_gdp = "gdp" in run.prototypes and run.prototypes["gdp"].initialized.any() and run.feature == "mu"
    vns = _virtual_negatives(run, betas, vn_per_class, seed) if has_gdp else {}
    blocks = [feats, protos] + [v[0] for v in vns.values()]
    emb = tsne_2d(np.concatenate(blocks), seed)
    parts = np.split(emb, np.cumsum([len(b) for b in blocks])[:-1])
    proto_markers = Markers(parts[1], proto_ids, "*", proto_name, 260)
    what = "μ" + (" (L2-normalised)" if run.normalized else "") if run.feature == "mu" else "the fused decoder feature"
    figures = {f"tsne{suffix}": plot_embedding_panels(
        [EmbeddingPanel(f"{run.label}: t-SNE of {what}", parts[0], labels, [proto_markers])],
        run.class_names, out / f"tsne{suffix}.png", run.colors)}
    if not vns:
        return figures, None
    panels = [EmbeddingPanel(f"{run.label}: virtual negatives, β = {beta:g} (mean distance {v[2]:.2g})",
                             parts[0], labels, [proto_markers, Markers(part, v[1], "^", "virtual negative", 28)],
                             alpha=0.25)
              for (beta, v), part in zip(vns.items(), parts[2:])]
    figures[f"virtual_negatives{suffix}"] = plot_embedding_panels(panels, run.class_names,
                                                                  out / f"virtual_negatives{suffix}.png", run.colors)
    return figures, {"scale": run.cfg.method.contrastive.vn.scale, "per_class": vn_per_class,
                     "mean_distance_to_gdp": {str(b): v[2] for b, v in vns.items()}}


def _trajectory_figure(run: RunData, out: Path, suffix: str) -> tuple[Path, dict]:
    """Fig. 8: every logged prototype of every kind projected by one PCA (so panels share axes)."""
    traj = run.trajectory
    kinds = [k for k in TRAJECTORY_KINDS if k in traj]
    finite = {k: np.isfinite(traj[k]).all(-1) for k in kinds}  # [T, C]
    rows = np.concatenate([traj[k][finite[k]] for k in kinds])
    if rows.shape[0] < 2:
        raise AnalysisError(f"{run.run_dir / TRAJECTORY_FILE} holds fewer than 2 defined prototype positions")
    flat = pca_2d(rows)
    projected, start = {}, 0
    for k in kinds:
        xy = np.full(traj[k].shape[:2] + (2,), np.nan)
        n = int(finite[k].sum())
        xy[finite[k]] = flat[start:start + n]
        projected[k], start = xy, start + n
    drift = trajectory_drift(traj)
    path = plot_trajectories(projected, traj["iterations"], run.class_names,
                             out / f"prototype_trajectories{suffix}.png", drift, run.colors)
    return path, drift


def _probability_figure(run: RunData, vp: ValPass, path: Path) -> Path:
    titles = ("image", "ground truth", f"pseudo-label ({'teacher' if run.student is not run.evaluated else 'model'})",
              "σ² / image mean (mean over D)")
    rows = [[Cell("rgb", ex["image"], titles[0]), Cell("mask", ex["gt"], titles[1]),
             Cell("mask", ex["pred"], titles[2]), Cell("heat", ex["var"], titles[3])] for ex in vp.examples]
    rows = [[c._replace(title="") if i else c for c in row] for i, row in enumerate(rows)]
    return plot_image_grid(rows, path, colors=run.colors)


def _run_title(run: RunData) -> str:
    """`label (method): mIoU` for column titles."""
    method = run.cfg.method.name
    title = run.label if run.label == method else f"{run.label} ({method})"
    miou = _run_summary(run)["miou"]
    return title if miou is None else f"{title}: mIoU {100 * miou:.1f}"


def _predictions_figure(runs: Sequence[RunData], passes: Sequence[ValPass], path: Path) -> Path:
    heads = ["image", "ground truth"] + [_run_title(r) for r in runs]
    rows = []
    for i, ex in enumerate(passes[0].examples):
        row = [Cell("rgb", ex["image"], heads[0]), Cell("mask", ex["gt"], heads[1])]
        row += [Cell("mask", vp.examples[i]["pred"], h) for vp, h in zip(passes, heads[2:])]
        rows.append([c._replace(title="") if i else c for c in row])
    return plot_image_grid(rows, path, colors=runs[0].colors)


def _representation_metrics(run: RunData, vp: ValPass, notes: list[str]) -> dict:
    names = run.class_names
    rep = {"feature": run.feature, "network": "student", "l2_normalized": run.normalized,
           "dim": int(vp.features.shape[1]), "num_images": vp.num_images,
           "pixels_per_class": {names[c]: int(n) for c, n in enumerate(vp.pixels_per_class) if n}}
    if run.feature == "fused":
        rep["note"] = (f"method {run.cfg.method.name} has no representation head: the {rep['dim']}-channel fused "
                       "decoder feature (304 channels at the paper's widths) is scored instead of μ")
    try:
        q = representation_quality(vp.features, vp.labels)
        q["samples_per_class"] = {names[c]: n for c, n in q["samples_per_class"].items()}
        rep.update(q)
    except ValueError as err:
        rep.update(silhouette=None, davies_bouldin=None)
        notes.append(f"{run.label}: no Silhouette/DBI ({err})")
    return rep


def _run_summary(run: RunData) -> dict:
    mious = [m["miou"] for m in run.metrics if isinstance(m.get("miou"), (int, float))]
    return {"label": run.label, "run": str(run.run_dir or run.checkpoint), "checkpoint": str(run.checkpoint),
            "method": run.cfg.method.name, "iteration": run.state.get("iteration"),
            "miou": mious[-1] if mious else None, "best_miou": max(mious) if mious else None}


def _analyze_one(run: RunData, vp: ValPass, out: Path, suffix: str, notes: list[str], *, seed: int,
                 tsne_per_class: int, vn_betas: Optional[Sequence[float]], vn_per_class: int) -> tuple[dict, dict]:
    """Metrics and per-run figures (t-SNE, VNs, probability maps, trajectories) of one run."""
    metrics = _run_summary(run)
    metrics["representation"] = _representation_metrics(run, vp, notes)
    metrics["uncertainty"] = vp.uncertainty
    beta = run.cfg.method.contrastive.vn.beta
    betas = list(vn_betas) if vn_betas else [beta, 10 * beta if beta > 0 else 1.0]
    try:
        figures, metrics["virtual_negatives"] = _embedding_figures(
            run, vp, out, suffix, seed=seed, per_class=tsne_per_class, betas=betas, vn_per_class=vn_per_class)
    except AnalysisError as err:
        figures, metrics["virtual_negatives"] = {}, None
        notes.append(f"{run.label}: no t-SNE figures (Figs. 6, 9): {err}")
    if metrics["virtual_negatives"] is None and f"tsne{suffix}" in figures:
        kind = "no representation head" if run.feature == "fused" else \
            f"prototype={run.cfg.method.contrastive.prototype}"
        notes.append(f"{run.label}: no virtual-negative figure (Fig. 9): its checkpoint holds no GDP "
                     f"(method {run.cfg.method.name}, {kind})")
    if run.has_variance:
        figures[f"probability_maps{suffix}"] = _probability_figure(run, vp, out / f"probability_maps{suffix}.png")
    else:
        notes.append(f"{run.label}: no probability maps (Fig. 7): method {run.cfg.method.name} has no σ² head")
    metrics["prototype_drift"] = None
    if run.trajectory is not None:
        try:
            path, metrics["prototype_drift"] = _trajectory_figure(run, out, suffix)
            figures[f"prototype_trajectories{suffix}"] = path
        except AnalysisError as err:
            notes.append(f"{run.label}: no prototype trajectories (Fig. 8): {err}")
    else:
        notes.append(f"{run.label}: no prototype trajectories (Fig. 8): {TRAJECTORY_FILE} is absent; train with "
                     "train.log_prototypes_every=K (K > 0) to record them")
    return metrics, figures


def analyze_run(
    run: Path | str, out: Optional[Path | str] = None, other: Optional[Path | str] = None, num_images: int = 4,
    max_per_class: int = 500, seed: int = 0, *, checkpoint: str = "last", max_images: Optional[int] = None,
    tsne_per_class: int = 200, vn_betas: Optional[Sequence[float]] = None, vn_per_class: int = 20,
    device: Optional[str] = None, overrides: Sequence[str] = (),
) -> dict:
    """Analyse `run` (a run directory or checkpoint), compared with `other` when given; writes
    metrics.json, the PNGs and report.md to `out` (default `<run>/analysis`, or
    `<run>/analysis_vs_<other>`) and returns the metrics with the figure paths. Both runs are scored on
    the val set of `run`'s config; `max_images` limits the val images scored (default: all)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = [Path(run)] + ([Path(other)] if other is not None else [])
    runs = [load_run(p, checkpoint=checkpoint, device=dev, label=label, overrides=overrides)
            for p, label in zip(paths, _labels(paths))]
    base = runs[0].run_dir or runs[0].checkpoint.parent
    default = "analysis" if len(runs) == 1 else "analysis_vs_" + re.sub(r"[^\w.-]+", "_", runs[1].label)
    out = Path(out) if out is not None else base / default
    out.mkdir(parents=True, exist_ok=True)
    info, val = build_val_dataset(runs[0].cfg)
    for r in runs:
        if r.num_classes != info.num_classes:
            raise AnalysisError(f"{r.checkpoint} predicts {r.num_classes} classes but the val set of "
                             f"{runs[0].label} ({runs[0].cfg.data.dataset}) has {info.num_classes}")
    notes: list[str] = []
    figures: dict[str, Path] = {}
    results, passes = [], []
    for k, r in enumerate(runs):
        vp = collect_val(r, val, num_images=num_images, max_per_class=max_per_class, max_images=max_images,
                         seed=seed)
        metrics, figs = _analyze_one(r, vp, out, "" if len(runs) == 1 else f"_{'ab'[k]}", notes, seed=seed,
                                     tsne_per_class=tsne_per_class, vn_betas=vn_betas, vn_per_class=vn_per_class)
        metrics["representation"]["max_per_class"] = max_per_class
        results.append(metrics)
        passes.append(vp)
        figures.update(figs)
    logs = [RunLogs(r.label, r.train_log, r.metrics) for r in runs]
    figures["curves"] = plot_curves(logs, runs[0].class_names, out / "curves.png")
    for metrics, r in zip(results, runs):
        metrics["class_balance"] = class_balance_summary(r.train_log, r.class_names)
    if has_class_balance(logs):
        settings = runs[0].cfg.method.class_balance
        figures["class_balance"] = plot_class_balance(logs, runs[0].class_names, out / "class_balance.png",
                                                      settings.shrink_ratio, settings.starved_ratio, runs[0].colors)
    figures["predictions"] = _predictions_figure(runs, passes, out / "predictions.png")
    result = {"out": str(out), "seed": seed, "runs": results, "notes": notes,
              "figures": {k: str(v) for k, v in figures.items()}, "report": str(out / "report.md")}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    write_report(result, out / "report.md")
    return result
