"""The error `prcl analyze` raises for unusable run files; the message names the file and the fix."""

from __future__ import annotations


class AnalysisError(ValueError):
    """A run, log or prototype-trajectory file that cannot be analysed."""
