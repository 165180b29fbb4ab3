"""The reference of every config key, read from `schema.py`: its type, its default and its meaning.

A key's meaning is the comment after its field in `schema.py`, continued on the comment-only lines right
below it (a blank line or code ends it); a section's is its class docstring. The comments are read with
`tokenize` and the fields with `ast`, so the schema stays the one place keys are documented.
`prcl configs keys` prints the reference, `render_markdown` is `docs/configuration.md`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import yaml

from prcl.config.presets import CONTRASTIVE_FORMS, METHOD_PRESETS

DOC_PATH = "docs/configuration.md"
DOC_COMMAND = f"prcl configs keys --markdown > {DOC_PATH}"  # how the page is regenerated
_NOT_CODE = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the reference shows it."""

    key: str  # dotted, e.g. method.contrastive.vn.num
    type: str  # e.g. int, float or null, [float, float]
    default: Any  # its value when no file or override sets it
    meaning: str  # the comment after its field in the schema; "" = undocumented
    preset: Optional[str] = None  # the key whose preset sets this one's default (method.name, ...form)


@dataclass(frozen=True)
class SectionDoc:
    """The keys declared directly in one config section (a dataclass of the schema)."""

    name: str  # dotted; "" = the top level
    doc: str  # the class docstring
    keys: tuple[KeyDoc, ...]


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """`(class name, field name) -> meaning` for every annotated field of every class in `source`: the
    comment on the field's last line joined with the comment-only lines right below it."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
        elif tok.type not in _NOT_CODE:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            line = stmt.end_lineno or stmt.lineno
            parts = [comments[line]] if line in comments else []
            while parts and line + 1 in comments and line + 1 not in code_lines:  # a continued comment
                line += 1
                parts.append(comments[line])
            out[(node.name, stmt.target.id)] = " ".join(parts)
    return out


def type_name(tp: Any) -> str:
    """An annotation as a config file spells values: `Optional[int]` -> `int or null`, a tuple -> `[..]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(types, "UnionType", ())):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value: Any) -> str:
    """A value as it is written in YAML on one line: null, true, [0.5, 2.0], 5.0e-05."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def preset_keys() -> dict[str, str]:
    """Dotted key -> the preset key whose value sets its default (`presets.py`)."""
    out: dict[str, str] = {}
    for preset in METHOD_PRESETS.values():
        out.update(dict.fromkeys(_flat_keys(preset.settings, "method."), "method.name"))
    for form in CONTRASTIVE_FORMS.values():
        out.update(dict.fromkeys(_flat_keys(form, "method.contrastive."), "method.contrastive.form"))
    return out


def _flat_keys(values: dict, prefix: str) -> Iterator[str]:
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def sections(root: Optional[type] = None, defaults: Any = None, source: Optional[str] = None) -> list[SectionDoc]:
    """Every section of the config `root` (default: `Config`) in schema order, a section before its
    subsections, each with its own keys. `defaults`: the config whose values are shown (default: the
    one `load_config()` builds, with the default method's presets); `source`: the text of `root`'s
    module (default: read from its file)."""
    if root is None:
        from prcl.config.loading import load_config
        from prcl.config.schema import Config

        root, defaults = Config, defaults if defaults is not None else load_config()
    defaults = defaults if defaults is not None else root()
    source = source if source is not None else inspect.getsource(sys.modules[root.__module__])
    out: list[SectionDoc] = []
    _walk(root, defaults, "", field_comments(source), preset_keys(), out)
    return out


def _walk(cls: type, values: Any, prefix: str, comments: dict, presets: dict, out: list[SectionDoc]) -> None:
    hints = typing.get_type_hints(cls)
    keys, subsections = [], []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            subsections.append((tp, getattr(values, f.name), key))
        else:
            meaning = comments.get((cls.__name__, f.name), "")
            keys.append(KeyDoc(key, type_name(tp), getattr(values, f.name), meaning, presets.get(key)))
    out.append(SectionDoc(prefix.rstrip("."), _docstring(cls), tuple(keys)))
    for tp, sub_values, key in subsections:
        _walk(tp, sub_values, key + ".", comments, presets, out)


def _docstring(cls: type) -> str:
    """The class's own docstring; "" for a dataclass without one (its `__doc__` is its generated signature)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc)


def undocumented_keys(docs: list[SectionDoc]) -> list[str]:
    """Keys whose field has no comment in the schema."""
    return [k.key for s in docs for k in s.keys if not k.meaning]


def select(docs: list[SectionDoc], prefix: str) -> list[SectionDoc]:
    """The sections (and keys) at or under `prefix`, a section (`method.contrastive`) or one key
    (`data.root`); "" = all. An unknown prefix is a `ConfigError` suggesting the closest keys."""
    if not prefix:
        return docs
    chosen = [SectionDoc(s.name, s.doc if _under(s.name, prefix) else "",
                         tuple(k for k in s.keys if _under(k.key, prefix)))
              for s in docs]
    chosen = [s for s in chosen if s.keys or (_under(s.name, prefix) and s.name)]
    if not chosen:
        from prcl.config.loading import unknown_key_error

        raise unknown_key_error(prefix, what="config key or section")
    return chosen


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _default_text(k: KeyDoc) -> str:
    return yaml_value(k.default) + (f" (set by {k.preset})" if k.preset else "")


def render_text(docs: list[SectionDoc], width: int = 100) -> str:
    """The reference for a terminal: per section a header, then per key `key (type) = default` and its
    meaning, indented and wrapped."""
    lines: list[str] = []
    for s in docs:
        lines.append(f"[{s.name or 'top level'}]")
        if s.doc:
            lines += textwrap.wrap(" ".join(s.doc.split()), width, initial_indent="  ", subsequent_indent="  ")
        for k in s.keys:
            lines.append(f"{k.key} ({k.type}) = {_default_text(k)}")
            if k.meaning:
                lines += textwrap.wrap(k.meaning, width, initial_indent="    ", subsequent_indent="    ")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(docs: list[SectionDoc]) -> str:
    """`docs/configuration.md`: a short introduction, then one table per section."""
    intro = ("Every key of a run's config: its type, its default and what it does. Set keys in a YAML file "
             "(`prcl train -c FILE`) or as `key=value` overrides; `prcl configs show [-c FILE] [key=value ...]` "
             "prints the resolved config. Defaults marked *set by method.name* (or *method.contrastive.form*) "
             "are that preset's, shown for the default method `prcl`. What a run directory holds, and the "
             "units of its metrics, is described in [`src/prcl/engine/run_dir.py`](../src/prcl/engine/run_dir.py).")
    origin = (f"Generated from the comments in `src/prcl/config/schema.py` by `{DOC_COMMAND}`; "
              "edit those comments, not this page.")
    lines = ["# Configuration keys", "", intro, "", origin]
    for s in docs:
        lines += ["", f"## `{s.name}`" if s.name else "## Top level", ""]
        if s.doc:
            lines += [" ".join(s.doc.split()), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for k in s.keys:
            default = f"`{yaml_value(k.default)}`" + (f" *set by {k.preset}*" if k.preset else "")
            cells = (f"`{k.key}`", k.type, default, k.meaning)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
