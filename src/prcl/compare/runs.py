"""One run of a comparison (`RunSpec`: a name, `prcl train` overrides, the config they resolve to) and
what is on disk for it (`RunState`): finished and reusable, to resume, or to train (again).

A finished run is reused only when its saved resolved config equals the one asked for now, except for
`IGNORED_KEYS` (where the run lives, and the thread count that the runner chooses from `--jobs`), and the
split lists it recorded still hold the same images; anything else is trained again, and the reason said.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prcl.config import Config, ConfigError, from_dict, load_config, to_dict
from prcl.data.splits import file_sha256
from prcl.engine.run_dir import (CHECKPOINT_DIR, CONFIG_FILE, LAST_CHECKPOINT, LOCK_FILE, SPLIT_DIR, SUMMARY_FILE,
                                 config_differences)

IGNORED_KEYS = ("name", "output_dir", "train.threads")


@dataclass
class RunSpec:
    """A `prcl train` run: `-c config_file` (optional) and `overrides`, in `output_dir/name`.

    `config` is resolved when the spec is made (`RunSpec.create`), so a key error stops a comparison
    before anything runs. `axes` name the run's cell in the tables (method, labels, seed, varied keys)."""

    name: str
    output_dir: Path
    overrides: tuple[str, ...]
    config: Config
    config_file: Optional[Path] = None
    log: Optional[Path] = None  # the trainer's output; default <output_dir>/<name>.log
    axes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, output_dir: Path, overrides: Sequence[str], config_file: Optional[Path] = None,
               log: Optional[Path] = None, axes: Optional[dict[str, Any]] = None) -> "RunSpec":
        """Resolve the config (`load_config`: unknown keys and bad values raise `ConfigError` here)."""
        where = [f"output_dir={output_dir}", f"name={name}"]
        config = load_config(config_file, [*overrides, *where])
        return cls(name, Path(output_dir), tuple(overrides), config, config_file, log, dict(axes or {}))

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.log or self.output_dir / f"{self.name}.log"

    def train_overrides(self, threads: Optional[int] = None) -> list[str]:
        """What `prcl train` gets after `-c`: the spec's overrides, where the run lives, its thread count."""
        where = [f"output_dir={self.output_dir}", f"name={self.name}"]
        return [*self.overrides, *where, *([f"train.threads={threads}"] if threads else [])]


class RunState(enum.Enum):
    DONE = "finished"  # summary.json and the same config: reused
    STALE = "retrain"  # finished under another config (or split): trained again from scratch
    RESUME = "resume"  # interrupted (checkpoints/last.pt, no summary), same config: `prcl train --resume`
    RESTART = "restart"  # interrupted before a checkpoint, or under another config: trained from scratch
    NEW = "new"  # nothing on disk yet


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    state: RunState
    reason: str = ""  # why a STALE/RESTART run is not reused, e.g. "config changed: train.iterations"

    @property
    def pending(self) -> bool:
        return self.state is not RunState.DONE


def saved_config_changes(run_dir: Path, cfg: Config) -> list[str]:
    """Dotted keys where the run's saved `config.yaml` differs from `cfg` (IGNORED_KEYS aside); a missing
    or unreadable file counts as one change."""
    path = run_dir / CONFIG_FILE
    try:
        saved = to_dict(from_dict(yaml.safe_load(path.read_text()) or {}))
    except (OSError, yaml.YAMLError, ConfigError, TypeError) as err:
        return [f"{CONFIG_FILE} unreadable ({type(err).__name__})"]
    return [k for k in config_differences(saved, to_dict(cfg)) if k not in IGNORED_KEYS]


def changed_splits(run_dir: Path) -> list[str]:
    """Roles (labeled, unlabeled, val) whose list file no longer holds what the run recorded training on
    (`split/manifest.json`: the source file and its SHA-256)."""
    path = run_dir / SPLIT_DIR / "manifest.json"
    if not path.is_file():
        return []
    changed = []
    for role, entry in json.loads(path.read_text()).get("splits", {}).items():
        source = str(entry.get("source", ""))
        if source.startswith("standard split"):
            continue
        if not Path(source).is_file() or file_sha256(Path(source)) != entry.get("sha256"):
            changed.append(role)
    return changed


def plan_run(spec: RunSpec) -> PlannedRun:
    """What to do for `spec`, from its run directory (see `RunState`)."""
    run = spec.run_dir
    if not run.is_dir() or not [p for p in run.iterdir() if p.name != LOCK_FILE]:
        return PlannedRun(spec, RunState.NEW)
    changes = saved_config_changes(run, spec.config)
    reason = f"config changed: {', '.join(changes)}" if changes else ""
    if not changes and (splits := changed_splits(run)):
        reason = f"split lists changed: {', '.join(splits)}"
    if (run / SUMMARY_FILE).is_file():
        return PlannedRun(spec, RunState.STALE, reason) if reason else PlannedRun(spec, RunState.DONE)
    if not reason and (run / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
        return PlannedRun(spec, RunState.RESUME)
    return PlannedRun(spec, RunState.RESTART, reason or "interrupted before its first checkpoint")


def describe_plan(planned: Sequence[PlannedRun]) -> list[str]:
    """What will happen, in a line, then one line per run trained again and why."""
    counts = {state: sum(r.state is state for r in planned) for state in RunState}
    lines = [f"{len(planned)} runs: {counts[RunState.DONE]} finished (reused), {counts[RunState.RESUME]} to resume, "
             f"{counts[RunState.NEW]} to train, {counts[RunState.STALE] + counts[RunState.RESTART]} to train again"]
    lines += [f"  {r.spec.name}: train again ({r.reason})" for r in planned
              if r.state in (RunState.STALE, RunState.RESTART)]
    return lines


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's `summary.json`, or None while it has none."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
