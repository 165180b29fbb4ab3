"""One trainer per run directory: `RunLock` (an flock on `<run>/.lock`) is held by the trainer for its
lifetime; a second `prcl train` on the run fails at once naming the holder's PID, eval still works, and
a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL
from prcl import cli
from prcl.config import load_config
from prcl.engine import trainer as trainer_module
from prcl.engine.run_dir import RunLock, RunLockedError
from prcl.engine.trainer import Trainer


def run_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", "name=r", "method.name=supervised",
            "data.labeled_split=splits/1_4/labeled.txt", "data.crop_size=32", "data.batch_size=2",
            "data.num_workers=0", "data.max_val_images=2", "eval.batch_size=2", "train.iterations=2",
            "train.eval_every=100", *TINY_MODEL, *extra]


@pytest.fixture
def trained_run(synth_root, tmp_path) -> tuple[list[str], Path]:
    args = run_args(synth_root, tmp_path / "runs")
    assert cli.main(["train", *args]) == 0
    return args, tmp_path / "runs" / "r"


@pytest.mark.slow
def test_a_second_trainer_on_a_locked_run_fails_at_once_naming_the_pid(trained_run, capsys, monkeypatch):
    args, run = trained_run
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    capsys.readouterr()
    with RunLock(run):  # this process plays the running trainer
        for argv in (["train", "--overwrite", *args], ["train", "--resume", str(run)]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("prcl train: error: ") and "\n" not in err
            assert f"run directory {run} is in use by another trainer (PID {os.getpid()} on " in err
        with monkeypatch.context() as m:  # "at once": before any data or model is built
            m.setattr(trainer_module, "build_train_data", lambda *a, **k: pytest.fail("built data"))
            with pytest.raises(RunLockedError, match=f"PID {os.getpid()} "):
                Trainer(load_config(None, args), overwrite=True)
        assert last.read_bytes() == before  # --overwrite deleted nothing
        assert cli.main(["eval", str(run)]) == 0  # eval (and predict, analyze) never take the lock
    assert cli.main(["train", "--overwrite", *args]) == 0  # released: the run can be trained again


@pytest.mark.slow
def test_the_trainer_holds_the_lock_until_fit_ends(synth_root, tmp_path):
    args = run_args(synth_root, tmp_path / "runs")
    trainer = Trainer(load_config(None, args))
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()} "):
        RunLock(trainer.run_dir).acquire()
    trainer.fit()
    assert not (trainer.run_dir / ".lock").exists()  # released and removed
    RunLock(trainer.run_dir).acquire().release()

    with pytest.raises(FileExistsError):  # a trainer that fails to start releases the lock
        Trainer(load_config(None, args))
    overwriting = Trainer(load_config(None, args), overwrite=True)
    assert (overwriting.run_dir / ".lock").read_text().startswith(f"{os.getpid()} on ")
    with pytest.raises(RunLockedError):  # --overwrite emptied the run but kept the held lock file
        RunLock(overwriting.run_dir).acquire()
    overwriting.lock.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from prcl.engine.run_dir import RunLock; "
                               f"lock = RunLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 60)  # a deadline on the child's first line
        assert ready, "the lock holder printed nothing within 60 s"
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"PID {holder.pid} "):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    assert (run / ".lock").read_text().startswith(f"{holder.pid} ")  # its PID is still written there ...
    with RunLock(run) as lock:  # ... but the lock went with the process
        assert lock.held and (run / ".lock").read_text().startswith(f"{os.getpid()} ")


def test_a_lock_that_made_the_run_directory_removes_it_if_nothing_was_written(tmp_path):
    with RunLock(tmp_path / "out" / "run"):  # e.g. a trainer that fails on its data before writing
        assert (tmp_path / "out" / "run" / ".lock").is_file()
    assert list(tmp_path.iterdir()) == []
    with RunLock(tmp_path / "out" / "run"):
        (tmp_path / "out" / "run" / "config.yaml").write_text("")
    assert [p.name for p in (tmp_path / "out" / "run").iterdir()] == ["config.yaml"]


def test_a_lock_file_deleted_by_its_releasing_holder_is_not_locked(tmp_path, monkeypatch):
    """Open, then the holder releases (deletes) the file, then flock: the lock must be retried on the
    new file, or two processes would each hold a lock on a different file."""
    from prcl.engine import run_dir

    holder, real_flock = RunLock(tmp_path / "run").acquire(), run_dir.fcntl.flock
    calls = []

    def flock(fd, op):  # the holder releases just after our open, before our first flock
        if not calls:
            holder.release()
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(run_dir.fcntl, "flock", flock)
    lock = RunLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    assert len(calls) == 2  # the first flock took a deleted file; retried on the new one
    assert os.fstat(lock._file.fileno()).st_ino == os.stat(lock.path).st_ino
    with pytest.raises(RunLockedError):  # and that one really is locked
        RunLock(tmp_path / "run").acquire()
    lock.release()


# ----------------------------------------------------------------------------- a run that fails to start
def fail_from_step(monkeypatch, good_steps: int) -> None:
    """Trainer.train_step runs `good_steps` real steps, then raises (like an out-of-memory error)."""
    real, done = Trainer.train_step, []

    def step(self, iteration):
        if len(done) >= good_steps:
            raise RuntimeError("CUDA out of memory (planted)")
        done.append(iteration)
        return real(self, iteration)

    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_new_run_that_fails_in_its_first_step_leaves_no_run_directory(synth_root, tmp_path, monkeypatch):
    other = tmp_path / "runs" / "other"  # the user's run beside it
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("mine")
    args = run_args(synth_root, tmp_path / "runs")
    trainer = Trainer(load_config(None, args))
    assert {p.name for p in trainer.run_dir.iterdir()} == {".lock", "config.yaml", "split", "checkpoints"}
    fail_from_step(monkeypatch, 0)
    with pytest.raises(RuntimeError, match="planted"):
        trainer.fit()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]
    assert (other / "config.yaml").read_text() == "mine"
    Trainer(load_config(None, args)).lock.release()  # the rerun starts without --overwrite

    fresh = run_args(synth_root, tmp_path / "fresh" / "runs")  # output_dir made by this run: removed as well
    with pytest.raises(RuntimeError, match="planted"):
        Trainer(load_config(None, fresh)).fit()
    assert not (tmp_path / "fresh").exists()


def test_a_failure_while_setting_up_after_the_run_directory_was_written_removes_it(synth_root, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(trainer_module, "RunLog", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        Trainer(load_config(None, run_args(synth_root, tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # trains a step
def test_a_run_that_failed_after_its_first_step_is_kept(synth_root, tmp_path, monkeypatch):
    trainer = Trainer(load_config(None, run_args(synth_root, tmp_path / "runs")))
    fail_from_step(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="planted"):
        trainer.fit()
    kept = {p.name for p in trainer.run_dir.iterdir()}
    assert {"config.yaml", "split", "checkpoints", "train_log.jsonl"} <= kept and ".lock" not in kept


@pytest.mark.slow  # trains a run to resume
def test_a_resumed_run_that_fails_in_its_first_step_is_kept_whole(trained_run, monkeypatch):
    _, run = trained_run
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    cfg = load_config(run / "config.yaml", [f"output_dir={run.parent}", "name=r", "train.iterations=4"])
    fail_from_step(monkeypatch, 0)
    with pytest.raises(RuntimeError, match="planted"):
        Trainer(cfg, resume=True, force=True).fit()
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before
