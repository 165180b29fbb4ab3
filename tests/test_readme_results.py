"""The README's results table is what `benchmarks/readme_results.py` reads from the results files: a number
changed in one place only fails here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_equals_the_results_files():
    assert _generator().main(["--check"]) == 0, "run: python benchmarks/readme_results.py"


def test_a_cell_is_the_row_of_its_method_and_fraction_under_its_section():
    gen = _generator()
    text = ("# t\n\n## Other\n\n| row | labels | mIoU (%) |\n| --- | --- | --- |\n| prcl | 1_4 | 1.00 ± 0.10 |\n\n"
            "## Main\n\nprose\n\n| row | labels | mIoU (%) |\n| --- | --- | --- |\n| prcl | 1_4 | 2.00 ± 0.20 |\n"
            "| prcl | 1_16 | 3.00 ± 0.30 (n = 3) |\n\n## Next\n")
    rows = gen.section_table(text, "Main")
    assert [r["mIoU (%)"] for r in rows] == ["2.00 ± 0.20", "3.00 ± 0.30 (n = 3)"]
    with pytest.raises(KeyError, match="no section 'Missing'"):
        gen.section_table(text, "Missing")


def test_the_check_fails_when_the_readme_was_edited_by_hand(tmp_path, monkeypatch):
    gen = _generator()
    readme = tmp_path / "README.md"
    readme.write_text(gen.README.read_text().replace(" ± ", " +- ", 1))
    monkeypatch.setattr(gen, "README", readme)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0  # writing it repairs it
