"""Training and validation data for a config, with resumable, worker-count-independent randomness.

Every training sample is drawn by `ResumableSampler` as `(index, sample_seed)`; the dataset seeds
its augmentation with `sample_seed`. Both depend only on (seed, rank, position in the stream), so a
run resumed at iteration t sees exactly the batches an uninterrupted run would, whatever the number
of DataLoader workers.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prcl import distributed as dist
from prcl.config import Config, ConfigError
from prcl.data.dataset import DataError, SegmentationDataset
from prcl.data.preflight import check_run_files, resolve_run_splits
from prcl.data.sources import (DatasetInfo, DatasetSource, ResolvedSplit, open_source, resolve_split,
                               source_info, split_samples)
from prcl.data.transforms import EvalTransform, TrainTransform


class ResumableSampler(Sampler):
    """An endless stream of `(index, sample_seed)`: per-epoch permutations seeded by (seed, epoch),
    this rank's share of each (epoch remainder dropped), starting at stream position `start`."""

    def __init__(self, length: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if length < world:
            raise ValueError(f"a split of {length} images cannot feed {world} processes")
        self.length, self.seed, self.rank, self.world, self.start = length, seed, rank, world, start
        self.per_rank = length // world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start
        epoch, perm = -1, None
        while True:
            e, k = divmod(pos, self.per_rank)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm = torch.randperm(self.length, generator=g)[self.rank :: self.world]
                epoch = e
            yield int(perm[k]), (self.seed * 2_654_435_761 + self.rank * 40_503 + pos * 1_000_003) % 2**31
            pos += 1


class SeededDataset(Dataset):
    """Wraps a dataset so `ds[(index, seed)]` runs its random transform under `seed`,
    leaving the caller's global RNG states untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        py_state = random.getstate()
        random.seed(seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)


@dataclass
class TrainData:
    info: DatasetInfo
    labeled: DataLoader
    unlabeled: Optional[DataLoader]
    val: SegmentationDataset
    source: DatasetSource  # the dataset the splits were resolved in
    splits: dict[str, ResolvedSplit]  # labeled / unlabeled / val, resolved once: the run directory copies these


def prepare_root(cfg: Config) -> Path:
    """The dataset root; the built-in synthetic set is generated there on first use.

    Under `torchrun` rank 0 generates it while the other ranks wait (each writing its own copy and renaming
    it over `root` would replace the dataset under a rank already reading it); every rank then checks what
    is there, and an error on rank 0 reaches all of them."""
    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        from prcl.data.synthetic import ensure_synthetic_dataset, require_current_version

        def generate_once() -> None:
            if not (root / "meta.json").is_file():
                print(f"generating the built-in synthetic dataset in {root} (once)")
                ensure_synthetic_dataset(root, workers=min(4, os.cpu_count() or 1), progress=True)

        dist.run_on_main(generate_once)
        require_current_version(root)
    elif not root.is_dir():
        raise DataError(f"data.root {root} does not exist; set data.root=... to your {cfg.data.dataset} dataset "
                        "(`prcl data prepare` extracts the downloaded archives)")
    return root


def build_val_dataset(cfg: Config) -> tuple[DatasetInfo, SegmentationDataset]:
    src = open_source(cfg.data.dataset, prepare_root(cfg))
    info = source_info(src)
    return info, _val_dataset(cfg, src, info, resolve_split(src, cfg.data.val_split))


def _val_dataset(cfg: Config, src: DatasetSource, info: DatasetInfo, split: ResolvedSplit) -> SegmentationDataset:
    samples = split_samples(src, split)
    if cfg.data.max_val_images:
        samples = samples[: cfg.data.max_val_images]
    return SegmentationDataset(samples, EvalTransform(), info.label_lut, info.num_classes)


STOP_GRACE_SECONDS = 10.0


def _outlive_stop_signals(worker_id: int) -> None:
    """Ctrl-C and a scheduler's SIGTERM (SLURM, systemd) reach the workers too. They ignore SIGINT and
    exit cleanly only `STOP_GRACE_SECONDS` after SIGTERM, so the main process can finish its step and
    save a checkpoint first (a worker killed by a signal would make it raise at once). The owner of
    the iterator must shut the workers down itself (the trainer does, in `fit`), or its exit waits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_after_grace)


def _exit_after_grace(signum: int, frame: object) -> None:
    timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, (0,))
    timer.daemon = True
    timer.start()



def _loader(dataset: Dataset, batch: int, cfg: Config, seed: int, rank: int, world: int, start: int) -> DataLoader:
    sampler = ResumableSampler(len(dataset), seed=seed, rank=rank, world=world, start=start)
    return DataLoader(
        SeededDataset(dataset), batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers,
        drop_last=True, persistent_workers=cfg.data.num_workers > 0, pin_memory=torch.cuda.is_available(),
        worker_init_fn=_outlive_stop_signals,
    )


def per_process_batch(global_batch: int, world: int, what: str) -> int:
    if global_batch % world:
        raise ConfigError(f"{what}={global_batch} is not divisible by the number of processes ({world})")
    return global_batch // world


def unlabeled_samples(cfg: Config, src: DatasetSource, split: ResolvedSplit) -> list:
    """The unlabeled split's samples, with their masks where every image has one and the reliability
    diagnostics are on (`train.reliability_diagnostics` and `train.diagnostics_every`): the masks become the
    batch's `truth`, which no loss reads. Without masks the diagnostics are simply absent."""
    if cfg.train.reliability_diagnostics and cfg.train.diagnostics_every:
        try:
            return split_samples(src, split, labeled=True)
        except DataError:  # some unlabeled image has no mask: no diagnostics
            pass
    return split_samples(src, split, labeled=False)


def build_train_data(cfg: Config, *, with_unlabeled: bool, start_iteration: int = 0, rank: int = 0, world: int = 1,
                     strong_views: int = 1) -> TrainData:
    """Loaders positioned at `start_iteration` (for resume) and the val dataset; unlabeled samples carry
    `strong_views` independently augmented strong views (`Method.strong_views`). Each split is resolved
    once, here (`preflight.resolve_run_splits`); `TrainData.splits` hands them on. With `data.check_masks`
    every labeled and val file is checked first (`preflight.check_run_files`)."""
    d = cfg.data
    if with_unlabeled and not d.unlabeled_split:
        raise ConfigError(f"method.name={cfg.method.name} needs unlabeled data: set data.unlabeled_split")
    src = open_source(d.dataset, prepare_root(cfg))
    info = source_info(src)
    splits = resolve_run_splits(cfg, src)
    val = _val_dataset(cfg, src, info, splits["val"])
    bl = per_process_batch(d.batch_size, world, "data.batch_size")
    labeled = SegmentationDataset(
        split_samples(src, splits["labeled"]), TrainTransform(d.crop_size, d.scale_range), info.label_lut,
        info.num_classes,
    )
    if d.check_masks:  # rank 0 checks, every rank hears of a problem
        dist.run_on_main(lambda: check_run_files(cfg, info, labeled.samples, val.samples))
    lab_loader = _loader(labeled, bl, cfg, cfg.seed, rank, world, start_iteration * bl)
    unl_loader = None
    if with_unlabeled:
        bu = per_process_batch(d.unlabeled_batch_size or d.batch_size, world, "data.unlabeled_batch_size")
        unlabeled = SegmentationDataset(
            unlabeled_samples(cfg, src, splits["unlabeled"]),
            TrainTransform(d.crop_size, d.scale_range, strong=True, color_jitter=d.color_jitter, blur=d.blur,
                           strong_views=strong_views),
            info.label_lut, info.num_classes,
        )
        unl_loader = _loader(unlabeled, bu, cfg, cfg.seed + 1, rank, world, start_iteration * bu)
    return TrainData(info, lab_loader, unl_loader, val, src, splits)
