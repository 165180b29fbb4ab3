"""Every relative link in README.md and docs/*.md points at a file or folder that exists, so moving a file
without updating the docs fails here. Links to the web, mailto: links and links within a page (#anchor) are
not checked; a link's own #anchor is dropped before the check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)  # [id]: target
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)  # fenced blocks and inline code

def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that are paths in this repository (code spans are not links)."""
    text = CODE.sub("", text)
    targets = INLINE.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#|//)", t, re.IGNORECASE)]


def test_the_link_finder_finds_links_and_skips_code_the_web_and_anchors():
    text = ('see [a](docs/a.md#part), ![img](img.png "t") and [b][1]\n\n[1]: ../b.md\n'
            "`[not](a-link.md)` [web](https://x.org) [mail](mailto:a@b.c) [here](#top)\n"
            "```\n[code](in/code.md)\n```\n")
    assert relative_links(text) == ["docs/a.md#part", "img.png", "../b.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file(page):
    missing = []
    for target in relative_links(page.read_text()):
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (page.parent / path).resolve()
        if resolved.exists():
            continue
        missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_every_current_results_file_is_in_the_results_index():
    """docs/results.md says of each results file whether it is current; a new file must be added there (the
    archive is listed as a folder, each of its files naming what replaced it on its first line)."""
    index = (ROOT / "docs" / "results.md").read_text()
    results = ROOT / "benchmarks" / "results"
    files = [p.relative_to(results).as_posix() for p in results.rglob("*.md") if "archive" not in p.parts]
    assert files and not [f for f in files if f"../benchmarks/results/{f}" not in index]
    for archived in (results / "archive").glob("*.md"):
        assert "Superseded" in archived.read_text().splitlines()[0], archived.name
