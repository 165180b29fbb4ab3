"""Worker processes for the tests, with a deadline: a deadlocked collective (one rank waiting for another
that never comes) fails its test with a clear message instead of hanging the suite."""

from __future__ import annotations

import socket
import time
from typing import Callable

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's process group (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_with_deadline(fn: Callable[..., None], args: tuple = (), *, nprocs: int = 2, timeout: float = 300.0,
                        start_method: str = "spawn") -> None:
    """Run `fn(rank, *args)` in `nprocs` processes (`torch.multiprocessing.start_processes`) and wait for
    all of them. A worker's exception is raised here (the others are stopped); past `timeout` seconds the
    processes still running are killed and the test fails, naming them."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                running = [rank for rank, p in enumerate(ctx.processes) if p.is_alive()]
                pytest.fail(f"{getattr(fn, '__name__', fn)}: rank(s) {running} of {nprocs} still running after "
                            f"{timeout:.0f} s (a deadlocked collective?); killed", pytrace=False)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        for p in ctx.processes:
            p.join(10)
