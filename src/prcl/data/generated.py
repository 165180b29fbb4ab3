"""What every generated dataset shares (the built-in set, the photo and thin-structure benchmarks):
the nested labeled splits, the RNG seed codes, and writing into a temporary directory that replaces the
root only when complete. No renderer lives here, so a benchmark does not depend on another one's."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np

LABELED_FRACTIONS: tuple[str, ...] = ("1_64", "1_32", "1_16", "1_8", "1_4", "1_2", "full")
SPLIT_CODES = {"train": 0, "val": 1, "splits": 2}  # second entry of every RNG seed sequence


def data_error(message: str) -> Exception:
    """A `DataError`, imported late: spawned render workers then skip importing torch."""
    from prcl.data.dataset import DataError

    return DataError(message)


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
