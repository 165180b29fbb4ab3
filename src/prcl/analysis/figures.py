"""The PNG figures of `prcl analyze`, drawn with matplotlib's object API on the Agg canvas
(no pyplot, so importing this never changes a user's global matplotlib backend).

Colours are the run's class colours (its dataset's class file; the VOC palette for the built-in datasets, as
`prcl predict` paints them), so a class has the same colour in masks, scatter plots and trajectories.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from prcl.data.palette import class_colormap

LOSS_KEYS = ("total", "sup", "unsup", "contrastive")
STAT_KEYS = ("contrastive/mean_var", "contrastive/proto_var", "contrastive/vn_spread", "contrastive/gdp_drift")
RELIABILITY_AUROC_KEYS = ("reliability/confident/auroc_within_class", "reliability/anchors/auroc_within_class")
RELIABILITY_VAR_KEYS = ("reliability/confident/var_wrong", "reliability/confident/var_right")
RELIABILITY_GRAD_KEYS = ("reliability/anchors/grad_wrong", "reliability/anchors/grad_right")
RUN_STYLES = ("-", "--", ":", "-.")
TRAJECTORY_TITLES = {"local": "local (batch) prototypes, Eq. 4", "ema": "EMA prototypes, Eq. 16",
                     "gdp": "GDP means, Eq. 9"}


def class_colours(num_classes: int, colors: Optional[np.ndarray] = None) -> np.ndarray:
    """[C, 3] floats in [0, 1]: the classes' colours (`colors`, [C, 3] uint8; None = the VOC palette)."""
    return class_colormap(colors)[:num_classes] / 255.0


def colour_mask(mask: np.ndarray, colors: Optional[np.ndarray] = None) -> np.ndarray:
    """Index mask [H, W] (255 = ignore) -> RGB uint8 [H, W, 3] in the classes' colours (None = VOC's)."""
    return class_colormap(colors)[np.asarray(mask, dtype=np.int64)]


def _figure(rows: int, cols: int, cell: tuple[float, float], **kwargs) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of `key` in the log records that have it."""
    rows = [(r["iteration"], r[key]) for r in records if key in r]
    return (np.array([i for i, _ in rows]), np.array([v for _, v in rows])) if rows else (np.zeros(0), np.zeros(0))


def _no_data(ax, text: str = "not logged") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


# ---------------------------------------------------------------------------- curves
class RunLogs(NamedTuple):
    label: str
    train_log: list[dict]
    metrics: list[dict]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot_keys(ax, runs: Sequence[RunLogs], keys: Sequence[str], source: str, title: str, *,
               log: bool = False, scale: float = 1.0) -> None:
    """One line per (run, key): colour by key (by run when there is one key), line style by run."""
    drawn = False
    for k, (style, run) in enumerate(zip(RUN_STYLES, runs)):
        for n, key in enumerate(keys):
            x, y = _series(getattr(run, source), key)
            if log:
                x, y = [a for a, b in zip(x, y) if b > 0], [b for b in y if b > 0]
            if x:
                short = key.split("/", 1)[-1] if key.startswith("reliability/") else key.split("/")[-1]
                name = short + (f" ({run.label})" if len(runs) > 1 else "")
                ax.plot(x, [scale * v for v in y], style, color=f"C{k if len(keys) == 1 else n}", label=name,
                        marker="." if len(x) < 3 else None)
                drawn = True
    ax.set_title(title)
    ax.set_xlabel("iteration")
    if log and drawn:
        ax.set_yscale("log")
    if drawn and (len(keys) > 1 or len(runs) > 1):
        ax.legend(fontsize=7)
    if not drawn:
        _no_data(ax)


def _plot_class_iou(ax, runs: Sequence[RunLogs], class_names: Sequence[str]) -> None:
    width = 0.8 / max(len(runs), 1)
    drawn = False
    for k, run in enumerate(runs):
        if run.metrics and run.metrics[-1].get("per_class_iou"):
            iou = [np.nan if v is None else 100 * v for v in run.metrics[-1]["per_class_iou"]]
            ax.bar(np.arange(len(iou)) + k * width, iou, width, label=run.label, color=f"C{k}")
            drawn = True
    ax.set_xticks(np.arange(len(class_names)) + 0.4 - width / 2)
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=7)
    ax.set_title("per-class IoU (%), last evaluation")
    if drawn and len(runs) > 1:
        ax.legend(fontsize=7)
    if not drawn:
        _no_data(ax)


def _gradient_keys(runs: Sequence[RunLogs]) -> tuple[list[str], list[str]]:
    """The logged gradient-diagnostic keys: per term (`grad/sup`, ...) and per path (`grad/contrastive.mu`)."""
    keys = sorted({k for run in runs for r in run.train_log for k in r if k.startswith("grad/")})
    return [k for k in keys if "." not in k], [k for k in keys if "." in k]


def _mu_share(record: dict) -> Optional[float]:
    """Share of the contrastive term's trunk gradient that goes through μ (1 for a term without a σ²
    path, e.g. the cosine Baseline's); None where the record has no diagnostics."""
    mu, var = record.get("grad/contrastive.mu"), record.get("grad/contrastive.var", 0.0)
    return None if mu is None or mu + var <= 0 else mu / (mu + var)


def plot_curves(runs: Sequence[RunLogs], class_names: Sequence[str], path: Path) -> Path:
    """Losses, lr, λc (Eq. 12), val mIoU, contrastive statistics, per-class IoU and the gradient
    diagnostics (each term's gradient norm at the trunk, the contrastive term's by path); runs overlaid."""
    fig, ax = _figure(4, 3, (4.6, 3.4))
    _plot_keys(ax[0, 0], runs, LOSS_KEYS, "train_log", "training losses (contrastive = λc·Lc)")
    _plot_keys(ax[0, 1], runs, ("lr",), "train_log", "learning rate")
    _plot_keys(ax[0, 2], runs, ("contrastive/lambda",), "train_log", "λc(t), Eq. 12")
    _plot_keys(ax[1, 0], runs, ("miou",), "metrics", "val mIoU (%)", scale=100.0)
    _plot_keys(ax[1, 1], runs, STAT_KEYS, "train_log", "contrastive statistics", log=True)
    _plot_class_iou(ax[1, 2], runs, class_names)
    terms, paths = _gradient_keys(runs)
    _plot_keys(ax[2, 0], runs, terms, "train_log", "gradient norm at the trunk, per loss term", log=True)
    _plot_keys(ax[2, 1], runs, paths, "train_log", "contrastive term's gradient at the trunk, by path", log=True)
    share = [RunLogs(r.label, [{"iteration": x["iteration"], "μ share": _mu_share(x)} for x in r.train_log
                               if _mu_share(x) is not None], r.metrics) for r in runs]
    _plot_keys(ax[2, 2], share, ("μ share",), "train_log", "share of the contrastive trunk gradient through μ")
    _plot_keys(ax[3, 0], runs, RELIABILITY_AUROC_KEYS, "train_log", "σ² flags wrong pseudo-labels: AUROC within class")
    ax[3, 0].axhline(0.5, color="grey", lw=0.8, ls=":")
    _plot_keys(ax[3, 1], runs, RELIABILITY_VAR_KEYS, "train_log", "σ² on wrong / right pseudo-labels (confident)")
    _plot_keys(ax[3, 2], runs, RELIABILITY_GRAD_KEYS, "train_log", "∂Lc/∂σ² on wrong / right anchors (< 0 raises σ²)")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_balance(runs: Sequence[RunLogs], class_names: Sequence[str], path: Path,
                       shrink_ratio: float = 0.6, starved_ratio: float = 0.5,
                       colors: Optional[np.ndarray] = None) -> Path:
    """Three panels, one colour per class, one line style per run: the labeler's mean probability / labeled share
    (with the warning line), the confident share / labeled share (with the line under which `threshold=adaptive`
    lowers a class's threshold), and the pseudo-labels' recall (solid) and precision (dotted)."""
    fig, ax = _figure(1, 3, (4.8, 3.6))
    colours = class_colours(len(class_names), colors)
    for k, run in enumerate(runs):
        style = RUN_STYLES[k % len(RUN_STYLES)]
        for c, name in enumerate(class_names):
            label = name if k == 0 else None
            for panel, key in ((0, "prediction_ratio"), (1, "ratio")):
                x, values = series(run.train_log, f"class_balance/{key}/{name}")
                ax[0, panel].plot(x, values, style, color=colours[c], label=label)
            for kind, dash in (("recall", style), ("precision", ":")):
                x, values = series(run.train_log, f"reliability/pseudo_{kind}/{name}")
                ax[0, 2].plot(x, values, dash, color=colours[c], label=f"{name} {kind}" if k == 0 else None)
    for panel, line in ((0, shrink_ratio), (1, starved_ratio)):
        ax[0, panel].axhline(line, color="grey", lw=0.8, ls=":")
        ax[0, panel].set_yscale("symlog", linthresh=0.1)
    ax[0, 0].set_title("mean probability / labeled share\n(warning below the line, second half)")
    ax[0, 1].set_title("confident share / labeled share\n(starved below the line)")
    ax[0, 2].set_title("pseudo-label recall (solid) and precision (dotted)")
    for a in ax[0]:
        a.set_xlabel("iteration")
        if a.lines:
            a.legend(fontsize=6)
        else:
            _no_data(a)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------- image grids
class Cell(NamedTuple):
    kind: str  # "rgb" | "mask" | "heat"
    data: Optional[np.ndarray]
    title: str


def plot_image_grid(rows: Sequence[Sequence[Cell]], path: Path, heat_label: str = "",
                    colors: Optional[np.ndarray] = None) -> Path:
    """A grid of images, masks (in the classes' `colors`, [C, 3] uint8; None = VOC's) and heat maps (jet: red =
    large); empty titles are not drawn."""
    ncols = max(len(r) for r in rows)
    fig, ax = _figure(len(rows), ncols, (2.6, 2.6))
    for i, row in enumerate(rows):
        for j in range(ncols):
            a = ax[i, j]
            a.set_xticks([])
            a.set_yticks([])
            if j >= len(row) or row[j].data is None:
                a.axis("off")
                continue
            cell = row[j]
            if cell.kind == "heat":
                im = a.imshow(cell.data, cmap="jet")
                fig.colorbar(im, ax=a, fraction=0.046, pad=0.02, label=heat_label).ax.tick_params(labelsize=6)
            else:
                a.imshow(colour_mask(cell.data, colors) if cell.kind == "mask" else cell.data, interpolation="nearest")
            if cell.title:
                a.set_title(cell.title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------- embeddings
class Markers(NamedTuple):
    points: np.ndarray  # [M, 2]
    classes: np.ndarray  # [M]
    marker: str
    name: str
    size: float


class EmbeddingPanel(NamedTuple):
    title: str
    points: np.ndarray  # [N, 2] pixel representations
    labels: np.ndarray  # [N]
    markers: Sequence[Markers] = ()
    alpha: float = 0.6


def plot_embedding_panels(panels: Sequence[EmbeddingPanel], class_names: Sequence[str], path: Path,
                          colors: Optional[np.ndarray] = None) -> Path:
    """Scatter plots of 2-D embeddings coloured by class, with marked prototypes / VNs (Figs. 6, 9)."""
    colours = class_colours(len(class_names), colors)
    fig, ax = _figure(1, len(panels), (5.2, 5.0))
    for a, panel in zip(ax[0], panels):
        a.scatter(*panel.points.T, c=colours[panel.labels], s=5, alpha=panel.alpha, linewidths=0)
        for m in panel.markers:
            edge = "black" if m.marker == "*" else "none"
            a.scatter(*m.points.T, c=colours[m.classes], marker=m.marker, s=m.size, edgecolors=edge, linewidths=0.8)
        a.set_title(panel.title, fontsize=10)
        a.set_xticks([])
        a.set_yticks([])
    present = sorted({int(c) for p in panels for c in p.labels})
    handles = [Patch(color=colours[c], label=class_names[c]) for c in present]
    kinds = {m.name: m.marker for p in panels for m in p.markers}
    handles += [Line2D([], [], ls="", marker=mk, color="grey", markeredgecolor="black" if mk == "*" else "grey",
                       label=name, markersize=9) for name, mk in kinds.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(projected: dict[str, np.ndarray], iterations: np.ndarray, class_names: Sequence[str],
                      path: Path, drift: Optional[dict] = None, colors: Optional[np.ndarray] = None) -> Path:
    """Fig. 8: prototype positions over training, one panel per kind ([T, C, 2] each, NaN = none),
    in a shared 2-D projection; ○ = first logged position, ★ = last."""
    colours = class_colours(len(class_names), colors)
    fig, ax = _figure(1, len(projected), (4.6, 4.4), sharex=True, sharey=True)
    for a, (kind, xy) in zip(ax[0], projected.items()):
        for c in range(xy.shape[1]):
            finite = np.flatnonzero(np.isfinite(xy[:, c]).all(1))
            if finite.size == 0:
                continue
            a.plot(xy[:, c, 0], xy[:, c, 1], "-", color=colours[c], lw=1, alpha=0.8)
            a.plot(*xy[finite, c].T, ".", color=colours[c], ms=3)
            a.plot(*xy[finite[0], c], "o", mfc="none", mec=colours[c], ms=7)
            a.plot(*xy[finite[-1], c], "*", color=colours[c], mec="black", ms=12)
        step = (drift or {}).get(kind)
        a.set_title(TRAJECTORY_TITLES.get(kind, kind) + ("" if step is None else f"\nmean step {step:.3g}"),
                    fontsize=9)
    present = [c for c in range(len(class_names)) if any(np.isfinite(xy[:, c]).any() for xy in projected.values())]
    fig.legend(handles=[Patch(color=colours[c], label=class_names[c]) for c in present],
               loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"prototype trajectories, iterations {int(iterations[0])}-{int(iterations[-1])} (PCA)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
