"""Running the pending runs of a comparison: each its own `python -m prcl train` process, `jobs` at a
time, with a progress bar over the whole matrix. A seam, not a scheduler: `command_line` gives the same
commands as text for a cluster's scheduler (`prcl compare --dry-run`).

CPU: each job gets its share of the cores (`train.threads` and OMP/MKL_NUM_THREADS = cores // jobs, at
least 1; one thread each keeps runs side by side deterministic). GPUs: one job per device
(CUDA_VISIBLE_DEVICES). A failed run does not stop the others; its outcome carries its log's last lines.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from prcl.compare.runs import PlannedRun, RunState

LOG_TAIL_LINES = 15


def cpu_count() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_devices(device: str) -> list[str]:
    """The GPUs runs with `train.device=device` would use: CUDA_VISIBLE_DEVICES' entries, else every
    device torch sees; none for `cpu` or without CUDA."""
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def threads_per_job(jobs: int) -> int:
    return max(1, cpu_count() // max(1, jobs))


def job_env(threads: int, device: Optional[str] = None) -> dict[str, str]:
    """The variables a job's process gets on top of this one's environment."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def train_command(run: PlannedRun, threads: int) -> list[str]:
    """`python -m prcl train ...` for a pending run: `--resume` for an interrupted one with its config, else
    a fresh start (`--overwrite` clears what an earlier attempt left)."""
    spec, prcl = run.spec, [sys.executable, "-m", "prcl", "train"]
    if run.state is RunState.RESUME:
        return [*prcl, "--resume", str(spec.run_dir), f"train.threads={threads}"]
    config = ["-c", str(spec.config_file)] if spec.config_file else []
    return [*prcl, *config, *spec.train_overrides(threads), "--overwrite"]


def command_line(run: PlannedRun, threads: int) -> str:
    """The run's command as one shell line, its environment in front (for a scheduler or a terminal)."""
    env = " ".join(f"{k}={v}" for k, v in job_env(threads).items())
    return f"{env} {shlex.join(train_command(run, threads))}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log, each progress-bar line reduced to its last redraw."""
    if not path.is_file():
        return []
    text = path.read_text(errors="replace").splitlines()
    return [line.rsplit("\r", 1)[-1] for line in text if line.strip()][-lines:]


@dataclass
class Outcome:
    run: PlannedRun
    returncode: int = 0  # of `prcl train`; 0 for a reused run
    error: str = ""  # what failed after training (an `after_run` step)
    tail: list[str] = field(default_factory=list)  # the log's last lines, for a failure

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error


AfterRun = Callable[[PlannedRun], None]


class Runner:
    """Runs `PlannedRun`s `jobs` at a time (see the module docstring).

    `threads` fixes each job's thread count (default: the cores' share); `cwd` is where the processes run;
    `after_run(run)` (optional) is called for every run once it is finished, reused ones included, in the
    job's thread (an exception marks the run failed); `on_outcome` in the calling thread after each."""

    def __init__(self, jobs: int = 1, *, threads: Optional[int] = None, devices: Sequence[str] = (),
                 cwd: Optional[Path] = None, after_run: Optional[AfterRun] = None,
                 on_outcome: Optional[Callable[[Outcome], None]] = None, progress: bool = True) -> None:
        self.devices = list(devices)
        self.jobs = max(1, min(jobs, len(self.devices)) if self.devices else jobs)
        self.threads = threads or threads_per_job(self.jobs)
        self.cwd, self.after_run, self.on_outcome, self.progress = cwd, after_run, on_outcome, progress
        self._free: "queue.Queue[str]" = queue.Queue()
        for device in self.devices[: self.jobs]:
            self._free.put(device)

    def run(self, planned: Sequence[PlannedRun]) -> list[Outcome]:
        """Train every pending run (and `after_run` every run); returns the outcomes of those it touched."""
        todo = [r for r in planned if r.pending or self.after_run is not None]
        outcomes: list[Outcome] = []
        bar = tqdm(total=len(planned), initial=len(planned) - len(todo), desc="compare", unit="run",
                   disable=not self.progress, dynamic_ncols=True)
        pool = ThreadPoolExecutor(self.jobs)
        try:
            futures: dict[Future, PlannedRun] = {pool.submit(self._one, r): r for r in todo}
            for fut in as_completed(futures):
                outcome = fut.result()
                outcomes.append(outcome)
                bar.update(1)
                failed = sum(not o.ok for o in outcomes)
                bar.set_postfix(done=sum(o.ok for o in outcomes), failed=failed)
                if not outcome.ok:
                    bar.write(f"FAILED {outcome.run.spec.name}: {failure_text(outcome)}")
                if self.on_outcome is not None:
                    self.on_outcome(outcome)
        except BaseException:  # Ctrl-C: the trainers got it too and save a checkpoint; wait for them
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
        return outcomes

    def _one(self, run: PlannedRun) -> Outcome:
        outcome = Outcome(run)
        if run.pending:
            outcome.returncode = self._train(run)
            if outcome.returncode:
                outcome.tail = log_tail(run.spec.log_path)
                return outcome
        if self.after_run is not None:
            try:
                self.after_run(run)
            except Exception as err:  # reported with the run; the others go on
                outcome.error = str(err)
        return outcome

    def _train(self, run: PlannedRun) -> int:
        device = self._free.get() if self.devices else None
        try:
            cmd = train_command(run, self.threads)
            log = run.spec.log_path
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a" if run.state is RunState.RESUME else "w") as f:
                f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
                f.flush()
                env = {**os.environ, **job_env(self.threads, device)}
                return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=self.cwd, env=env).returncode
        finally:
            if device is not None:
                self._free.put(device)


def failure_text(outcome: Outcome) -> str:
    """One line on what failed and where its log is."""
    log = outcome.run.spec.log_path
    if outcome.returncode:
        return f"prcl train exited with {outcome.returncode}; log {log}"
    return outcome.error
