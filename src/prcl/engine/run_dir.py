"""The run directory: creating it, checking a resumed config, and trimming logs on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prcl.config import Config, ConfigError, save_config
from prcl.data.sources import copy_split
from prcl.engine import distributed as dist

# Keys that may change when a run is resumed without --force: they do not alter the experiment.
RESUME_SAFE_KEYS = (
    "train.eval_every", "train.checkpoint_every", "train.log_every", "train.device", "train.threads",
    "data.num_workers", "output_dir", "train.skip_nonfinite", "train.compile",
)
LOG_FILES = ("metrics.jsonl", "train_log.jsonl")


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
    """Refuse to resume with a config that changes the experiment, unless `force`."""
    changed = [k for k in config_differences(saved, cfg_dict) if k not in RESUME_SAFE_KEYS]
    if changed and not force:
        raise ConfigError(
            f"resuming {run_dir} with a config that changes the experiment ({', '.join(changed)}); "
            "pass --force to resume anyway, or train under a new name"
        )


def create_run_dir(cfg: Config, overwrite: bool) -> None:
    """Make `cfg.run_dir` with `checkpoints/`, the resolved `config.yaml` and a copy of the splits.

    Rank 0 does the work; every rank waits for it.
    """
    run_dir, main = cfg.run_dir, dist.is_main_process()
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"run directory {run_dir} already exists; continue it with `prcl train --resume "
                f"{run_dir}`, start afresh with --overwrite, or pick another name=..."
            )
        if main:
            shutil.rmtree(run_dir)
    dist.barrier()
    if main:
        try:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create run directory {run_dir} ({err.strerror}); "
                              "set output_dir=... to a writable place") from err
        save_config(cfg, run_dir / "config.yaml")
        d = cfg.data
        copy_split(d.dataset, Path(d.root), {"labeled": d.labeled_split, "unlabeled": d.unlabeled_split,
                                             "val": d.val_split}, run_dir / "split")


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
