"""`spawn_with_deadline`: a deadlocked gloo collective fails the test within its deadline and leaves no
process behind; a worker's exception reaches the test."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from spawn import spawn_with_deadline


def _one_rank_skips_the_collective(rank: int, init_file: str, pids: str) -> None:
    with open(f"{pids}{rank}", "w") as f:
        f.write(str(os.getpid()))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 0:  # rank 1 never joins: rank 0 waits in all_reduce (gloo's own timeout is 30 minutes)
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(600)


def _raises(rank: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 failed on purpose")


def test_a_deadlocked_collective_fails_within_the_deadline_and_the_workers_are_killed(tmp_path):
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"rank\(s\) \[0, 1\] of 2 still running after 5 s"):
        spawn_with_deadline(_one_rank_skips_the_collective, (str(tmp_path / "init"), str(tmp_path / "pid")),
                            timeout=5, start_method="fork")
    assert time.monotonic() - start < 20
    for rank in range(2):
        pid = int((tmp_path / f"pid{rank}").read_text())
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)


def test_a_worker_exception_reaches_the_test():
    with pytest.raises(Exception, match="rank 1 failed on purpose"):
        spawn_with_deadline(_raises, timeout=60, start_method="fork")
