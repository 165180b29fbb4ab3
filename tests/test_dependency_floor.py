"""The declared floors of torch / torchvision / timm cover the APIs `src/prcl` uses.

No test here runs the floor versions (their CUDA wheels are gigabytes); instead `API_ADDED_IN` lists
the APIs that set or threaten a floor with the release that added them, checked by reading that
release's sources (docs/development.md, "Dependencies and why"), and the test fails if `src/` uses one of them
while pyproject.toml declares an older floor. A denylist, not a proof: an API missing from the
table is not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (regex over src/prcl, package, first release that has it)
API_ADDED_IN = [
    (r"\bget_total_norm\b", "torch", "2.6"),
    (r"\bclip_grads_with_norm_\b", "torch", "2.6"),
    (r"\btorch\.accelerator\b", "torch", "2.6"),
    (r"\bset_stance\b", "torch", "2.6"),
    (r"\bflex_attention\b", "torch", "2.5"),
    (r"\bserialization\.safe_globals\b", "torch", "2.5"),
    (r"\badd_safe_globals\b", "torch", "2.4"),
    (r"\btorch\.amp\.GradScaler\b", "torch", "2.3"),
    (r"\bv2\.query_size\b", "torchvision", "0.20"),  # in 0.19 only the private v2._utils.query_size
    (r"\btv_tensors\b", "torchvision", "0.16"),
    (r'kwargs\["channels"\]', "timm", "1.0.8"),  # ResNet(channels=...): absent in 1.0.7, present in 1.0.8
    (r"\bpretrained_cfg_overlay\b", "timm", "1.0"),
]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def declared_floors() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    return dict(re.findall(r'"(torch|torchvision|timm)>=([0-9.]+)', text))


def test_floors_are_declared_as_ranges():
    floors = declared_floors()
    assert set(floors) == {"torch", "torchvision", "timm"}
    text = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'"(torch|torchvision|timm)\s*==', text), "a floor, not a pin"


def test_src_uses_no_api_newer_than_the_declared_floor():
    floors = declared_floors()
    sources = {p: p.read_text() for p in (ROOT / "src" / "prcl").rglob("*.py")}
    too_new = [
        f"{path.relative_to(ROOT)}: {pattern} needs {package}>={added} (floor {floors[package]})"
        for pattern, package, added in API_ADDED_IN
        for path, text in sources.items()
        if version(added) > version(floors[package]) and re.search(pattern, text)
    ]
    assert not too_new, "\n".join(too_new)


def test_custom_v2_transforms_keep_the_names_of_the_torchvision_floor():
    """torchvision 0.21 renamed Transform._get_params/_transform to make_params/transform; a transform
    written with the new names needs the old ones as aliases to run on the 0.20 floor."""
    for path in (ROOT / "src" / "prcl").rglob("*.py"):
        text = path.read_text()
        if "def make_params" in text or re.search(r"def transform\(self, inpt", text):
            assert "_get_params = make_params" in text and "_transform = transform" in text, path
