"""What `paper_tables.py` reads from a finished run besides its summary: the method state's size in the last
checkpoint, and summaries of the gradient and reliability diagnostics in `train_log.jsonl`."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Optional

import torch

RELIABILITY_COLUMNS = {  # train_log key -> column: the second half of training, mean over diagnostics and seeds
    "reliability/confident/wrong_fraction": "wrong pseudo-labels (confident)",
    "reliability/confident/auroc_within_class": "AUROC σ² flags wrong, within class (confident)",
    "reliability/anchors/auroc_within_class": "same, anchors",
    "reliability/confident/var_wrong": "σ² wrong",
    "reliability/confident/var_right": "σ² right",
    "reliability/anchors/grad_wrong": "∂Lc/∂σ² wrong anchors",
    "reliability/anchors/grad_right": "∂Lc/∂σ² right anchors",
    "contrastive/vn_spread": "VN spread (per-pixel std; min over the run)",
}


def method_state_bytes(run: Path) -> int:
    """Bytes of the method's state (prototypes, GDP, memory bank) in the run's last checkpoint."""
    path = run / "checkpoints" / "last.pt"
    return _state_bytes(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _state_bytes(path: str, mtime_ns: int) -> int:  # cached: the table is rewritten after every run
    state = torch.load(path, map_location="cpu", weights_only=True)
    return sum(t.numel() * t.element_size() for t in state["method"].values() if torch.is_tensor(t))


def read_analysis(run: Path) -> Optional[dict]:
    """The run's entry in `analysis/metrics.json` (`prcl analyze`), or None before it is analysed."""
    path = run / "analysis" / "metrics.json"
    return json.loads(path.read_text())["runs"][0] if path.is_file() else None


def _records(run: Path) -> Optional[list[dict]]:
    path = run / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else None


def gradient_summary(run: Path) -> Optional[dict[str, float]]:
    """From a run's train_log.jsonl: over the gradient diagnostics of the first half of training (where
    λc(t) still matters), the mean of the contrastive term's trunk gradient through μ with λc divided out
    (the cosine Baseline has only that path), the μ share of the term's trunk gradient, and the term's
    gradient relative to the supervised term's; at the end, the mean σ² and Lc / log(keys)."""
    records = _records(run)
    if records is None:
        return None
    diag = [r for r in records if "grad/contrastive" in r and r.get("contrastive/lambda")]
    if not diag:
        return None
    first = [r for r in diag if r["iteration"] <= records[-1]["iteration"] / 2] or diag[:1]
    mu = [r.get("grad/contrastive.mu", r["grad/contrastive"]) / r["contrastive/lambda"] for r in first]
    share = [r.get("grad/contrastive.mu", r["grad/contrastive"]) / max(
        r.get("grad/contrastive.mu", r["grad/contrastive"]) + r.get("grad/contrastive.var", 0.0), 1e-30) for r in first]
    rel = [r["grad/contrastive"] / r["grad/sup"] for r in first if r.get("grad/sup")]
    last = [r for r in records if "contrastive/loss" in r][-1]
    return {"mu": statistics.mean(mu), "share": statistics.mean(share), "rel": statistics.mean(rel),
            "var": last.get("contrastive/mean_var", 0.0),
            "sat": last["contrastive/loss"] / last["contrastive/uniform_loss"] if last.get("contrastive/uniform_loss") else 0.0}


def reliability_summary(run: Path) -> dict[str, float]:
    """Means of RELIABILITY_COLUMNS over the diagnostics of the second half of training (the VN spread: its min)."""
    records = _records(run)
    if records is None:
        return {}
    late = [r for r in records if "grad/sup" in r and r["iteration"] > records[-1]["iteration"] / 2]
    out = {k: statistics.mean(r[k] for r in late if k in r) for k in RELIABILITY_COLUMNS
           if k != "contrastive/vn_spread" and any(k in r for r in late)}
    spread = [r["contrastive/vn_spread"] for r in records if "contrastive/vn_spread" in r]
    if any(spread):  # 0 throughout: a run without VNs
        out["contrastive/vn_spread"] = min(spread)
    return out
