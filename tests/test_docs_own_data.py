"""docs/own-data.md cannot drift: its `bash` and `python` blocks run, in order, on a small generated folder
dataset (a block right after a `<!-- docs-test: skip ... -->` comment is only shown).

The blocks run verbatim in a temporary folder holding `mydata/` and `new_photos/`, with `prcl` on the PATH as
a script that runs `python -m prcl` of this checkout and appends overrides to `prcl train` that make it
train a tiny model for two iterations. A fast test parses every `prcl` command of the page with the CLI's own
parser and every `prcl train` line's overrides with the config loader."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prcl
from fixtures_own_data import CLASSES, TINY_TRAINING, make_own_data, picture

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
SKIP_MARKER = "<!-- docs-test: skip"
RUN_LANGUAGES = ("bash", "python")


def page_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown page in `RUN_LANGUAGES`, in order, except those
    right after a skip marker."""
    blocks, lines, i = [], text.splitlines(), 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            previous = lines[i] if lines[i].strip() else previous
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence[1] in RUN_LANGUAGES and not previous.strip().startswith(SKIP_MARKER):
            blocks.append((fence[1], "\n".join(lines[i + 1:end]) + "\n"))
        previous, i = lines[end], end + 1
    return blocks


def prcl_commands(bash: str) -> list[list[str]]:
    """The argument lists of the `prcl ...` commands of a bash block (continuation lines joined, shell variables
    given a sample value, globs left as they are)."""
    joined = re.sub(r"\\\n\s*", " ", bash)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("prcl "):
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: {"method": "prcl"}.get(m[1], "0"), line)
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_page_has_the_blocks_the_tests_expect():
    blocks = page_blocks(PAGE.read_text())
    languages = [language for language, _ in blocks]
    assert languages.count("bash") >= 7 and languages.count("python") >= 2, languages
    commands = [c for language, code in blocks if language == "bash" for c in prcl_commands(code)]
    assert {c[0] for c in commands} >= {"data", "train", "eval", "predict"}


def test_every_prcl_command_of_the_page_parses_and_its_overrides_are_config_keys():
    from prcl.cli import build_parser
    from prcl.config import load_config

    parser = build_parser()
    for language, code in page_blocks(PAGE.read_text()):
        for args in prcl_commands(code) if language == "bash" else []:
            parsed = parser.parse_args(args)
            if args[0] == "train":
                load_config(parsed.config, parsed.overrides)  # unknown keys and bad values are errors


def prcl_on_path(folder: Path) -> dict[str, str]:
    """An environment whose `prcl` is this checkout's `python -m prcl`, `prcl train` made tiny."""
    threads = os.environ.get("PRCL_TEST_THREADS", "2")
    tiny = " ".join(shlex.quote(o) for o in [*TINY_TRAINING, f"train.threads={threads}"])
    script = folder / "prcl"
    script.write_text(f'#!/bin/sh\nif [ "$1" = train ]; then exec {shlex.quote(sys.executable)} -m prcl "$@" {tiny}; fi\n'
                      f'exec {shlex.quote(sys.executable)} -m prcl "$@"\n')
    script.chmod(0o755)
    src = str(Path(prcl.__file__).resolve().parents[1])
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": threads,
            "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}


@pytest.mark.slow
def test_every_block_of_the_page_runs_on_a_small_dataset(tmp_path):
    make_own_data(tmp_path / "mydata", labeled=60, unlabeled=10, suffix=".jpg")
    (tmp_path / "new_photos").mkdir()
    rng = np.random.default_rng(7)
    for name in ("0001.jpg", "0002.jpg"):
        Image.fromarray(picture(rng, (48, 60))[0]).save(tmp_path / "new_photos" / name)
    (tmp_path / "bin").mkdir()
    env = prcl_on_path(tmp_path / "bin")
    for n, (language, code) in enumerate(page_blocks(PAGE.read_text())):
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"block {n} ({language}) of {PAGE.name} failed:\n{code}\n{done.stdout}\n{done.stderr}"

    for run in ("mydata-prcl", "mydata-prcl-256", *(f"mydata-{m}-s{s}" for m in ("supervised", "prcl") for s in range(3))):
        assert (tmp_path / "runs" / run / "summary.json").is_file(), run
    with Image.open(tmp_path / "predictions" / "0001.png") as mask:
        palette = np.array(mask.getpalette()[:9]).reshape(3, 3)
    assert palette.tolist() == [list(c) for _, c in CLASSES]  # the class file's colours, not VOC's
    assert (tmp_path / "predictions" / "0002_overlay.jpg").is_file() and (tmp_path / "0001_mask.png").is_file()
