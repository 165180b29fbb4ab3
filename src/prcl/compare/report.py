"""`results.md` and `miou_vs_labels.png` of a comparison: mean ± sample std of each method per label
fraction (and varied value), each class's IoU, and each method's paired difference against the reference
method, per seed and on average with its paired t statistic. Percent in the tables; the run files keep
fractions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from prcl.compare.label_fractions import denominator
from prcl.compare.matrix import Matrix
from prcl.compare.plot import errorbar_plot
from prcl.compare.results import RunResult, sort_key
from prcl.compare.stats import format_mean_std, paired_difference, t_critical_95
from prcl.data.sources import dataset_info

PLOT_FILE = "miou_vs_labels.png"
Cell = tuple[str, str, tuple[str, ...]]  # method, fraction, varied values


def cells(matrix: Matrix, results: Sequence[RunResult]) -> dict[Cell, dict[int, float]]:
    """{(method, fraction, varied values): {seed: mIoU in percent}} over the finished runs, in matrix order."""
    out: dict[Cell, dict[int, float]] = {}
    for r in sorted(results, key=lambda r: sort_key(matrix, r)):
        axes = r.spec.axes
        cell = out.setdefault((axes["method"], axes["labels"], tuple(axes[a.key] for a in matrix.vary)), {})
        if r.miou is not None:
            cell[axes["seed"]] = 100 * r.miou
    return out


def class_names(matrix: Matrix, num_classes: int) -> list[str]:
    """The dataset's class names (every run of a comparison uses one dataset); `class <i>` if it cannot be
    opened any more."""
    data = matrix.runs[0].config.data
    try:
        names = list(dataset_info(data.dataset, data.root).class_names)
    except Exception:  # noqa: BLE001 - a report of finished runs must not fail on the dataset's files
        names = []
    return names if len(names) == num_classes else [f"class {c}" for c in range(num_classes)]


def class_iou_table(matrix: Matrix, results: Sequence[RunResult]) -> list[str]:
    """IoU (%) of each class, mean over the finished seeds, one row per method, fraction and varied values:
    a method can lift the mIoU and still lose a rare class (docs/class-balance.md)."""
    sums: dict[Cell, list[list[float]]] = {}
    for r in sorted(results, key=lambda r: sort_key(matrix, r)):
        if (iou := r.per_class_iou) is not None:
            axes = r.spec.axes
            sums.setdefault((axes["method"], axes["labels"], tuple(axes[a.key] for a in matrix.vary)), []).append(iou)
    if not sums:
        return []
    num_classes = len(next(iter(sums.values()))[0])
    rows = [[m, *combo, f, *(f"{100 * sum(run[c] for run in runs) / len(runs):.2f}" for c in range(num_classes))]
            for (m, f, combo), runs in sums.items()]
    return markdown_table(["method", *(a.key for a in matrix.vary), "labels", *class_names(matrix, num_classes)], rows)


def markdown_row(values: Sequence[object]) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table's lines: the header, the `| --- |` rule, one line per row."""
    return [markdown_row(header), markdown_row(["---"] * len(header)), *(markdown_row(r) for r in rows)]


def _fraction_header(matrix: Matrix, fraction: str) -> str:
    n = matrix.fractions[fraction].num_labeled
    return f"{fraction} ({n} labeled)" if n is not None else fraction


def _cell_text(seeds: dict[int, float]) -> str:
    text = format_mean_std(list(seeds.values()), scale=1.0)
    return f"{text} (n = {len(seeds)})" if len(seeds) > 1 else text


def _t_text(t: Optional[float], df: int) -> str:
    if t is None or math.isnan(t):
        return "–"
    return f"{t:+.2f} ({df})" if math.isfinite(t) else f"{'+' if t > 0 else '−'}∞ ({df})"


def miou_table(matrix: Matrix, by_cell: dict[Cell, dict[int, float]]) -> list[str]:
    vary = [a.key for a in matrix.vary]
    combos = list(dict.fromkeys(c[2] for c in by_cell))
    rows = [[m, *combo, *(_cell_text(by_cell.get((m, f, combo), {})) for f in matrix.fractions)]
            for m in matrix.methods for combo in combos]
    return markdown_table(["method", *vary, *(_fraction_header(matrix, f) for f in matrix.fractions)], rows)


def difference_table(matrix: Matrix, by_cell: dict[Cell, dict[int, float]]) -> list[str]:
    rows = []
    for (method, fraction, combo), seeds in by_cell.items():
        if method == matrix.reference:
            continue
        diff = paired_difference(seeds, by_cell.get((matrix.reference, fraction, combo), {}))
        if diff is None:
            rows.append([method, *combo, fraction, "–", "–", "–", "–"])
            continue
        crit = t_critical_95(diff.df)
        verdict = "–" if diff.significant is None else (
            f"yes (t beyond ±{crit:.2f})" if diff.significant else f"no (t within ±{crit:.2f})")
        per_seed = ", ".join(f"s{s} {d:+.2f}" for s, d in diff.per_seed.items())
        rows.append([method, *combo, fraction, per_seed, f"{diff.mean:+.2f}", _t_text(diff.t, diff.df), verdict])
    header = ["method", *(a.key for a in matrix.vary), "labels", "per seed", "mean", "t (df)", "p < 0.05"]
    return markdown_table(header, rows)


def write_report(matrix: Matrix, results: Sequence[RunResult], path: Path, command: str,
                 failed_logs: Optional[dict[str, str]] = None) -> Path:
    """Write `results.md` (see the module docstring); `failed_logs` maps a failed run to its log tail."""
    by_cell = cells(matrix, results)
    finished = [r for r in results if r.summary is not None]
    hours = sum(r.summary["wall_seconds"] for r in finished) / 3600 if finished else 0.0
    iterations = sorted({r.summary["iterations"] for r in finished})
    seeds = ", ".join(map(str, matrix.seeds))
    lines = [f"# Comparison: {', '.join(matrix.methods)} at {', '.join(matrix.fractions)} labels, seeds {seeds}", "",
             f"Command: `{command}`", "",
             f"mIoU in percent (the run files store fractions, 0–1) of each run's reported model (`summary.json` "
             f"`miou`: the teacher for the mean-teacher family, else the student) on the val split at the end of "
             f"training; mean ± sample std over the seeds that finished (n). {len(finished)} of {len(results)} runs "
             f"finished ({', '.join(map(str, iterations)) or '–'} iterations each, {hours:.2f} h of training in all). "
             f"Runs in `{matrix.out / 'runs'}`; one row per run in `results.csv`; the curves in `{PLOT_FILE}`.", "",
             "## mIoU (%)", "", *miou_table(matrix, by_cell), ""]
    if per_class := class_iou_table(matrix, results):
        lines += ["## IoU per class (%)", "", "Mean over the finished seeds, of the same model as the mIoU. A class "
                  "whose IoU falls below the reference's while the mIoU holds is a class the method costs you "
                  "(`docs/class-balance.md`).", "", *per_class, ""]
    if len(matrix.methods) > 1:
        lines += [f"## Paired differences against {matrix.reference} (mIoU points)", "",
                  f"Per seed: the method's mIoU minus {matrix.reference}'s on the same seed (the same labeled images "
                  "and initial weights). t = mean / (sample std / √n) of the per-seed differences, n − 1 degrees of "
                  "freedom (df); the difference is significant at p < 0.05 (two-sided) when t lies beyond the value "
                  "shown. Seeds differ by 1–4 mIoU here: with fewer than 3 seeds a difference says little.", "",
                  *difference_table(matrix, by_cell), ""]
    missing = [r for r in results if r.summary is None]
    if missing:
        lines += ["## Not finished", ""]
        for r in missing:
            lines.append(f"- `{r.spec.name}`: {r.status}; log `{r.spec.log_path}`")
            tail = (failed_logs or {}).get(r.spec.name)
            if tail:
                lines += ["", "  ```", *(f"  {line}" for line in tail.splitlines()), "  ```"]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_plot(matrix: Matrix, results: Sequence[RunResult], path: Path) -> Optional[Path]:
    """mIoU against the number of labeled images (log 2 scale; the share of the labeled pool when the
    counts are unknown), one line per method (and varied value), error bars of one sample std."""
    by_cell = cells(matrix, results)
    counts = {f: s.num_labeled for f, s in matrix.fractions.items()}
    known = all(n is not None for n in counts.values())
    x = {f: float(counts[f]) if known else 1.0 / denominator(f) for f in matrix.fractions}
    lines: dict[str, dict[float, list[float]]] = {}
    for (method, fraction, combo), seeds in by_cell.items():
        label = ", ".join([method, *(f"{a.key}={v}" for a, v in zip(matrix.vary, combo))])
        lines.setdefault(label, {})[x[fraction]] = list(seeds.values())
    if not any(v for series in lines.values() for v in series.values()):
        return None
    ticks = sorted(set(x.values()))
    names = {x[f]: f"{f}\n({counts[f]})" if known else f for f in matrix.fractions}
    return errorbar_plot(lines, path, "labeled images" if known else "labeled share of the pool", "val mIoU (%)",
                         xticks=ticks, xticklabels=[names[t] for t in ticks], logx=len(ticks) > 1, jitter=0.02,
                         title="mean ± sample std over seeds")
