"""The class balance of a run's pseudo-labels in `prcl analyze` (issue #35), read from `train_log.jsonl`: per
class, the labeler's mean probability and the share of confident pseudo-labels against the labeled share, the
pseudo-labels' recall and precision where the unlabeled images' masks were known, and the run's warnings about
shrinking classes (the figure is `figures.plot_class_balance`)."""

from __future__ import annotations

from typing import Optional, Sequence


from prcl.analysis.figures import RunLogs, series

TAIL = 0.25
"""Recall and precision are averaged over the last quarter of the logged records (one step each: noisy)."""


def class_balance_summary(train_log: list[dict], class_names: Sequence[str]) -> Optional[dict]:
    """Per class at the last logged record: labeled share, mean prediction and its ratio, shrinking (0/1),
    confident share and its ratio, starved (0/1); the mean
    recall and precision of the confident pseudo-labels over the last `TAIL` of the records that have them; and
    every warning the run logged. None for a run that logged no class balance (supervised, older runs)."""
    last = next((r for r in reversed(train_log) if any(k.startswith("class_balance/") for k in r)), None)
    if last is None:
        return None
    classes = {}
    for name in class_names:
        row = {k: last.get(f"class_balance/{k}/{name}") for k in (
            "labeled_share", "mean_prediction", "prediction_ratio", "shrinking", "confident_share", "ratio", "starved")}
        for kind in ("recall", "precision"):
            _, values = series(train_log, f"reliability/pseudo_{kind}/{name}")
            tail = values[int(len(values) * (1 - TAIL)):]
            row[kind] = float(tail.mean()) if tail.size else None
        classes[name] = row
    warnings = [w for r in train_log for w in r.get("warnings", [])]
    return {"iteration": last["iteration"], "classes": classes, "warnings": warnings}


def has_class_balance(runs: Sequence[RunLogs]) -> bool:
    return any(k.startswith("class_balance/") for run in runs for r in run.train_log for k in r)
