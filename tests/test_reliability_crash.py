"""Crash safety and exact resume with real processes (issue 6, items 1, 2 and 5).

One PRCL run of T iterations is interrupted three times, each time by a separate `prcl train`
process: SIGKILL while `last.pt` is being written, SIGKILL at a random moment (with two
DataLoader workers), SIGTERM to the whole process group (as a cluster scheduler sends it). It is
then finished with `--resume` and must equal, bit for bit, an uninterrupted run: weights, teacher,
GDPs, optimiser, scheduler, RNG states, metrics.jsonl.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prcl import cli
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.trainer import Trainer
from test_reliability_inputs import tiny_args

T = 7
CHAIN = ["method.name=prcl", f"train.iterations={T}", "train.checkpoint_every=1", "train.eval_every=100",
         "train.log_every=100", "train.threads=2", "method.contrastive.num_anchors=8",
         "method.contrastive.num_negatives=16"]  # no logging before the end: children skip TensorBoard's import

# `prcl train ...` whose second checkpoint write blocks after the data is written, before the rename
HANG_IN_SECOND_WRITE = """
import os, stat, sys, time
from prcl import cli
real_fsync, files = os.fsync, []
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        files.append(fd)
        if len(files) == 2:
            print("writing checkpoint 2", flush=True)
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
sys.exit(cli.main(sys.argv[1:]))
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


def assert_same_run(run: Path, reference: Path) -> None:
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, reference))
    assert a["iteration"] == b["iteration"] == T
    a.pop("config"), b.pop("config")  # names and worker counts differ
    same_state(a, b)
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert cli.main(["train", *tiny_args(synth_root, out, "reference", *CHAIN)]) == 0
    return out / "reference"


def start(argv: list[str], log: Path, script: str | None = None) -> subprocess.Popen:
    """`prcl ARGV` (or `python -c SCRIPT ARGV`) in its own process group; output to `log`.out/.err."""
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "prcl"]
    return subprocess.Popen([*cmd, *argv], stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"),
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"child exited early ({proc.returncode}): {Path(f'{log}.err').read_text()[-2000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out; child stderr: {Path(f'{log}.err').read_text()[-2000:]}")
        time.sleep(0.002)


def checkpoints_written(path: Path):
    """A counter of the distinct files that have been `path` (each atomic save is a new inode)."""
    seen: set[int] = set()

    def count() -> int:
        try:
            seen.add(os.stat(path).st_ino)
        except FileNotFoundError:
            pass
        return len(seen)

    return count


def kill_group(proc: subprocess.Popen, sig: int) -> int:
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=120)


def test_killed_three_times_then_resumed_equals_the_uninterrupted_run(synth_root, tmp_path, request):
    out, rng = tmp_path / "runs", random.Random(6)
    run = out / "chain"
    last = run / "checkpoints" / "last.pt"

    # 1. SIGKILL in the middle of writing checkpoint 2: last.pt (iteration 1) survives, the temp file is debris
    child = start(["train", *tiny_args(synth_root, out, "chain", *CHAIN)], tmp_path / "c1", HANG_IN_SECOND_WRITE)
    reference = request.getfixturevalue("reference")  # runs here while the child starts up
    wait_for(lambda: "writing checkpoint 2" in Path(f"{tmp_path / 'c1'}.out").read_text(), child, tmp_path / "c1")
    assert kill_group(child, signal.SIGKILL) == -signal.SIGKILL
    assert len(list(last.parent.glob(".last.pt.*.tmp"))) == 1  # killed mid-write
    assert load_checkpoint(last)["iteration"] == 1

    # 2. resumed with 2 DataLoader workers, SIGKILLed at a random moment after 1-2 more checkpoints
    child = start(["train", "--resume", str(run), "data.num_workers=2"], tmp_path / "c2")
    written, target = checkpoints_written(last), 1 + rng.randint(1, 2)  # the surviving file counts as one
    wait_for(lambda: written() >= target, child, tmp_path / "c2")
    time.sleep(rng.uniform(0.0, 0.02))  # somewhere in the next step or write
    assert kill_group(child, signal.SIGKILL) == -signal.SIGKILL
    assert not list(last.parent.glob(".last.pt.*.tmp"))  # the debris of step 1 was cleaned up
    killed_at = load_checkpoint(last)["iteration"]
    assert 2 <= killed_at <= T - 3

    # 3. resumed again; SIGTERM to the process group (workers included) -> checkpoint at the step boundary
    child = start(["train", "--resume", str(run), "data.num_workers=2"], tmp_path / "c3")
    written = checkpoints_written(last)
    wait_for(lambda: written() >= 2, child, tmp_path / "c3")
    assert kill_group(child, signal.SIGTERM) == 128 + signal.SIGTERM
    stopped = load_checkpoint(last)["iteration"]
    assert killed_at < stopped < T
    stdout, stderr = Path(f"{tmp_path / 'c3'}.out").read_text(), Path(f"{tmp_path / 'c3'}.err").read_text()
    assert f"stopped by signal 15 at iteration {stopped}; checkpoint saved. Resume with: prcl train --resume {run}" \
        in stdout
    assert "Traceback" not in stderr and "saving a checkpoint after this step" in stderr
    _assert_group_gone(child.pid)

    # 4. finish in this process, without workers
    assert cli.main(["train", "--resume", str(run), "data.num_workers=0"]) == 0
    assert_same_run(run, reference)


def _assert_group_gone(pgid: int, timeout: float = 20.0) -> None:
    """No DataLoader worker outlives its stopped main process."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("DataLoader workers outlived the stopped training process")


def test_same_seed_and_config_give_identical_runs(synth_root, tmp_path, reference):
    """Determinism: a second run in the same process equals the first bit for bit (weights, metrics)."""
    assert cli.main(["train", *tiny_args(synth_root, tmp_path, "again", *CHAIN)]) == 0
    assert_same_run(tmp_path / "again", reference)


@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_saves_at_the_step_boundary_and_a_second_one_stops_at_once(make_config, monkeypatch, capsys, signals):
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
    Trainer(cfg, resume=True)
    assert (trainer.run_dir / "metrics.jsonl").read_text() == "".join(lines[:2])
