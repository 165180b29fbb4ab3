"""Lines with error bars (mean ± sample std over seeds): `miou_vs_labels.png` of `prcl compare`, and the
benchmarks' curves (mIoU against pseudo-label noise)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Mapping, Optional, Sequence

Series = Mapping[float, Sequence[float]]  # x -> the values over seeds


def errorbar_plot(lines: Mapping[str, Series], path: Path, xlabel: str, ylabel: str, *,
                  xticks: Optional[Sequence[float]] = None, xticklabels: Optional[Sequence[str]] = None,
                  logx: bool = False, jitter: float = 0.0, title: Optional[str] = None,
                  figsize: tuple[float, float] = (5, 3.5), dpi: int = 120) -> Path:
    """One line per entry of `lines` through the means, error bars of one sample std (0 for one value);
    line i of n is shifted by `jitter·(i − (n − 1)/2)` along x (a factor 1 + that on a log axis), so that
    overlapping bars stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    centre = (len(lines) - 1) / 2
    for i, (label, series) in enumerate(lines.items()):
        xs = [x for x in sorted(series) if series[x]]
        if not xs:
            continue
        means = [statistics.mean(series[x]) for x in xs]
        errs = [statistics.stdev(series[x]) if len(series[x]) > 1 else 0.0 for x in xs]
        shifted = [x * (1 + jitter * (i - centre)) if logx else x + jitter * (i - centre) for x in xs]
        ax.errorbar(shifted, means, yerr=errs, marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if xticks is not None:
        ax.set_xticks(list(xticks))
        if xticklabels is not None:
            ax.set_xticklabels(list(xticklabels))
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
