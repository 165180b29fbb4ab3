"""One process or many, same code: `torchrun` sets RANK/WORLD_SIZE and we join a process group
(NCCL on CUDA, gloo on CPU); without them everything below is a no-op.

The ground floor: it imports only torch and the config's error, so every layer (data, models, losses,
methods, engine) may use it."""

from __future__ import annotations

import importlib
import inspect
import os
from datetime import timedelta
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from prcl.config import ConfigError

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def select_device(name: str) -> torch.device:
    """`train.device` as a device: auto = CUDA when available; under torchrun on CUDA, this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    if name == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def init_distributed(device: torch.device) -> None:
    """Join the process group announced by torchrun's environment variables, if any."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(minutes=30))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity for one process); returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def run_on_main(fn: Callable[[], T]) -> Optional[T]:
    """Run `fn` on rank 0 while the other ranks wait; returns its result on rank 0 (None elsewhere).

    For work on a shared path that only one process may do (generating a dataset, creating the run
    directory, writing a checkpoint). An exception raised by `fn` is raised on every rank, with the same
    type and message, so a failure on rank 0 stops all of them instead of leaving the others waiting at
    their next collective. One process: `fn()`."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as err:  # re-raised below, after every rank has heard of it
            error = err
    status = [None if error is None else (type(error).__module__, type(error).__qualname__, str(error))]
    dist.broadcast_object_list(status, src=0)
    if error is not None:
        raise error
    if status[0] is not None:
        raise _same_error(*status[0])
    return result


def _same_error(module: str, qualname: str, message: str) -> Exception:
    """The exception rank 0 raised, rebuilt from its class's name and its message (a RuntimeError naming
    the class when that class cannot be imported or built from a message alone)."""
    try:
        kind = importlib.import_module(module)
        for part in qualname.split("."):
            kind = getattr(kind, part)
        return kind(message)
    except Exception:
        return RuntimeError(f"rank 0 failed: {qualname}: {message}")


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in `DistributedDataParallel`, which does not broadcast rank 0's buffers at every forward:
    the trainer averages them after each step instead (`average_buffers`).

    torch 2.13 renamed that switch: `broadcast_buffers=False` warns (a FutureWarning, once per rank) and
    `forward_sync_buffers=False` replaces it; older releases know only the first. The new one still
    broadcasts the buffers once, at wrapping, which changes nothing here: every rank builds the model from
    the same seed (or loads the same checkpoint), so its buffers are already equal."""
    from torch.nn.parallel import DistributedDataParallel

    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in accepted else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, so the student,
    and therefore its EMA teacher, are identical on every rank without SyncBN (e.g. on CPU)."""
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """`[world·B, ...]`: every process's `[B, ...]` tensor, in rank order (the tensor itself for one
    process). Every process must call it with the same shape; no gradient flows through it."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
