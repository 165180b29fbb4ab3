"""The matrix of a comparison: methods × label fractions × varied keys × seeds, each cell one `RunSpec`
with a readable name (`classmix-1_16-lambda0_0.25-s2`), every config resolved here, so an unknown method,
a misspelt key or a fraction the dataset lacks stops the comparison before anything runs."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from prcl.compare.label_fractions import LabelSplit, label_splits, parse_fraction
from prcl.compare.runs import RunSpec
from prcl.config import ConfigError, load_config, parse_override
from prcl.methods import METHODS

# Keys a comparison sets itself, and the flag that sets each; the data keys that decide the label splits.
AXIS_KEYS = {"method.name": "--methods", "seed": "--seeds", "data.labeled_split": "--labels",
             "data.unlabeled_split": "--labels", "name": "--out", "output_dir": "--out"}
DATASET_KEYS = ("data.dataset", "data.root", "data.val_split")
RUNS_DIR, LOGS_DIR = "runs", "logs"


@dataclass(frozen=True)
class VaryAxis:
    """`--vary key=v1,v2`: one more axis of the matrix."""

    key: str
    values: tuple[str, ...]  # as written (YAML-parsed by load_config)


@dataclass
class Matrix:
    methods: list[str]
    fractions: dict[str, LabelSplit]
    seeds: list[int]
    vary: list[VaryAxis]
    reference: str
    runs: list[RunSpec]  # seed-major: every cell gets its first seed early
    out: Path


def split_list(text: str) -> list[str]:
    """`a,b,[1,2]` -> ["a", "b", "[1,2]"]: commas inside brackets or braces stay."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def parse_vary(text: str) -> VaryAxis:
    if "=" not in text:
        raise ConfigError(f"--vary {text!r} must look like KEY=V1,V2, e.g. --vary train.iterations=400,1600")
    key, values = text.split("=", 1)
    key = key.strip()
    if key in AXIS_KEYS:
        raise ConfigError(f"--vary {key}: {key} is an axis of its own; use {AXIS_KEYS[key]}")
    if key in DATASET_KEYS:
        raise ConfigError(f"--vary {key}: a comparison runs on one dataset; set {key} once (key=value)")
    parsed = split_list(values)
    if not parsed:
        raise ConfigError(f"--vary {key}= lists no values")
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"--vary {key} repeats a value: {', '.join(parsed)}")
    return VaryAxis(key, tuple(parsed))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def run_name(method: str, fraction: str, vary: Sequence[tuple[VaryAxis, str]], seed: int) -> str:
    """`method-fraction[-key_value...]-s<seed>`, the key shortened to its last part unless two varied keys
    share it."""
    lasts = [axis.key.rsplit(".", 1)[-1] for axis, _ in vary]
    parts = [method, fraction]
    for (axis, value), last in zip(vary, lasts):
        parts.append(f"{_safe(last if lasts.count(last) == 1 else axis.key)}_{_safe(value)}")
    return "-".join(parts + [f"s{seed}"])


def build_matrix(methods: Sequence[str], fractions: Sequence[str], seeds: Sequence[int],
                 vary: Sequence[str] = (), overrides: Sequence[str] = (), config_file: Optional[Path] = None,
                 out: Path = Path("compare"), reference: Optional[str] = None, split_seed: int = 0,
                 generate_data: bool = True) -> Matrix:
    """Every run of the comparison, its config resolved (`ConfigError`/`DataError` on bad input); the label
    splits read or made (`label_fractions`), the built-in dataset generated first if `generate_data`."""
    methods, seeds = list(dict.fromkeys(methods)), list(dict.fromkeys(seeds))
    fractions = [parse_fraction(f) for f in dict.fromkeys(fractions)]
    if not methods or not fractions or not seeds:
        raise ConfigError("a comparison needs at least one method (--methods), label fraction (--labels) and seed")
    for text in overrides:
        key, _ = parse_override(text)
        if key in AXIS_KEYS:
            raise ConfigError(f"{text}: {key} is set by the comparison; use {AXIS_KEYS[key]}")
    axes = [parse_vary(v) for v in vary]
    if len({a.key for a in axes}) != len(axes):
        raise ConfigError("--vary names the same key twice; give all its values in one --vary KEY=V1,V2")
    for axis in axes:
        if any(parse_override(o)[0] == axis.key for o in overrides):
            raise ConfigError(f"{axis.key} is both varied (--vary) and set (key=value); keep one")
    for method in methods:  # unknown methods and keys before any split is written
        base = load_config(config_file, [*overrides, f"method.name={method}"])
    for axis in axes:
        for value in axis.values:
            load_config(config_file, [*overrides, f"method.name={methods[0]}", f"{axis.key}={value}"])
    reference = reference or ("supervised" if "supervised" in methods else methods[0])
    if reference not in methods:
        raise ConfigError(f"--reference {reference} is not one of the compared methods ({', '.join(methods)})")
    splits = label_splits(base, fractions, out, split_seed, generate_data)
    for method in methods:
        needs_unlabeled = method in METHODS and METHODS[method].uses_unlabeled
        for fraction, split in splits.items():
            if needs_unlabeled and split.unlabeled is None:
                raise ConfigError(f"{method} needs unlabeled images but label fraction {fraction} leaves none; "
                                  "compare it at a smaller fraction (supervised alone can train on `full`)")
    runs, names = [], set()
    combos = list(itertools.product(*[[(a, v) for v in a.values] for a in axes]))
    for seed, method, fraction, combo in itertools.product(seeds, methods, fractions, combos):
        name = run_name(method, fraction, combo, seed)
        if name in names:
            raise ConfigError(f"two runs would share the name {name}; give --vary values that differ in letters "
                              "or digits")
        names.add(name)
        axis_overrides = [f"method.name={method}", *splits[fraction].overrides(),
                          *(f"{a.key}={v}" for a, v in combo), f"seed={seed}"]
        runs.append(RunSpec.create(
            name, out / RUNS_DIR, [*overrides, *axis_overrides], config_file, out / LOGS_DIR / f"{name}.log",
            {"method": method, "labels": fraction, **{a.key: v for a, v in combo}, "seed": seed}))
    return Matrix(methods, splits, seeds, axes, reference, runs, out)
