"""A markdown table of finished runs: per run, the config keys it changed against a reference run of the same
method and seed, its mIoU and each class's IoU at the end, and the difference to the reference and to a
baseline run of the same seed. For screens of options that `prcl compare` does not lay out (runs named by
hand, several keys changed at once). `--ratios` adds, per class, the lowest `class_balance/prediction_ratio` of
the second half of training (the shrinking warning's statistic; "–" for a run that did not log it) and the
iteration from which the run warns (or would have: runs made before the warning are judged from their logs).

    python benchmarks/run_table.py RUN [RUN ...] --reference DIR --baseline DIR

`--reference DIR` holds the runs with the defaults, named `<method>-s<seed>`; `--baseline DIR` the runs
every row is compared with (e.g. supervised), also named `<method>-s<seed>`, `--baseline-method` picks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import yaml

from prcl.compare.stats import format_mean_std, paired_difference
from prcl.config.loading import from_dict, to_dict
from prcl.data.sources import dataset_info
from prcl.engine.run_dir import CONFIG_FILE, METRICS_LOG, SUMMARY_FILE, TRAIN_LOG, config_differences

IGNORED = {"name", "output_dir", "seed", "method.name"}


def final_metrics(run: Path) -> Optional[dict]:
    """The last evaluation of a finished run (None while it has no summary)."""
    if not (run / SUMMARY_FILE).is_file():
        return None
    return json.loads((run / METRICS_LOG).read_text().splitlines()[-1])


def config_of(run: Path) -> dict:
    return to_dict(from_dict(yaml.safe_load((run / CONFIG_FILE).read_text())))


def prediction_ratio(record: dict, name: str) -> Optional[float]:
    """The record's prediction ratio of a class; from its mean prediction and labeled share where the run
    predates the logged ratio."""
    if f"class_balance/prediction_ratio/{name}" in record:
        return record[f"class_balance/prediction_ratio/{name}"]
    mean, share = record.get(f"class_balance/mean_prediction/{name}"), record.get(f"class_balance/labeled_share/{name}")
    return mean / share if mean is not None and share else None


def lowest_prediction_ratios(run: Path, class_names: list[str], shrink_ratio: float) -> list[str]:
    """Per class, the lowest `class_balance/prediction_ratio/<class>` logged in the second half of training, then
    the first logged iteration of that half where a class was below `shrink_ratio` (when the run warns)."""
    records = [json.loads(line) for line in (run / TRAIN_LOG).read_text().splitlines() if line.strip()]
    last = records[-1]["iteration"] if records else 0
    second_half = [r for r in records if r["iteration"] >= last / 2]
    cells = []
    for name in class_names:
        values = [ratio for r in second_half if (ratio := prediction_ratio(r, name)) is not None]
        cells.append(f"{min(values):.2f}" if values else "–")
    warned = next((r["iteration"] for r in second_half if any(
        (ratio := prediction_ratio(r, name)) is not None and ratio < shrink_ratio for name in class_names)), None)
    return [*cells, "–" if cells.count("–") == len(cells) else str(warned or "no")]


def changed_keys(run: Path, reference: Optional[Path]) -> str:
    if reference is None or not reference.is_dir():
        return "?"
    new, old = config_of(run), config_of(reference)
    keys = [k for k in config_differences(old, new) if k not in IGNORED]
    values = []
    for key in keys:
        value = new
        for part in key.split("."):
            value = value[part]
        values.append(f"`{key}={value}`")
    return ", ".join(values) or "defaults"


def miou(run: Path) -> Optional[float]:
    metrics = final_metrics(run)
    return None if metrics is None else 100 * metrics["miou"]


def print_summary(args: argparse.Namespace) -> int:
    """Rows grouped by method and changed keys: mIoU mean ± sample std over the seeds, and the mean paired
    difference to the defaults and to the baseline with its t (n − 1 degrees of freedom)."""
    groups: dict[tuple[str, str], dict[int, float]] = {}
    for run in (r for r in args.runs if r.is_dir() and final_metrics(r) is not None):
        cfg = config_of(run)
        method, seed = cfg["method"]["name"], cfg["seed"]
        key = (method, changed_keys(run, args.reference / f"{method}-s{seed}"))
        groups.setdefault(key, {})[seed] = miou(run)

    def against(values: dict[int, float], folder: Path, method: str) -> str:
        other = {s: v for s in values if (v := miou(folder / f"{method}-s{s}")) is not None}
        diff = paired_difference(values, other)
        if diff is None:
            return "–"
        t = "" if diff.t is None else f" (t = {diff.t:+.1f})"
        return ", ".join(f"{d:+.2f}" for d in diff.per_seed.values()) + f"; mean {diff.mean:+.2f}{t}"

    header = ["method", "changed keys", "seeds", "mIoU (%)", "Δ defaults per seed", f"Δ {args.baseline_method} per seed"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for (method, keys), values in groups.items():
        print(f"| {method} | {keys} | {', '.join(map(str, values))} | {format_mean_std(list(values.values()), scale=1.0)} | "
              f"{against(values, args.reference, method)} | {against(values, args.baseline, args.baseline_method)} |")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--reference", type=Path, required=True, help="folder of the default runs, <method>-s<seed>")
    p.add_argument("--baseline", type=Path, required=True, help="folder of the baseline runs, <method>-s<seed>")
    p.add_argument("--baseline-method", default="supervised")
    p.add_argument("--ratios", action="store_true", help="add the lowest prediction ratio of the second half per class")
    p.add_argument("--summary", action="store_true",
                   help="one row per method and changed keys: mean ± std over seeds, paired differences with t")
    args = p.parse_args(argv)
    rows, names = [], None
    if args.summary:
        return print_summary(args)
    for run in (r for r in args.runs if r.is_dir()):
        metrics = final_metrics(run)
        if metrics is None:
            print(f"skipped (not finished): {run}", file=sys.stderr)
            continue
        cfg = config_of(run)
        method, seed = cfg["method"]["name"], cfg["seed"]
        names = names or dataset_info(cfg["data"]["dataset"], cfg["data"]["root"]).class_names
        reference = args.reference / f"{method}-s{seed}"
        base = final_metrics(args.baseline / f"{args.baseline_method}-s{seed}")
        ref = final_metrics(reference)
        miou = 100 * metrics["miou"]
        delta = (lambda other: f"{miou - 100 * other['miou']:+.2f}" if other else "–")
        rows.append([method, changed_keys(run, reference), seed, f"{miou:.2f}",
                     *(f"{100 * x:.1f}" for x in metrics["per_class_iou"]), delta(ref), delta(base),
                     *(lowest_prediction_ratios(run, list(names), cfg["method"]["class_balance"]["shrink_ratio"])
                       if args.ratios else [])])
    header = ["method", "changed keys", "seed", "mIoU (%)", *(f"IoU {c}" for c in names or ()), "Δ defaults",
              f"Δ {args.baseline_method}",
              *([*(f"lowest ratio {c}" for c in names or ()), "warns at"] if args.ratios else [])]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
