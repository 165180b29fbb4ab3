"""Analysis of trained runs: representation quality (Table 4) and the paper's figures (Figs. 4-9).

Exports are loaded lazily so that `prcl` starts without importing matplotlib and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnalysisError": "prcl.analysis.errors",
    "analyze_run": "prcl.analysis.report",
    "add_analyze_command": "prcl.analysis.cli",
    "representation_quality": "prcl.analysis.embedding",
    "sample_per_class": "prcl.analysis.embedding",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prcl.analysis' has no attribute {name!r}")
