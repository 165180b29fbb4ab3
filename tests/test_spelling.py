"""One spelling of "labeled" across the project: the config keys (`data.labeled_split`) and the split
files the community shares (U2PL's and UniMatch's `labeled.txt`) use the American form."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRITISH = re.compile("label" + "l(ed|ing)", re.IGNORECASE)  # split so that this file passes its own test


def test_one_spelling_of_labeled():
    files = [p for d in ("src", "tests", "docs", "benchmarks", "configs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".yaml", ".txt") and p.is_file()] + [ROOT / "README.md"]
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in files
                 for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1) if BRITISH.search(line)]
    assert not offenders, "use 'labeled'/'labeling' (the config keys' spelling): " + ", ".join(offenders[:20])
