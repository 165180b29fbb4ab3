"""The run directory: its layout (every file name, defined once here), its lock, creating it, checking a
resumed config, and trimming logs on resume.

What a run directory (`<output_dir>/<name>/`) holds:

- `config.yaml`: the resolved config; `prcl train --resume` reads it, `prcl configs show` prints the same form;
- `split/`: the split lists the run used, as `<role>.txt`, and `manifest.json` (source, size, SHA-256 of each);
- `checkpoints/last.pt` (the latest) and `checkpoints/best.pt` (the best reported mIoU);
- `train_log.jsonl`: one JSON record per logged iteration (`iteration`, `lr`, each loss term, statistics);
- `metrics.jsonl`: one record per evaluation: `iteration`, `model` (the reported one), `miou`, `per_class_iou`
  (null for a class absent from val and predictions), and with a teacher `miou/<model>`, `per_class_iou/<model>`;
- `summary.json`, when training ends: `miou`, `best_miou`, `miou_by_model`, `best_miou_by_model`, `iterations`,
  `wall_seconds`, `images_per_second`, `skipped_steps`, ...;
- `tb/`: TensorBoard events; `prototype_trajectory.pt` with `train.log_prototypes_every`.

**Units:** mIoU and IoU are stored as fractions in [0, 1] (`"miou": 0.7123`) in these files and in `prcl eval
--json`; the console (`prcl train`, `prcl eval`) prints them in percent (`mIoU 71.23`), like the paper's tables.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO, Mapping, Optional

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None  # type: ignore[assignment]

from prcl import distributed as dist
from prcl.config import Config, ConfigError, from_dict, save_config, to_dict
from prcl.data.sources import DatasetSource, ResolvedSplit, copy_split
from prcl.engine.prototype_log import TRAJECTORY_FILE
from prcl.engine.run_log import TENSORBOARD_DIR

# Keys that may change when a run is resumed without --force: they do not alter the experiment.
RESUME_SAFE_KEYS = (
    "train.eval_every", "train.checkpoint_every", "train.log_every", "train.device", "train.threads",
    "data.num_workers", "output_dir", "train.skip_nonfinite", "train.compile", "data.check_masks",
)
CONFIG_FILE = "config.yaml"  # the resolved config
SPLIT_DIR = "split"  # the split lists the run used, and their manifest
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT, BEST_CHECKPOINT = "last.pt", "best.pt"  # in CHECKPOINT_DIR: the latest, and the best by mIoU
TRAIN_LOG, METRICS_LOG = "train_log.jsonl", "metrics.jsonl"  # losses and statistics; evaluations
SUMMARY_FILE = "summary.json"  # written when training ends
LOG_FILES = (METRICS_LOG, TRAIN_LOG)
LOCK_FILE = ".lock"
RUN_FILES = (CONFIG_FILE, SPLIT_DIR, CHECKPOINT_DIR, *LOG_FILES, SUMMARY_FILE, TENSORBOARD_DIR, TRAJECTORY_FILE)
"""Everything a trainer writes into its run directory, but the lock."""


class RunLockedError(RuntimeError):
    """Another trainer holds the run directory's lock; the message names the run and its PID."""


class RunLock:
    """An OS lock (`flock`) on `<run>/.lock`, held by the one trainer of a run for its lifetime.

    The kernel drops the lock when the holder's file is closed, so a crashed or killed trainer leaves
    no stale lock (at most a stale file, which the next trainer simply locks); the file records the
    holder's PID and host for the error message. `release` deletes the file, and the run directory
    too when `acquire` created it and nothing else was written (a trainer that fails to start leaves
    nothing behind; one that wrote its run files first removes them, `remove_run_files`). `acquire`
    retries when it locked a file that its holder deleted meanwhile, so two processes never both hold
    the lock. `prcl eval|predict|analyze` never take it. Usable as a context
    manager; `release` is idempotent.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_FILE
        self._file: Optional[IO[str]] = None
        self._created: list[Path] = []  # the directories acquire() made, deepest first

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "RunLock":
        """Take the lock at once, or raise `RunLockedError` naming the holder."""
        if self.held or fcntl is None:
            return self
        created = list(itertools.takewhile(lambda d: not d.exists(), [self.run_dir, *self.run_dir.parents]))
        while True:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                f = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
            except OSError as err:
                raise ConfigError(f"cannot create run directory {self.run_dir} ({err.strerror}); "
                                  "set output_dir=... to a writable place") from err
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = f.read().strip() or "unknown"
                f.close()
                raise RunLockedError(
                    f"run directory {self.run_dir} is in use by another trainer (PID {holder}); wait for it to "
                    "finish or stop it, or train under another name=... (eval, predict and analyze work meanwhile)"
                ) from None
            except OSError as err:  # a file system without locks (e.g. NFS without lockd): say so, go on
                f.close()
                print(f"warning: cannot lock run directory {self.run_dir} ({err.strerror}); nothing stops a "
                      "second trainer from using it", file=sys.stderr)
                return self
            if self._is_current(f):
                break
            f.close()  # its holder released (deleted) it between our open and flock: lock the new file
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file, self._created = f, created
        return self

    def _is_current(self, f: IO[str]) -> bool:
        try:
            on_disk, ours = os.stat(self.path), os.fstat(f.fileno())
        except FileNotFoundError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev, ours.st_ino)

    def release(self) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked (see the retry in acquire)
        finally:
            f.close()  # closing drops the flock
        for d in self._created:  # what a trainer that failed to start had made, if still empty
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def check_resumable(saved: dict, cfg_dict: dict, run_dir: Path, force: bool) -> None:
    """Refuse to resume with a config that changes the experiment, unless `force`. The saved config is read
    through `from_dict` first, so a key the run predates, at its default, is no change."""
    changed = [k for k in config_differences(to_dict(from_dict(saved)), cfg_dict) if k not in RESUME_SAFE_KEYS]
    if changed and not force:
        raise ConfigError(
            f"resuming {run_dir} with a config that changes the experiment ({', '.join(changed)}); "
            "pass --force to resume anyway, or train under a new name"
        )


def create_run_dir(cfg: Config, overwrite: bool, source: DatasetSource, splits: Mapping[str, ResolvedSplit]) -> None:
    """Make `cfg.run_dir` with `checkpoints/`, the resolved `config.yaml` and a copy of the run's `splits`
    (resolved once in `source`, when the data was built).

    Rank 0 does the work (holding the run's `RunLock`) while every rank waits; its errors reach them all.
    """
    run_dir = cfg.run_dir
    contents = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []
    if contents and not overwrite:
        raise FileExistsError(
            f"run directory {run_dir} already exists; continue it with `prcl train --resume "
            f"{run_dir}`, start afresh with --overwrite, or pick another name=..."
        )
    dist.barrier()  # every rank has looked before rank 0 empties it

    def write() -> None:
        for path in contents:  # all but the lock file, which this trainer holds
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        try:
            (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create run directory {run_dir} ({err.strerror}); "
                              "set output_dir=... to a writable place") from err
        save_config(cfg, run_dir / CONFIG_FILE)
        copy_split(source, splits, run_dir / SPLIT_DIR)

    dist.run_on_main(write)


def remove_run_files(run_dir: Path) -> None:
    """Delete the files of `RUN_FILES` in `run_dir`, leaving anything else (and the held lock file).

    For a new run that failed before its first step, whose directory this trainer's `create_run_dir` made
    or emptied: the lock's `release` then removes the directories it created, so a rerun needs no
    --overwrite. Never for a resumed run: its checkpoints and logs are the user's."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def drop_records_after(run_dir: Path, iteration: int) -> None:
    """On resume, drop log records written after the checkpoint (by a run killed between the two),
    so the logs read like one uninterrupted run; TensorBoard purges them via `purge_step`."""
    for name in LOG_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if _logged_by(line, iteration)]
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)


def _logged_by(line: str, iteration: int) -> bool:
    """Whether a JSON-lines log record is complete and from an iteration <= `iteration`."""
    try:
        return json.loads(line)["iteration"] <= iteration and line.endswith("\n")
    except (ValueError, KeyError, TypeError):
        return False  # a line torn by a crash
