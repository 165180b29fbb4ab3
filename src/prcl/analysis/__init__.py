"""Analysis of trained runs: representation quality (Table 4) and the paper's figures (Figs. 4-9)."""

from __future__ import annotations

from prcl.analysis.cli import add_analyze_command
from prcl.analysis.embedding import representation_quality, sample_per_class
from prcl.analysis.errors import AnalysisError
from prcl.analysis.report import analyze_run

__all__ = ["AnalysisError", "analyze_run", "add_analyze_command", "representation_quality", "sample_per_class"]
