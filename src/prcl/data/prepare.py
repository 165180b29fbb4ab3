"""`prcl data prepare`: unpack archives the user already downloaded into the layout prcl reads.

Offline: nothing is downloaded. Only what training and evaluation read is extracted (VOC:
JPEGImages, SegmentationClass, ImageSets/Segmentation, SegmentationClassAug; Cityscapes: the
train/val images and gtFine label images), each file written atomically so an interrupted run
can simply be restarted (complete files are skipped).
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, Optional, Union

from prcl.data.dataset import DataError

VOC_PAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
AUG_PAGE = (
    "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip (the SBD-augmented masks "
    "as PNGs; SBD itself: http://home.bharathh.info/pubs/codes/SBD/download.html)"
)
CITYSCAPES_PAGE = "https://www.cityscapes-dataset.com/downloads/ (free account needed)"


def _after(name: str, anchor: str) -> Optional[tuple[str, ...]]:
    """Path components after the first `anchor` component, or None (also for `..` tricks)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if anchor not in parts or ".." in parts or "__MACOSX" in parts or parts[-1].startswith("._"):
        return None
    return parts[parts.index(anchor):]


def _voc_member(name: str) -> Optional[str]:
    parts = _after(name, "VOC2012")
    if parts is None or len(parts) < 3:
        return None
    rest = parts[1:]
    if rest[0] in ("JPEGImages", "SegmentationClass") or rest[:2] == ("ImageSets", "Segmentation"):
        return "/".join(rest)
    return None


def _aug_member(name: str) -> Optional[str]:
    parts = _after(name, "SegmentationClassAug")
    return "/".join(parts) if parts and len(parts) == 2 and parts[1].endswith(".png") else None


def _cityscapes_member(anchor: str, suffixes: tuple[str, ...]) -> Callable[[str], Optional[str]]:
    def select(name: str) -> Optional[str]:
        parts = _after(name, anchor)
        if parts and len(parts) == 4 and parts[1] in ("train", "val"):
            return "/".join(parts) if parts[3].endswith(suffixes) else None
        return None

    return select


@dataclass(frozen=True)
class ArchiveSpec:
    filename: str
    page: str  # where to download it
    select: Callable[[str], Optional[str]]  # archive member name -> output path, None = skip
    required: bool = True
    purpose: str = ""


ARCHIVES: dict[str, tuple[ArchiveSpec, ...]] = {
    "voc": (
        ArchiveSpec("VOCtrainval_11-May-2012.tar", VOC_PAGE, _voc_member),
        ArchiveSpec("SegmentationClassAug.zip", AUG_PAGE, _aug_member, required=False,
                    purpose="the 10,582 train_aug masks used by the blender partitions and the "
                            "unlabeled pool of the classic ones"),
    ),
    "cityscapes": (
        ArchiveSpec("leftImg8bit_trainvaltest.zip", CITYSCAPES_PAGE,
                    _cityscapes_member("leftImg8bit", ("_leftImg8bit.png",))),
        ArchiveSpec("gtFine_trainvaltest.zip", CITYSCAPES_PAGE,
                    _cityscapes_member("gtFine", ("_labelIds.png", "_labelTrainIds.png"))),
    ),
}


@dataclass
class PrepareResult:
    out: Path
    files: dict[str, int] = field(default_factory=dict)  # archive -> files written or up to date
    notes: list[str] = field(default_factory=list)


def _members(path: Path) -> Iterator[tuple[str, int, int, Callable[[], IO[bytes]]]]:
    """(name, size, bytes of archive consumed, opener) for every regular file in a tar or zip."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    opener = functools.partial(archive.open, info)
                    yield info.filename, info.file_size, info.compress_size, opener
        return
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile():
                opener = functools.partial(archive.extractfile, member)
                yield member.name, member.size, member.size, opener


def _write_atomic(dest: Path, stream: IO[bytes]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with stream, open(part, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    os.replace(part, dest)


def extract_archive(path: Path, spec: ArchiveSpec, out: Path, progress: bool = True) -> int:
    """Extract the members `spec.select` keeps; returns how many files are now in place."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name)
    count = 0
    try:
        for name, size, consumed, opener in _members(path):
            rel = spec.select(name)
            if rel is not None:
                dest = out / rel
                if not (dest.is_file() and dest.stat().st_size == size):
                    _write_atomic(dest, opener())
                count += 1
            if bar is not None:
                bar.update(consumed)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        reason = " ".join(str(err).split())
        raise DataError(
            f"archive {path} is damaged or incomplete ({reason}); download it again from "
            f"{spec.page}"
        ) from err
    finally:
        if bar is not None:
            bar.close()
    if count == 0:
        raise DataError(f"archive {path} holds none of the expected files; is it {spec.filename} "
                        f"from {spec.page}?")
    return count


def prepare_dataset(dataset: str, archives: Union[str, Path], out: Union[str, Path],
                    progress: bool = True) -> PrepareResult:
    """Extract `dataset`'s archives found in `archives` into `out` (the dataset root)."""
    if dataset not in ARCHIVES:
        raise DataError(f"`prcl data prepare` knows {sorted(ARCHIVES)}, not {dataset!r}")
    archives, out = Path(archives), Path(out)
    specs = ARCHIVES[dataset]
    missing = [s for s in specs if s.required and not (archives / s.filename).is_file()]
    if missing:
        where = "; ".join(f"{s.filename} (download from {s.page})" for s in missing)
        raise DataError(f"missing archive(s) in {archives}: {where}")
    result = PrepareResult(out)
    for spec in specs:
        path = archives / spec.filename
        if not path.is_file():
            result.notes.append(f"{spec.filename} not found in {archives}: skipped. It holds "
                                f"{spec.purpose}; download it from {spec.page}")
            continue
        result.files[spec.filename] = extract_archive(path, spec, out, progress)
    return result
