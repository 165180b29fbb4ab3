"""Dataset sources: class names, label remapping and split lists -> `Sample`s.

Every source ends in the same `SegmentationDataset`; this module only knows where files live.
A split is named either by a list file (absolute, or relative to the dataset root, or to the
working directory) or by a standard split of the dataset (`val`, `train`, `train_aug`, ...).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, TypeVar, Union

import numpy as np

from prcl import IGNORE_INDEX
from prcl.data.cityscapes import CityscapesSource
from prcl.data.dataset import DataError, Sample, load_mask
from prcl.data.folder import FolderSource
from prcl.data.splits import (
    SplitEntry, SplitList, choose_labeled, class_presence, file_sha256, raise_if_missing,
    read_split_file, write_split_file,
)
from prcl.data.voc import VOC_CLASSES, VocSource

__all__ = [
    "VOC_CLASSES", "DatasetInfo", "DatasetSource", "ResolvedSplit", "GeneratedSplit", "SOURCES", "SplitNotFoundError",
    "open_source", "dataset_info", "resolve_split", "split_samples", "load_split", "copy_split", "generate_split",
    "write_generated_split", "parallel_map", "read_list_file", "voc_samples",
]

PathLike = Union[str, Path]
T = TypeVar("T")
R = TypeVar("R")


class DatasetSource(Protocol):
    """What `voc.py`, `cityscapes.py`, `folder.py` provide (duck-typed)."""

    name: str
    root: Path
    class_names: tuple[str, ...]
    colors: Optional[np.ndarray]  # [C, 3] uint8, None = VOC palette
    label_lut: Optional[np.ndarray]  # [256] uint8 raw mask value -> class index (None = identity)
    raw_label_values: Optional[tuple[int, ...]]  # values allowed in raw masks when a LUT is used
    split_sizes: Mapping[str, int]  # official sizes of the standard splits
    schemes: Mapping[str, tuple[str, str]]  # scheme -> (labeled pool, unlabeled pool)
    val_split: Optional[str]

    def layout_errors(self) -> list[str]: ...
    def origin(self, folder: str) -> str: ...
    def standard_splits(self) -> tuple[str, ...]: ...
    def standard_entries(self, name: str) -> list[SplitEntry]: ...
    def check_splits(self) -> tuple[tuple[str, bool], ...]: ...
    def key(self, entry: SplitEntry) -> str: ...
    def sample(self, entry: SplitEntry, labeled: bool = True) -> Sample: ...
    def line(self, entry: SplitEntry, fmt: str = "ids") -> str: ...


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """What the trainer needs to know about a dataset besides its files.

    `label_lut` is the one remapping applied to every mask that `load_split` returns for the same
    root (Cityscapes labelIds -> trainIds; None when masks already hold class indices).
    """

    name: str
    class_names: tuple[str, ...]
    label_lut: Optional[np.ndarray] = None  # 256-entry uint8 table applied to raw mask values
    colors: Optional[np.ndarray] = None  # [C, 3] uint8 display colours; None = VOC palette
    raw_label_values: Optional[tuple[int, ...]] = None  # allowed raw values when a LUT is used

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def allowed_raw_labels(self) -> np.ndarray:
        """`[256]` bool: which raw mask values are legal (default: [0, C) and 255)."""
        allowed = np.zeros(256, dtype=bool)
        if self.raw_label_values is not None:
            allowed[list(self.raw_label_values)] = True
        else:
            allowed[: self.num_classes] = True
        allowed[IGNORE_INDEX] = True
        return allowed


class SyntheticSource(VocSource):
    """The built-in procedural dataset (`prcl.data.synthetic`), written in the VOC layout."""

    name = "synthetic"
    schemes = {"train": ("train", "train")}
    split_sizes: dict[str, int] = {}

    @property  # type: ignore[override]
    def class_names(self) -> tuple[str, ...]:
        from prcl.data.synthetic import CLASS_NAMES

        return tuple(CLASS_NAMES)

    def origin(self, folder: str) -> str:
        return f"generate the dataset with `prcl data synth --out {self.root}`"

    def layout_errors(self) -> list[str]:
        errors = super().layout_errors()
        if not errors and not (self.root / "meta.json").is_file():
            errors.append(f"meta.json is missing under {self.root}: the synthetic dataset is "
                          f"incomplete; {self.origin('')}")
        return errors


SOURCES: dict[str, Callable[[Path], DatasetSource]] = {
    "voc": VocSource,
    "cityscapes": CityscapesSource,
    "folder": FolderSource,
    "synthetic": SyntheticSource,
}


def open_source(name: str, root: PathLike) -> DatasetSource:
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name](Path(root))


def dataset_info(name: str, root: PathLike) -> DatasetInfo:
    return source_info(open_source(name, root))


def source_info(src: DatasetSource) -> DatasetInfo:
    return DatasetInfo(src.name, tuple(src.class_names), src.label_lut, src.colors, src.raw_label_values)


@dataclass(frozen=True)
class ResolvedSplit:
    """A split's entries and where they came from (a list file, or a standard split name)."""

    name: str  # how to refer to it in messages
    entries: tuple[SplitEntry, ...]
    path: Optional[Path] = None  # the list file, None for a standard split
    format: str = "ids"
    standard: Optional[str] = None  # the standard split's name, None for a list file


class SplitNotFoundError(DataError):
    """A split names no list file and no standard split; `looked` says which files were tried."""

    def __init__(self, message: str, looked: str = "") -> None:
        super().__init__(message)
        self.looked = looked


def resolve_split(src: DatasetSource, spec: PathLike) -> ResolvedSplit:
    """A list file (absolute, relative to the root, or to the working directory) or a standard
    split name of the dataset (`val`, `train`, ...)."""
    path = Path(spec)
    candidates = [path] if path.is_absolute() else [src.root / path, path]
    for candidate in candidates:
        if candidate.is_file():
            parsed: SplitList = read_split_file(candidate)
            return ResolvedSplit(str(candidate), parsed.entries, candidate, parsed.format)
    if str(spec) in src.standard_splits():
        entries = src.standard_entries(str(spec))
        if not entries:
            raise DataError(f"standard split {spec!r} of {src.name} under {src.root} is empty")
        return ResolvedSplit(f"{spec!r} of {src.name} under {src.root}", tuple(entries), standard=str(spec))
    looked = " and ".join(str(c.absolute()) for c in candidates)
    raise SplitNotFoundError(
        f"split {str(spec)!r} is neither a list file (looked for {looked}) nor a standard split "
        f"of {src.name} ({', '.join(src.standard_splits()) or 'none found'}); "
        "generate one with `prcl data split`",
        looked=looked,
    )


def entry_samples(src: DatasetSource, split: ResolvedSplit, labeled: bool) -> list[Sample]:
    """Map entries to files; a malformed entry raises an error naming the split file and line."""
    try:
        return [src.sample(e, labeled) for e in split.entries]
    except DataError as err:
        raise DataError(f"split {split.name}, {err}") from err


def split_samples(src: DatasetSource, split: ResolvedSplit, labeled: bool = True) -> list[Sample]:
    """The samples of a resolved split; every listed image (and mask, if `labeled`) must exist."""
    samples = entry_samples(src, split, labeled)
    raise_if_missing(samples, split.name, src.root)
    return samples


def load_split(name: str, root: PathLike, split_file: PathLike, *,
               labeled: bool = True) -> list[Sample]:
    """The samples of a split; every listed image (and mask, if `labeled`) must exist.

    Masks keep their raw encoding: read them with `dataset_info(name, root).label_lut`.
    """
    src = open_source(name, root)
    return split_samples(src, resolve_split(src, split_file), labeled)


def copy_split(src: DatasetSource, splits: Mapping[str, ResolvedSplit], dest_dir: PathLike) -> dict[str, Path]:
    """Save the splits a run used (resolved once, when its data was built) to `dest_dir` (e.g.
    `runs/<name>/split/`) as `<role>.txt`.

    List files are copied byte for byte; standard splits are written one entry per line. A
    `manifest.json` records where each came from, its size and SHA-256.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written, manifest = {}, {}
    for role, split in splits.items():
        out = dest / f"{role}.txt"
        if split.path is not None:
            out.write_bytes(split.path.read_bytes())
        else:
            write_split_file(out, [src.line(e) for e in split.entries])
        written[role] = out
        manifest[role] = {
            "source": str(split.path.absolute()) if split.path else f"standard split {split.standard}",
            "format": split.format, "entries": len(split.entries), "sha256": file_sha256(out),
        }
    manifest_doc = {"dataset": src.name, "root": str(src.root.absolute()), "splits": manifest}
    (dest / "manifest.json").write_text(json.dumps(manifest_doc, indent=2) + "\n")
    return written


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 1,
                 progress: bool = False, desc: str = "") -> list[R]:
    """`[fn(x) for x in items]` in a thread pool (PIL decodes without the GIL), with a tqdm bar."""
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="img")
    results = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for result in pool.map(fn, items):
            results.append(result)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


@dataclass
class GeneratedSplit:
    """A labeled/unlabeled(/val) partition and notes on how it compares to the official sizes."""

    labeled: list[SplitEntry]
    unlabeled: list[SplitEntry]
    val: list[SplitEntry]
    notes: list[str] = field(default_factory=list)


def generate_split(
    name: str, root: PathLike, num_labeled: int, *, scheme: Optional[str] = None,
    method: str = "random", seed: int = 0, val_size: int = 0, workers: int = 1,
    progress: bool = False,
) -> GeneratedSplit:
    """Choose `num_labeled` images from the scheme's labeled pool, deterministically from `seed`.

    Unlabeled = the scheme's unlabeled pool minus the labeled images (VOC classic: labeled
    from the 1,464 train ids, unlabeled from the other train_aug ids). Datasets without an
    official val split (folder) can hold out `val_size` labeled images first.
    """
    src = open_source(name, root)
    scheme = scheme or next(iter(src.schemes))
    if scheme not in src.schemes:
        raise DataError(
            f"unknown split scheme {scheme!r} for {name}; choose one of {list(src.schemes)}"
        )
    if val_size and src.val_split is not None:
        raise DataError(f"{name} has an official val split; --val-size is for folder datasets")
    layout = src.layout_errors()
    if layout:
        raise DataError("; ".join(layout))
    lab_name, unl_name = src.schemes[scheme]
    lab_pool, unl_pool = src.standard_entries(lab_name), src.standard_entries(unl_name)
    notes = [
        f"{pool} has {len(entries)} images but the official {name} {pool} has "
        f"{src.split_sizes[pool]}: the split will not be comparable with published numbers"
        for pool, entries in {lab_name: lab_pool, unl_name: unl_pool}.items()
        if pool in src.split_sizes and len(entries) != src.split_sizes[pool]
    ]
    if src.val_split is not None:
        val = src.standard_entries(src.val_split)
    else:  # hold out val images first, with their own random stream
        held = choose_labeled(len(lab_pool), val_size, seed + 1) if val_size else []
        val = [lab_pool[i] for i in held]
        lab_pool, unl_pool = _without(src, lab_pool, val), _without(src, unl_pool, val)
    presence = None
    if method == "balanced":
        masks = parallel_map(lambda e: load_mask(src.sample(e).mask, src.label_lut), lab_pool,
                             workers, progress, "classes")
        presence = class_presence(masks, len(src.class_names))  # [N, C]
    chosen = choose_labeled(len(lab_pool), num_labeled, seed, method, presence)
    labeled = [lab_pool[i] for i in chosen]
    return GeneratedSplit(labeled, _without(src, unl_pool, labeled), val, notes)


def _without(src: DatasetSource, entries: list[SplitEntry],
             drop: list[SplitEntry]) -> list[SplitEntry]:
    """`entries` minus those with the same id as one in `drop`, order kept."""
    dropped = {src.key(e) for e in drop}
    return [e for e in entries if src.key(e) not in dropped]


def write_generated_split(name: str, root: PathLike, split: GeneratedSplit, out_dir: PathLike,
                          fmt: str = "ids") -> dict[str, Path]:
    """Write `labeled.txt`, `unlabeled.txt` and `val.txt` (when non-empty) in `fmt` (ids|pairs)."""
    src = open_source(name, root)
    written = {}
    roles = {"labeled": split.labeled, "unlabeled": split.unlabeled, "val": split.val}
    for role, entries in roles.items():
        if not entries:
            continue
        lines = [src.line(e, fmt) for e in entries]
        if len({len(line.split()) for line in lines}) > 1:  # some entries have no mask: one column
            lines = [src.line(e, "ids") for e in entries]
        written[role] = write_split_file(Path(out_dir) / f"{role}.txt", lines)
    return written


# --- the first version's helpers, kept for callers that use them --------------------------------

def read_list_file(path: PathLike) -> list[list[str]]:
    """Non-empty, non-comment lines of a split file, split on whitespace."""
    return [[e.image] + ([e.mask] if e.mask else []) for e in read_split_file(Path(path)).entries]


def voc_samples(root: PathLike, split_file: PathLike, *, labeled: bool = True) -> list[Sample]:
    """VOC layout: one id per line -> `JPEGImages/<id>.jpg` + `SegmentationClass[Aug]/<id>.png`."""
    return load_split("voc", root, split_file, labeled=labeled)
