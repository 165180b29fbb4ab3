"""Crash safety and exact resume with real processes (issue 6, items 1, 2 and 5).

A process SIGKILLed while it writes `last.pt` leaves the previous file loadable. A PRCL run of T
iterations is interrupted twice, each time in a separate `prcl train` process with two DataLoader
workers: SIGKILL at a random moment, then SIGTERM to the whole process group (as SLURM or systemd
send it). Finished with `--resume`, it equals an uninterrupted run bit for bit: weights, teacher,
GDPs, optimiser, scheduler, RNG states, metrics.jsonl.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from prcl import cli
from prcl.engine.checkpoint import load_checkpoint, save_checkpoint
from prcl.engine.trainer import Trainer
from test_reliability_inputs import tiny_args

T = 7
CHAIN = ["method.name=prcl", f"train.iterations={T}", "train.checkpoint_every=1", "train.eval_every=100",
         "train.log_every=100", "train.threads=2", "data.num_workers=2", "method.contrastive.num_anchors=8",
         "method.contrastive.num_negatives=16"]  # no logging before the end: children skip TensorBoard's import

# saves version 1 of a checkpoint, then blocks inside the write of version 2 (data written, not yet renamed)
HANG_IN_SECOND_WRITE = """
import os, stat, sys, time
import torch
from prcl.engine.checkpoint import save_checkpoint
real_fsync, files = os.fsync, []
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        files.append(fd)
        if len(files) == 2:
            print("writing version 2", flush=True)
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
for version in (1, 2):
    save_checkpoint({"model": {"w": torch.full((1 << 18,), float(version))}, "config": {}}, sys.argv[1])
"""


def same_state(a, b, where: str = "") -> None:
    """Recursive bit-exact equality of checkpoint contents."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


def assert_same_run(run: Path, reference: Path, iterations: int = T) -> None:
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, reference))
    assert a["iteration"] == b["iteration"] == iterations
    a.pop("config"), b.pop("config")  # names and worker counts differ
    same_state(a, b)
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory) -> Path:
    """The uninterrupted run, in this process and without DataLoader workers."""
    out = tmp_path_factory.mktemp("reference")
    assert cli.main(["train", *tiny_args(synth_root, out, "reference", *CHAIN, "data.num_workers=0")]) == 0
    return out / "reference"


def start(argv: list[str], log: Path, script: str | None = None) -> subprocess.Popen:
    """`prcl ARGV` (or `python -c SCRIPT ARGV`) in its own process group; output to `log`.out/.err."""
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "prcl"]
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([*cmd, *argv], stdout=out, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


class SignalWhen(threading.Thread):
    """Sends `sig` to a child's process group `delay` seconds after `condition()` first holds; polls
    every 2 ms in the background, so the test can meanwhile train in this process."""

    def __init__(self, proc: subprocess.Popen, log: Path, condition, sig: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.proc, self.log, self.condition, self.sig, self.delay = proc, log, condition, sig, delay
        self.error = ""
        self.start()

    def run(self) -> None:
        deadline = time.time() + 300
        while not self.condition():
            if self.proc.poll() is not None or time.time() > deadline:
                self.error = f"child exited ({self.proc.returncode}) or timed out before the signal"
                break
            time.sleep(0.002)
        else:
            time.sleep(self.delay)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if self.error else self.sig)

    def returncode(self) -> int:
        """The child's exit status once signalled (fails the test if it never got the signal)."""
        self.join()
        code = self.proc.wait(timeout=120)
        if self.error:
            pytest.fail(f"{self.error}: {Path(f'{self.log}.err').read_text()[-2000:]}")
        return code


def checkpoints_written(path: Path):
    """A counter of the distinct files that have been `path` (each atomic save is a new file)."""
    seen: set[tuple[int, int]] = set()

    def count() -> int:
        try:
            st = os.stat(path)
            seen.add((st.st_ino, st.st_mtime_ns))  # inode numbers alone may be reused
        except FileNotFoundError:
            pass
        return len(seen)

    return count


def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    log = tmp_path / "writer"
    child = start([str(path)], log, HANG_IN_SECOND_WRITE)
    hanging = lambda: "writing version 2" in Path(f"{log}.out").read_text()  # noqa: E731
    assert SignalWhen(child, log, hanging, signal.SIGKILL).returncode() == -signal.SIGKILL
    debris = list(path.parent.glob(".last.pt.*.tmp"))
    assert len(debris) == 1 and debris[0].stat().st_size > 1 << 20  # version 2 was fully written, not renamed
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((1 << 18,), 1.0))
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {}}, path)  # the next save clears the debris
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_killed_then_terminated_then_resumed_equals_the_uninterrupted_run(synth_root, tmp_path, request):
    out, rng = tmp_path / "runs", random.Random(6)
    run = out / "chain"
    last = run / "checkpoints" / "last.pt"

    # 1. SIGKILL to the process group at a random moment after 1-3 checkpoints
    child = start(["train", *tiny_args(synth_root, out, "chain", *CHAIN)], tmp_path / "c1")
    written, target = checkpoints_written(last), rng.randint(1, 3)
    kill = SignalWhen(child, tmp_path / "c1", lambda: written() >= target, signal.SIGKILL,
                      delay=rng.uniform(0.0, 0.02))  # somewhere in the next step or write
    reference = request.getfixturevalue("reference")  # trains here meanwhile
    assert kill.returncode() == -signal.SIGKILL
    killed_at = load_checkpoint(last)["iteration"]
    assert 1 <= killed_at <= T - 3

    # 2. resumed; SIGTERM to the process group (workers included) -> checkpoint at the next step boundary
    child = start(["train", "--resume", str(run)], tmp_path / "c2")
    written = checkpoints_written(last)
    term = SignalWhen(child, tmp_path / "c2", lambda: written() >= 2, signal.SIGTERM)  # 1 + the surviving file
    assert term.returncode() == 128 + signal.SIGTERM
    stopped = load_checkpoint(last)["iteration"]
    assert killed_at < stopped < T
    stdout, stderr = Path(f"{tmp_path / 'c2'}.out").read_text(), Path(f"{tmp_path / 'c2'}.err").read_text()
    assert f"stopped by signal 15 at iteration {stopped}; checkpoint saved. Resume with: prcl train --resume {run}" \
        in stdout
    assert "Traceback" not in stderr and "saving a checkpoint after this step" in stderr
    _assert_group_gone(child.pid)

    # 3. finished in this process, without workers
    assert cli.main(["train", "--resume", str(run), "data.num_workers=0"]) == 0
    assert_same_run(run, reference)


def _group_members(pgid: int) -> list[str]:
    """`pid state command` of every process in process group `pgid`, read from /proc (zombies included)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        state, _, pgrp = text[text.rindex(")") + 2:].split()[:3]  # after "pid (command) "
        if int(pgrp) == pgid:
            members.append(f"{stat.parent.name} {state} {text[text.index('(') + 1:text.rindex(')')]}")
    return members


def _assert_group_gone(pgid: int) -> None:
    """No DataLoader worker outlives its stopped main process. Called once the main process's exit status is
    collected: by then it has joined its workers (the trainer drops its DataLoader iterators, which shuts their
    workers down, and multiprocessing joins any child left at interpreter exit), so a process still in the
    group is a leak now, not after some grace period."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    left = _group_members(pgid)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"processes outlived the stopped training process: {left}")


@pytest.mark.slow
def test_same_seed_and_config_give_identical_runs(synth_root, tmp_path):
    """Determinism: the same run twice gives identical metrics.jsonl (3 evaluations) and weights."""
    args = ["method.name=supervised", "train.iterations=3", "train.eval_every=1"]
    for name in ("first", "second"):
        assert cli.main(["train", *tiny_args(synth_root, tmp_path, name, *args)]) == 0
    assert len((tmp_path / "first" / "metrics.jsonl").read_text().splitlines()) == 3
    assert_same_run(tmp_path / "second", tmp_path / "first", iterations=3)


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_saves_at_the_step_boundary_and_a_second_one_stops_at_once(make_config, capsys, signals):
    trainer = Trainer(make_config("method.name=supervised", "train.iterations=5", "train.checkpoint_every=100",
                                  "data.crop_size=32", "data.batch_size=2", "data.max_val_images=2"))
    handler = signal.getsignal(signal.SIGINT)
    real_step = trainer.train_step

    def step(iteration):  # Ctrl-C arrives in the middle of iteration 2
        if iteration == 1:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return real_step(iteration)

    trainer.train_step = step
    last = trainer.ckpt_dir / "last.pt"
    if signals == 1:
        with pytest.raises(SystemExit) as stop:
            trainer.fit()
        assert stop.value.code == 130 and load_checkpoint(last)["iteration"] == 2
        out = capsys.readouterr()
        assert "signal 2: saving a checkpoint after this step" in out.err
        assert f"Resume with: prcl train --resume {trainer.run_dir}" in out.out
    else:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert not last.exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is restored


def test_resume_drops_log_records_written_after_the_checkpoint(make_config):
    """A run killed between logging iteration 4 and checkpointing it resumes from 3 without duplicates."""
    cfg = make_config("method.name=supervised", "train.iterations=5", "data.crop_size=32", "data.batch_size=2")
    trainer = Trainer(cfg)
    trainer.save(3)
    lines = [f'{{"iteration": {i}, "miou": 0.{i}}}\n' for i in (2, 3, 4)] + ['{"iteration": 5, "mi']
    (trainer.run_dir / "metrics.jsonl").write_text("".join(lines))
    trainer.lock.release()  # the killed process's run lock goes with it
    Trainer(cfg, resume=True)
    assert (trainer.run_dir / "metrics.jsonl").read_text() == "".join(lines[:2])
