"""A run's data, checked before its first step: the splits its config names (one error for every split
not found, naming the keys and how to make them) and every labeled and val file (`data.check_masks`), so
a mistake stops `prcl train` at once instead of hours later, when the bad file is first drawn."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from prcl.config import Config
from prcl.data.check import DEFAULT_WORKERS, check_training_samples
from prcl.data.dataset import DataError, Sample
from prcl.data.folder import list_images
from prcl.data.sources import DatasetInfo, DatasetSource, ResolvedSplit, SplitNotFoundError, resolve_split

SPLIT_KEYS = {"labeled": "data.labeled_split", "unlabeled": "data.unlabeled_split", "val": "data.val_split"}
SHOWN_PROBLEMS = 3  # problems quoted in the error (`prcl data check` lists them all)
PROGRESS_FROM = 1000  # images: a progress bar for checks this large


def resolve_run_splits(cfg: Config, src: DatasetSource) -> dict[str, ResolvedSplit]:
    """The labeled / unlabeled / val splits of `cfg.data` in `src` (a null `unlabeled_split` is left out).

    Splits that name no file are one `DataError` naming each such key; for a folder dataset it names all
    three keys, since their defaults are the built-in dataset's and own data needs every one set."""
    d = cfg.data
    specs = {"labeled": d.labeled_split, "unlabeled": d.unlabeled_split, "val": d.val_split}
    splits: dict[str, ResolvedSplit] = {}
    missing: dict[str, SplitNotFoundError] = {}
    for role, spec in specs.items():
        if spec is None:
            continue
        try:
            splits[role] = resolve_split(src, spec)
        except SplitNotFoundError as err:
            missing[role] = err
    if missing and src.name == "folder":
        raise DataError(_folder_splits_message(src.root, specs, missing))
    if missing:
        raise DataError("; ".join(f"{SPLIT_KEYS[role]}={specs[role]}: {err}" for role, err in missing.items()))
    return splits


def _folder_splits_message(root: Path, specs: Mapping[str, Optional[str]],
                           missing: Mapping[str, SplitNotFoundError]) -> str:
    """All three split keys, what each names and what was looked for, and the `prcl data split` command
    (with numbers for this folder: a fifth of the labeled images held out for val) that writes them."""
    states = []
    for role, key in SPLIT_KEYS.items():
        state = (f"not found (looked for {missing[role].looked})" if role in missing
                 else "null" if specs[role] is None else "found")
        states.append(f"{key}={specs[role]} {state}")
    labeled = len(list_images(root / "images")) if (root / "images").is_dir() else 0
    val = max(1, labeled // 5)
    if labeled > val:
        numbers = f"--labeled {labeled - val} --val-size {val}"
        note = f" (your {labeled} labeled images: {val} held out for val, the rest labeled)"
    else:
        numbers, note = "--labeled N --val-size M", ""
    no_unlabeled = "" if (root / "unlabeled").is_dir() else (
        "; without an unlabeled/ folder there are no unlabeled images: set data.unlabeled_split=null and "
        "method.name=supervised")
    return (f"the folder dataset under {root} has no split files for this run: {'; '.join(states)}. A folder "
            "dataset needs all three keys set (data.labeled_split, data.unlabeled_split, data.val_split; their "
            "defaults are the built-in dataset's). Write the files with `prcl data split --dataset folder --root "
            f"{root} {numbers} --out {root / 'splits'}`{note}, then train with data.labeled_split=splits/labeled.txt "
            f"data.unlabeled_split=splits/unlabeled.txt data.val_split=splits/val.txt{no_unlabeled}")


def check_run_files(cfg: Config, info: DatasetInfo, labeled: Sequence[Sample], val: Sequence[Sample], *,
                    workers: int = DEFAULT_WORKERS) -> float:
    """Check every labeled and val image and mask as `prcl data check` does (`check_training_samples`);
    raise one `DataError` quoting the first problems, or return the seconds the check took."""
    start = time.perf_counter()
    samples = [*labeled, *val]
    problems = check_training_samples(samples, info, workers=workers, progress=len(samples) >= PROGRESS_FROM)
    if problems:
        d = cfg.data
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise DataError(
            f"{len(problems)} problem(s) in the labeled and val files, found before the first step: "
            f"{'; '.join(problems[:SHOWN_PROBLEMS])}{more}. Fix them (`prcl data check --dataset {d.dataset} --root "
            f"{d.root} --split labeled={d.labeled_split} --split val={d.val_split}` lists all), or skip this check "
            "with data.check_masks=false")
    return time.perf_counter() - start
