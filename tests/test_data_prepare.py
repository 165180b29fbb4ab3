"""`prepare_dataset`: archives with the official internal paths -> the layout the loaders read."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from fixtures_data import make_cityscapes, make_voc, voc_id
from prcl.data.check import check_dataset
from prcl.data.dataset import DataError
from prcl.data import prepare
from prcl.data.prepare import prepare_dataset
from prcl.data.sources import load_split

TRAIN = [voc_id(i) for i in range(3)]
VAL = [voc_id(i) for i in range(3, 5)]
AUG_ONLY = [voc_id(5)]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def deep_out(tmp_path: Path) -> Path:
    """An extraction root 4 levels below `tmp_path`: the archive's `../../../evil.jpg` member (3 levels
    up from JPEGImages/) lands inside `tmp_path` however it is resolved, where `files_outside` sees it."""
    return tmp_path / "a" / "b" / "c" / "VOC2012"


def files_outside(out: Path, top: Path) -> set[str]:
    """Files under `top` that are not under `out`."""
    inside = out.relative_to(top).as_posix() + "/"
    return {f for f in files_under(top) if not f.startswith(inside)}


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def voc_archives(tmp_path_factory):
    """The VOC tar (VOCdevkit/VOC2012/...) and the SBD zip (SegmentationClassAug/...)."""
    tmp = tmp_path_factory.mktemp("voc_archives")
    root = make_voc(tmp / "src", TRAIN, VAL, aug_only=AUG_ONLY, with_aug=True)
    (root / "Annotations" / f"{TRAIN[0]}.xml").write_text("<annotation/>")
    with tarfile.open(tmp / "VOCtrainval_11-May-2012.tar", "w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "SegmentationClassAug" not in path.parts:
                tar.add(path, arcname=f"VOCdevkit/VOC2012/{path.relative_to(root).as_posix()}")
        add_bytes(tar, "VOCdevkit/VOC2012/ImageSets/Main/train.txt", b"x\n")
        add_bytes(tar, "VOCdevkit/VOC2012/JPEGImages/../../../evil.jpg", b"x")
    with zipfile.ZipFile(tmp / "SegmentationClassAug.zip", "w") as zf:
        for path in sorted((root / "SegmentationClassAug").iterdir()):
            zf.write(path, f"SegmentationClassAug/{path.name}")
            zf.writestr(f"__MACOSX/SegmentationClassAug/._{path.name}", b"resource fork")
    return tmp, root


def test_voc_layout(voc_archives, tmp_path):
    archives, source = voc_archives
    out = deep_out(tmp_path)
    result = prepare_dataset("voc", archives, out, progress=False)
    expected = {f for f in files_under(source) if not f.startswith("Annotations/")}
    assert files_under(out) == expected
    assert result.files == {"VOCtrainval_11-May-2012.tar": len(expected) - len(TRAIN + VAL + AUG_ONLY),
                            "SegmentationClassAug.zip": len(TRAIN + VAL + AUG_ONLY)}
    assert files_outside(out, tmp_path) == set()  # the ../../../evil.jpg member was not written anywhere
    assert (out / "JPEGImages" / f"{TRAIN[0]}.jpg").read_bytes() == (source / "JPEGImages" / f"{TRAIN[0]}.jpg").read_bytes()
    assert [s.id for s in load_split("voc", out, "train_aug")] == sorted(TRAIN + AUG_ONLY)
    assert check_dataset("voc", out).ok
    again = prepare_dataset("voc", archives, out, progress=False)  # a restart skips what is in place
    assert again.files == result.files and files_under(out) == expected


def test_an_unsafe_extraction_would_be_seen(voc_archives, tmp_path, monkeypatch):
    """The check of `test_voc_layout` can fail: were `..` components not refused, the archive's
    `VOCdevkit/VOC2012/JPEGImages/../../../evil.jpg` would be written to `a/b/`, outside the root."""
    def after_without_the_dotdot_check(name: str, anchor: str):
        parts = PurePosixPath(name).parts
        return parts[parts.index(anchor):] if anchor in parts and "__MACOSX" not in parts else None

    monkeypatch.setattr(prepare, "_after", after_without_the_dotdot_check)
    out = deep_out(tmp_path)
    prepare_dataset("voc", voc_archives[0], out, progress=False)
    assert files_outside(out, tmp_path) == {"a/b/evil.jpg"}


def test_voc_without_aug_is_a_note(voc_archives, tmp_path):
    archives, _ = voc_archives
    only_tar = tmp_path / "archives"
    only_tar.mkdir()
    (only_tar / "VOCtrainval_11-May-2012.tar").symlink_to(archives / "VOCtrainval_11-May-2012.tar")
    result = prepare_dataset("voc", only_tar, tmp_path / "out", progress=False)
    assert list(result.files) == ["VOCtrainval_11-May-2012.tar"]
    assert "SegmentationClassAug.zip not found" in result.notes[0] and "dropbox.com" in result.notes[0]


def test_missing_archives_print_download_pages(tmp_path):
    with pytest.raises(DataError) as err:
        prepare_dataset("voc", tmp_path, tmp_path / "out", progress=False)
    assert str(err.value) == (
        f"missing archive(s) in {tmp_path}: VOCtrainval_11-May-2012.tar "
        "(download from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)")
    with pytest.raises(DataError) as err:
        prepare_dataset("cityscapes", tmp_path, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "leftImg8bit_trainvaltest.zip (download from https://www.cityscapes-dataset.com/downloads/" in message
    assert "gtFine_trainvaltest.zip (download from https://www.cityscapes-dataset.com/downloads/" in message


@pytest.mark.parametrize("damage", [lambda b: b"\0" * 10 + b"garbage" * 100, lambda b: b[: len(b) // 2 + 100]])
def test_damaged_archive(voc_archives, tmp_path, damage):
    archives, _ = voc_archives
    data = (archives / "VOCtrainval_11-May-2012.tar").read_bytes()
    (tmp_path / "VOCtrainval_11-May-2012.tar").write_bytes(damage(data))
    with pytest.raises(DataError, match=r"^archive .* is damaged or incomplete \(.*\); download it again from "
                                        r"http://host.robots.ox.ac.uk/pascal/VOC/voc2012/$"):
        prepare_dataset("voc", tmp_path, tmp_path / "out", progress=False)


def test_cityscapes_layout(tmp_path):
    frames = {"train": [("aachen", 0, 19), ("bremen", 1, 19)], "val": [("lindau", 0, 19)],
              "test": [("berlin", 0, 19)]}
    source = make_cityscapes(tmp_path / "src", frames)
    archives = tmp_path / "archives"
    archives.mkdir()
    for top, zip_name in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"), ("gtFine", "gtFine_trainvaltest.zip")):
        with zipfile.ZipFile(archives / zip_name, "w") as zf:
            zf.writestr("README", "readme")
            zf.writestr("license.txt", "license")
            for path in sorted((source / top).rglob("*")):
                zf.write(path, path.relative_to(source).as_posix())  # directories too, as in the real zips
    out = tmp_path / "cityscapes"
    prepare_dataset("cityscapes", archives, out, progress=False)
    expected = {f for f in files_under(source) if "/test/" not in f and not f.endswith(
        ("_color.png", "_instanceIds.png", "_polygons.json"))}
    assert files_under(out) == expected and len(expected) == 6
    assert len(load_split("cityscapes", out, "train")) == 2 and check_dataset("cityscapes", out).ok
