"""`prcl data check`: validate a dataset root and its splits before any training starts.

Every problem is collected (not just the first) with a message that names the file and the fix:
missing folders (and the archive they come from), split entries not found, images without masks,
unreadable or truncated images, masks whose size differs from their image, label values outside
[0, C) ∪ {255}, empty splits, and ids listed in more than one split. Counts per split and the
per-class pixel frequencies are reported as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from prcl import IGNORE_INDEX
from prcl.data.dataset import DataError, Sample
from prcl.data.sources import (
    DatasetInfo, DatasetSource, dataset_info, open_source, parallel_map, resolve_split,
)

PathLike = Union[str, Path]
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # threads: PIL decodes without the GIL
SHOWN = 5  # how many offending names a summary error lists
MASK_MODES = ("P", "L", "I", "I;16")


@dataclass
class SplitReport:
    role: str  # e.g. labeled / unlabeled / val
    source: str  # the list file or standard split it was read from
    labeled: bool
    entries: int = 0
    class_pixels: Optional[np.ndarray] = None  # [C + 1] int64: classes, then ignore (255)


@dataclass
class CheckReport:
    dataset: str
    root: Path
    class_names: tuple[str, ...] = ()
    splits: list[SplitReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_errors: int = 30) -> str:
        """A human-readable report: split counts, class pixel frequencies, notes, errors."""
        lines = [f"dataset {self.dataset} at {self.root} ({len(self.class_names)} classes)"]
        for s in self.splits:
            kind = "labeled" if s.labeled else "unlabeled"
            lines.append(f"  split {s.role:<12} {s.entries:>7} images  {kind:<10}  from {s.source}")
        lines += self._frequency_table()
        lines += [f"note: {n}" for n in self.notes]
        if self.errors:
            lines.append(f"{len(self.errors)} error(s):")
            lines += [f"  - {e}" for e in self.errors[:max_errors]]
            if len(self.errors) > max_errors:
                lines.append(f"  ... and {len(self.errors) - max_errors} more")
        lines.append("FAILED" if self.errors else "OK")
        return "\n".join(lines)

    def _frequency_table(self) -> list[str]:
        """Per-class share of labeled (non-ignore) pixels per split; ignore as share of all."""
        cols = [s for s in self.splits if s.class_pixels is not None and s.class_pixels.sum() > 0]
        if not cols:
            return []
        width = max(len(n) for n in self.class_names + ("ignore (255)",))
        header = " " * (width + 6) + "".join(f"{s.role:>12}" for s in cols)
        lines = ["class pixel frequencies:", header]
        for c, name in enumerate(self.class_names):
            shares = (100 * s.class_pixels[c] / max(1, s.class_pixels[:-1].sum()) for s in cols)
            lines.append(f"  {c:>3} {name:<{width}}" + "".join(f"{v:>11.2f}%" for v in shares))
        shares = (100 * s.class_pixels[-1] / max(1, s.class_pixels.sum()) for s in cols)
        lines.append(f"      {'ignore (255)':<{width}}" + "".join(f"{v:>11.2f}%" for v in shares))
        return lines


def _value_ranges(values: Sequence[int]) -> str:
    """`[0, 1, 2, 5, 255]` -> `0-2, 5, 255`."""
    out, values = [], sorted(values)
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _check_image(path: Path) -> tuple[list[str], Optional[tuple[int, int]]]:
    """Decode the whole image (truncated files fail only then); returns (errors, (W, H))."""
    try:
        with Image.open(path) as img:
            img.load()
            return [], img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return [f"unreadable image {path}: {err}; re-extract it from its archive or drop it "
                "from the split"], None


def _check_mask(path: Path, image: Path, size: Optional[tuple[int, int]],
                info: DatasetInfo) -> tuple[list[str], Optional[np.ndarray]]:
    """Validate mode, size (vs. `image`) and label values; returns (errors, [256] histogram)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in MASK_MODES:
                return [f"mask {path} has mode {img.mode}; expected an index PNG (mode P or L) "
                        "whose pixel values are class ids (convert colour masks to class "
                        "indices)"], None
            raw = np.asarray(img)  # 16-bit masks stay 16-bit: values > 255 are reported
    except (OSError, SyntaxError, ValueError) as err:
        return [f"unreadable mask {path}: {err}; re-extract it or drop it from the split"], None
    errors = []
    if size is not None and (raw.shape[1], raw.shape[0]) != size:
        errors.append(f"mask {path} is {raw.shape[1]}x{raw.shape[0]} but image {image} is "
                      f"{size[0]}x{size[1]}; they must match")
    allowed = info.allowed_raw_labels()
    hist = np.bincount(np.clip(raw, 0, 255).reshape(-1).astype(np.int64), minlength=256)
    bad = set(np.unique(raw[raw > 255]).tolist())  # only possible in 16-bit masks
    bad |= set(np.flatnonzero((hist > 0) & ~allowed).tolist())
    if bad:
        legal = (f"[0, {info.num_classes}) ∪ {{{IGNORE_INDEX}}}" if info.raw_label_values is None
                 else f"the allowed values {_value_ranges(np.flatnonzero(allowed).tolist())}")
        return errors + [f"mask {path} has label values {sorted(bad)[:10]} outside {legal}"], None
    return errors, hist


def check_sample(sample: Sample, labeled: bool,
                 info: DatasetInfo) -> tuple[list[str], Optional[np.ndarray]]:
    """All problems of one sample, and the `[256]` raw-value histogram of its (valid) mask."""
    errors, size = _check_image(sample.image)
    if not labeled or sample.mask is None:
        return errors, None
    if not sample.mask.is_file():
        return errors + [f"image without mask: {sample.image} has no mask {sample.mask}"], None
    mask_errors, hist = _check_mask(sample.mask, sample.image, size, info)
    return errors + mask_errors, hist


def check_training_samples(samples: Sequence[Sample], info: DatasetInfo, *, workers: int = DEFAULT_WORKERS,
                           progress: bool = False) -> list[str]:
    """Every problem of labeled `samples` that `check_dataset` would report (`check_sample`: unreadable
    files, a mask of another size, labels outside [0, C) and 255), each sample checked once, in `workers`
    threads: the trainer's check before its first step (`data.check_masks`)."""
    unique = list(dict.fromkeys(samples))
    results = parallel_map(lambda s: check_sample(s, True, info)[0], unique, workers, progress, "check")
    return [error for errors in results for error in errors]


def _normalise_splits(
    src: DatasetSource, split_files: Union[Mapping[str, PathLike], Sequence[PathLike]]
) -> list[tuple[str, PathLike, bool]]:
    """(role, spec, labeled) triples; `role=path` strings and mappings name the role explicitly."""
    if isinstance(split_files, Mapping):
        items = list(split_files.items())
    else:
        items = []
        for spec in split_files:
            role, sep, path = str(spec).partition("=")
            items.append((role, path) if sep else (Path(spec).stem, spec))
    if not items:
        return [(name, name, labeled) for name, labeled in src.check_splits()]
    roles = [r for r, _ in items]
    return [
        (role if roles.count(role) == 1 else str(spec), spec, "unlabel" not in role.lower())
        for role, spec in items
    ]


def _summarise(kind: str, names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:SHOWN])
    return f"{len(names)} {kind}: {shown}" + (" ..." if len(names) > SHOWN else "")


@dataclass
class _Job:
    """One image to check, with the roles of the splits that list it."""

    sample: Sample
    labeled: bool = False
    roles: set[str] = field(default_factory=set)


def check_dataset(
    dataset: str, root: PathLike,
    split_files: Union[Mapping[str, PathLike], Sequence[PathLike]] = (),
    *, workers: int = 4, progress: bool = False,
) -> CheckReport:
    """Validate `root` as a `dataset` (voc|cityscapes|folder|synthetic) and the given splits.

    `split_files` are list files or standard split names; a plain path gets its file stem as role
    (`labeled.txt` -> labeled), `role=path` names the role. Roles containing "unlabel" are
    checked without masks. With no splits, the dataset's standard ones are checked.
    """
    src = open_source(dataset, root)
    report = CheckReport(dataset, src.root, errors=src.layout_errors())
    if report.errors:
        return report
    try:
        info = dataset_info(dataset, src.root)
    except DataError as err:
        report.errors.append(str(err))
        return report
    report.class_names = info.class_names
    jobs: dict[Path, _Job] = {}
    keys: dict[str, set[str]] = {}
    for role, spec, labeled in _normalise_splits(src, split_files):
        keys[role] = _collect_split(src, role, spec, labeled, report, jobs)
    for (a, keys_a), (b, keys_b) in combinations(keys.items(), 2):
        if keys_a & keys_b:
            overlap = _summarise(f"ids appear in both {a} and {b}", sorted(keys_a & keys_b))
            report.errors.append(f"{overlap}; a split must not overlap another")
    items = list(jobs.values())
    results = parallel_map(lambda j: check_sample(j.sample, j.labeled, info), items, workers,
                           progress, "check")
    lut = info.label_lut if info.label_lut is not None else np.arange(256)
    for job, (errors, hist) in zip(items, results):
        report.errors += errors
        if hist is None:
            continue
        per_class = np.bincount(lut, weights=hist, minlength=256).astype(np.int64)  # [256]
        counts = np.r_[per_class[: info.num_classes], per_class[IGNORE_INDEX]]  # [C + 1]
        for split in report.splits:
            if split.role in job.roles and split.labeled:
                previous = 0 if split.class_pixels is None else split.class_pixels
                split.class_pixels = previous + counts
    return report


def _collect_split(src: DatasetSource, role: str, spec: PathLike, labeled: bool,
                   report: CheckReport, jobs: dict[Path, _Job]) -> set[str]:
    """Resolve one split into `report` (size, bad entries, missing files) and `jobs`; its ids."""
    try:
        split = resolve_split(src, spec)
    except DataError as err:
        report.errors.append(f"split {role}: {err}")
        return set()
    source = str(split.path or f"standard split {spec}")
    report.splits.append(SplitReport(role, source, labeled, len(split.entries)))
    official = src.split_sizes.get(str(spec)) if split.path is None else None
    if official is not None and len(split.entries) != official:
        report.notes.append(f"{spec} has {len(split.entries)} images; the official {src.name} "
                            f"{spec} has {official}")
    ids, missing, repeated = set(), [], []
    for entry in split.entries:
        try:
            key, sample = src.key(entry), src.sample(entry, labeled)
        except DataError as err:
            report.errors.append(f"split {split.name}, {err}")
            continue
        if key in ids:
            repeated.append(key)
        ids.add(key)
        if not sample.image.is_file():
            missing.append(entry.image)
            continue
        job = jobs.setdefault(sample.image, _Job(sample))
        if labeled:
            job.sample, job.labeled = sample, True
        job.roles.add(role)
    if missing:
        found = _summarise(f"entries not found under root {src.root}", missing)
        report.errors.append(f"split {split.name}: {found}")
    if repeated:
        twice = _summarise("ids listed more than once", repeated)
        report.errors.append(f"split {split.name}: {twice}")
    return ids
