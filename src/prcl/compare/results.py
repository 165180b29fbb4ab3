"""The results of a comparison's runs: collected from their `summary.json` (only runs finished under the
config asked for now) and written one row per run to `results.csv`. mIoU stays a fraction (0..1) here,
as `summary.json` stores it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from prcl.compare.matrix import Matrix
from prcl.compare.runs import RunSpec, RunState, plan_run, read_summary
from prcl.engine.run_dir import METRICS_LOG

MODELS = ("student", "teacher")  # the models a run evaluates (`summary.json` `miou_by_model`)


@dataclass
class RunResult:
    spec: RunSpec
    num_labeled: Optional[int]
    summary: Optional[dict[str, Any]] = None  # None: not finished under the asked config
    failed: bool = False  # failed in this call

    @property
    def status(self) -> str:
        return "finished" if self.summary is not None else "failed" if self.failed else "not finished"

    @property
    def miou(self) -> Optional[float]:
        return None if self.summary is None else self.summary["miou"]

    @property
    def per_class_iou(self) -> Optional[list[float]]:
        """The reported model's IoU per class at the end (the last record of `metrics.jsonl`)."""
        return None if self.summary is None else final_per_class_iou(self.spec.run_dir)


def final_per_class_iou(run_dir: Path) -> Optional[list[float]]:
    """`per_class_iou` of the last evaluation in a run's `metrics.jsonl` (fractions 0..1), or None."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records[-1].get("per_class_iou") if records else None


def collect(matrix: Matrix, failed: Sequence[str] = ()) -> list[RunResult]:
    """Every run of the matrix with its summary if it finished under the asked config; `failed` names the
    runs that failed in this call."""
    results = []
    for spec in matrix.runs:
        done = plan_run(spec).state is RunState.DONE
        results.append(RunResult(spec, matrix.fractions[spec.axes["labels"]].num_labeled,
                                 read_summary(spec.run_dir) if done else None, spec.name in failed))
    return results


def sort_key(matrix: Matrix, result: RunResult) -> tuple:
    """Method, fraction and varied values in the order given, then the seed."""
    axes = result.spec.axes
    return (matrix.methods.index(axes["method"]), list(matrix.fractions).index(axes["labels"]),
            *(a.values.index(axes[a.key]) for a in matrix.vary), axes["seed"])


def csv_rows(matrix: Matrix, results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: sort_key(matrix, r)):
        summary = r.summary or {}
        by_model = summary.get("miou_by_model", {})
        rows.append({
            "run": r.spec.name, "method": r.spec.axes["method"], "labels": r.spec.axes["labels"],
            "num_labeled": r.num_labeled, **{a.key: r.spec.axes[a.key] for a in matrix.vary},
            "seed": r.spec.axes["seed"], "status": r.status, "miou": summary.get("miou"),
            "reported_model": summary.get("evaluated_model"),
            **{f"miou_{m}": by_model.get(m) for m in MODELS}, "best_miou": summary.get("best_miou"),
            "iterations": summary.get("iterations"), "wall_seconds": summary.get("wall_seconds"),
            "run_dir": str(r.spec.run_dir),
        })
    return rows


def write_csv(matrix: Matrix, results: Sequence[RunResult], path: Path) -> Path:
    """`results.csv`: one row per run (its axes, seed, status, mIoU of the reported model and of each model
    as fractions 0..1, wall seconds, run directory); empty cells where a run has no value."""
    rows = csv_rows(matrix, results)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path
