"""What every generated dataset shares (the built-in set, the photo and thin-structure benchmarks):
the nested labeled splits, the RNG seed codes, writing into a temporary directory that replaces the
root only when complete, and writing a folder dataset. No renderer lives here, so a benchmark does not
depend on another one's."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import yaml
from PIL import Image

from prcl.data.palette import voc_palette

LABELED_FRACTIONS: tuple[str, ...] = ("1_64", "1_32", "1_16", "1_8", "1_4", "1_2", "full")
SPLIT_CODES = {"train": 0, "val": 1, "splits": 2}  # second entry of every RNG seed sequence


def data_error(message: str) -> Exception:
    """A `DataError`, imported late: spawned render workers then skip importing torch."""
    from prcl.data.dataset import DataError

    return DataError(message)


def generator_meta(what: str, generator: str, version: int, *, seed: int, num_train: int, num_val: int,
                   image_size: int) -> dict:
    """The head of a generated benchmark's `meta.json` (generator, version, parameters), after checking the sizes."""
    if num_train < 1 or num_val < 1 or image_size < 16:
        raise ValueError(f"{what} needs num_train, num_val >= 1 and image_size >= 16; got {num_train}, {num_val}, "
                         f"{image_size}")
    return {"generator": generator, "version": version,
            "params": {"seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}}


def write_nested_splits(out: Path, seed: int, train: list[str], val: list[str]) -> dict:
    """`splits/val.txt` and `splits/<fraction>/{labeled,unlabeled}.txt` for each of `LABELED_FRACTIONS`:
    the labeled sets are prefixes of one seeded permutation of `train`, so each contains the smaller ones.
    Returns the sizes per fraction."""
    lists = {"splits/val.txt": val}
    order = np.random.default_rng([seed, SPLIT_CODES["splits"]]).permutation(len(train))
    counts = {}
    for frac in LABELED_FRACTIONS:
        size = max(1, len(train) // (1 if frac == "full" else int(frac.split("_")[1])))
        chosen = set(order[:size].tolist())
        labeled = [sid for j, sid in enumerate(train) if j in chosen]
        unlabeled = [sid for j, sid in enumerate(train) if j not in chosen]
        lists[f"splits/{frac}/labeled.txt"] = labeled
        if unlabeled:  # `full` has none: an absent list means "supervised only"
            lists[f"splits/{frac}/unlabeled.txt"] = unlabeled
        counts[frac] = {"labeled": len(labeled), "unlabeled": len(unlabeled)}
    for rel, ids in lists.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("".join(f"{sid}\n" for sid in ids))
    return counts

@contextmanager
def generated_dataset_dir(root: Union[str, Path], own_entries: set, what: str) -> Iterator[Path]:
    """A fresh sibling temporary directory to write a generated dataset into; on success it replaces
    `root`, so an interrupted generation never leaves something that looks complete. Refuses a `root`
    that is a file or holds entries outside `own_entries` (the user's files), naming them."""
    root = Path(root).absolute()
    if root.is_file():
        raise data_error(f"dataset root {root} is a file; pick a directory path")
    foreign = sorted(p.name for p in root.glob("*") if p.name not in own_entries)
    if foreign:
        raise data_error(f"{root} holds files that are not part of {what} "
                          f"({', '.join(foreign[:3])}); pick an empty or new directory as its root")
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if root.exists():
            shutil.rmtree(root)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def summed_over_jobs(write: Callable[[tuple], np.ndarray], jobs: list[tuple], workers: int, progress: bool,
                     desc: str = "synthetic dataset") -> np.ndarray:
    """`write` (a module-level function: it is pickled) over `jobs`, in `workers` spawned processes if > 1;
    its returned arrays (pixel counts) summed. The output does not depend on `workers`."""
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(write, jobs, chunksize=16) if pool else map(write, jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc=desc, unit="img")
        return np.sum(list(results), axis=0)
    finally:
        if pool is not None:
            pool.terminate()


FOLDER_ENTRIES = {"images", "masks", "splits", "classes.yaml", "meta.json"}
"""What `write_folder_dataset` writes in its root (anything else there is the user's, and refused)."""


Render = Callable[[str, int], tuple[np.ndarray, np.ndarray]]
"""(split, index) -> (image `[S, S, 3]` uint8, mask `[S, S]` uint8)."""


def write_folder_dataset(root: Union[str, Path], *, what: str, render: Render, sizes: dict[str, int], seed: int,
                         class_names: Sequence[str], colors: np.ndarray, meta: dict[str, Any], quality: int,
                         progress: bool = False) -> Path:
    """A generated benchmark as a folder dataset (`prcl.data.folder`): `render(split, index)` gives each image
    `[S, S, 3]` uint8 and mask `[S, S]` uint8 for `sizes` images per split (train, val); written with a mask for
    every image, `classes.yaml` (names, `colors` `[C, 3]`), the nested splits and `meta.json` (`meta`'s
    fields, the split counts and the class pixel fractions), last. Returns `root`."""
    palette = voc_palette()  # the mask PNGs' palette: the classes' colours, then VOC's
    palette[:3 * len(class_names)] = np.asarray(colors, dtype=np.int64).reshape(-1).tolist()
    pixels = np.zeros(len(class_names), np.int64)
    with generated_dataset_dir(root, FOLDER_ENTRIES, what) as tmp:
        for sub in ("images", "masks"):
            (tmp / sub).mkdir(parents=True)
        jobs: Any = [(split, i) for split, n in sizes.items() for i in range(n)]
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, desc=what.removeprefix("the "), unit="img")
        ids: dict[str, list[str]] = {split: [] for split in sizes}
        for split, i in jobs:
            image, mask = render(split, i)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(tmp / "images" / f"{name}.jpg", quality=quality)
            png = Image.fromarray(mask)
            png.putpalette(palette)
            png.save(tmp / "masks" / f"{name}.png")
            pixels += np.bincount(mask.ravel(), minlength=len(class_names))
            ids[split].append(f"images/{name}.jpg")
        (tmp / "classes.yaml").write_text(yaml.safe_dump(
            {"classes": [{"name": n, "color": list(c)} for n, c in zip(class_names, np.asarray(colors).tolist())]},
            sort_keys=False))
        meta = {**meta, "counts": write_nested_splits(tmp, seed, ids["train"], ids["val"]),
                "pixel_fraction": dict(zip(class_names, np.round(pixels / pixels.sum(), 5).tolist()))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Path(root).absolute()
