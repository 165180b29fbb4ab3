"""The docs name what exists: every config key written in docs/*.md (`section.key`, in code) is a key of the
schema, and docs/methods.md has a row for every `method.name` and no row for a method that is gone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from prcl.config import Config
from prcl.config.presets import METHOD_PRESETS

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name)))
KEY = re.compile(rf"(?<![\w./])(?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
MISSPELT_ON_PURPOSE = {"data.crop_sise"}  # own-data.md's example of the error a misspelt key gives
CODE = re.compile(r"^```.*?^```|`[^`\n]+`", re.MULTILINE | re.DOTALL)


def is_config_key(key: str) -> bool:
    node: object = Config()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return True


def test_the_key_check_tells_keys_from_misspellings():
    assert is_config_key("method.contrastive.vn.source") and is_config_key("data.crop_size")
    assert not is_config_key("data.crop_sise") and not is_config_key("method.contrastive.vn.sauce")
    assert KEY.findall("`prcl train data.crop_size=256 x.model.rep_head` and model.weights=PATH") == [
        "data.crop_size", "model.weights"]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_config_key_the_docs_name_exists(page):
    keys = {k for span in CODE.findall(page.read_text()) for k in KEY.findall(span)} - MISSPELT_ON_PURPOSE
    assert not sorted(k for k in keys if not is_config_key(k)), f"{page.name} names keys the schema does not have"


def test_methods_page_has_a_row_for_each_method_and_only_those():
    rows = re.findall(r"^\| `(\w+)` \|", (DOCS / "methods.md").read_text(), re.MULTILINE)
    assert sorted(rows) == sorted(METHOD_PRESETS)
