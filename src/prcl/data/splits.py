"""Split lists: read the community's list files, generate new ones from a seed, write them.

Two list formats are in common use and both are read here, detected per file:
- ``ids`` (U2PL): one entry per line, a VOC id (``2007_000032``) or a Cityscapes image path
  (``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png``);
- ``pairs`` (UniMatch): ``image_rel mask_rel`` per line.

What an entry means (which image and mask files) is the dataset's business (`voc.py`,
`cityscapes.py`, `folder.py`); this module only knows lines, seeds and class presence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from prcl.data.dataset import DataError, Sample

SPLIT_FORMATS = ("ids", "pairs")
SPLIT_METHODS = ("random", "balanced")


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split list: an image reference and, in the ``pairs`` format, a mask path."""

    image: str
    mask: Optional[str] = None
    line: int = 0  # 1-based line number in its file (0 = not from a file)


@dataclass(frozen=True)
class SplitList:
    """The parsed content of one list file."""

    path: Path
    format: str  # "ids" | "pairs"
    entries: tuple[SplitEntry, ...]


def read_split_file(path: Path) -> SplitList:
    """Parse a U2PL (one field per line) or UniMatch (two fields per line) list file.

    Blank lines and lines starting with ``#`` are skipped. A file mixing one- and two-field
    lines, or with more than two fields on a line, is an error that names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; generate one with `prcl data split`")
    entries = []
    widths = set()
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise DataError(
                f"line {number} of split file {path} has {len(fields)} fields; expected one "
                "(an id or image path, U2PL format) or two (`image mask`, UniMatch format)"
            )
        widths.add(len(fields))
        entries.append(SplitEntry(fields[0], fields[1] if len(fields) == 2 else None, number))
    if not entries:
        raise DataError(f"split file {path} is empty: it lists no images")
    if len(widths) > 1:
        first_other = next(e for e in entries if (e.mask is None) != (entries[0].mask is None))
        raise DataError(
            f"split file {path} mixes one-field and two-field lines (line {entries[0].line} vs "
            f"line {first_other.line}); use one format per file"
        )
    return SplitList(path, "pairs" if 2 in widths else "ids", tuple(entries))


def write_split_file(path: Path, lines: Iterable[str]) -> Path:
    """Write one entry per line (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def missing_files(samples: Sequence[Sample]) -> list[Path]:
    """Images, then masks, named by `samples` that do not exist on disk."""
    missing = [s.image for s in samples if not s.image.is_file()]
    missing += [s.mask for s in samples if s.mask is not None and not s.mask.is_file()]
    return missing


def raise_if_missing(samples: Sequence[Sample], split_name: str, root: Path,
                     shown: int = 5) -> None:
    """Every listed file must exist: name the first missing ones and the root looked in."""
    missing = missing_files(samples)
    if missing:
        names = ", ".join(str(m) for m in missing[:shown])
        more = f" (and {len(missing) - shown} more)" if len(missing) > shown else ""
        raise DataError(
            f"{len(missing)} file(s) listed in split {split_name} are missing under root {root}: "
            f"{names}{more}. Check that the split belongs to this dataset root "
            f"(`prcl data check` lists every problem)"
        )


def class_presence(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """`[N, C]` bool: which classes (ignoring 255) appear in each mask."""
    rows = []
    for mask in masks:
        counts = np.bincount(mask.reshape(-1), minlength=256)[:num_classes]
        rows.append(counts > 0)
    return np.stack(rows) if rows else np.zeros((0, num_classes), dtype=bool)


def class_balanced_choice(presence: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """Choose `num` rows of `presence` ([N, C] bool) greedily so classes keep their proportions.

    Target: class c should appear in ``t_c = max(1, num * f_c)`` chosen images, where f_c is the
    fraction of all N images that contain c (so every class present appears at least once).
    Greedy on the relative squared error ``sum_c ((have_c - t_c) / t_c)^2``: each step adds the
    image that lowers it most, i.e. minimises ``sum_c p_ic (2 (have_c - t_c) + 1) / t_c^2``.
    Rare classes (small t_c) weigh most, so they enter first; overshooting a target is penalised.
    Ties follow a seeded random order, so the result is a function of the seed.
    """
    n_images, _ = presence.shape
    if not 0 <= num <= n_images:
        raise DataError(f"cannot choose {num} labeled images out of {n_images} candidates")
    order = rng.permutation(n_images)
    pres = presence[order].astype(np.float64)  # [N, C] in the seeded tie-break order
    exists = pres.any(axis=0)
    target = np.where(exists, np.maximum(1.0, num * pres.mean(axis=0)), 1.0)  # [C]
    have = np.zeros_like(target)
    free = np.ones(n_images, dtype=bool)
    chosen = []
    for _ in range(num):
        step = pres @ ((2.0 * (have - target) + 1.0) / target**2 * exists)  # [N] error change
        pick = int(np.argmin(np.where(free, step, np.inf)))  # first minimum = earliest in the order
        chosen.append(pick)
        free[pick] = False
        have += pres[pick]
    return np.sort(order[np.asarray(chosen, dtype=np.int64)])


def choose_labeled(
    num_candidates: int,
    num_labeled: int,
    seed: int,
    method: str = "random",
    presence: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Sorted indices of the labeled subset, a pure function of its arguments."""
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r}; choose one of {list(SPLIT_METHODS)}")
    if not 0 < num_labeled <= num_candidates:
        raise DataError(
            f"cannot choose {num_labeled} labeled images out of {num_candidates} candidates"
        )
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(num_candidates, size=num_labeled, replace=False))
    if presence is None or len(presence) != num_candidates:
        raise DataError("the balanced split method needs one class-presence row per candidate")
    return class_balanced_choice(presence, num_labeled, rng)
