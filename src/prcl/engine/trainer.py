"""The trainer: one loop for every method, readable top to bottom.

    build data, student (+ EMA teacher), method, SGD with poly lr
    for t in [start, T):  losses = method(batch) → backward → step → teacher EMA
        every `log_every`: train_log.jsonl + TensorBoard;  every `eval_every`: mIoU → metrics.jsonl
        every `checkpoint_every` (and on SIGINT/SIGTERM, and at the end): checkpoints/last.pt
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from prcl.config import Config, ConfigError, to_dict
from prcl.data.loaders import build_train_data
from prcl.engine import distributed as dist
from prcl.engine.checkpoint import (CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_all,
                                    set_rng_state)
from prcl.engine.ema import EMATeacher
from prcl.engine.prototype_log import PrototypeTrajectory
from prcl.engine.evaluate import evaluate
from prcl.engine.optimizer import build_optimizer
from prcl.engine.run_dir import RunLock, check_resumable, create_run_dir, drop_records_after
from prcl.engine.schedules import poly_scheduler
from prcl.methods import build_method
from prcl.models import build_model


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/Inf; the message names the iteration and the last checkpoint."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    if name == "cuda" and dist.is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, force: bool = False, overwrite: bool = False) -> None:
        self.lock = RunLock(cfg.run_dir)  # rank 0 holds it from _setup until fit() ends (or _setup fails)
        try:
            self._setup(cfg, resume, force, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, cfg: Config, resume: bool, force: bool, overwrite: bool) -> None:
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = select_device(cfg.train.device)
        dist.init_distributed(self.device)
        self.device = select_device(cfg.train.device)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = dist.is_main_process()
        if self.main:
            self.lock.acquire()  # before the run directory is read, created or overwritten
        state = self._resume_state(force) if resume else None
        self.start_iteration = state["iteration"] if state else 0
        self.saved_iteration: Optional[int] = self.start_iteration if state else None  # of last.pt
        self.skipped_steps = 0  # steps skipped for a non-finite loss/gradient (train.skip_nonfinite)
        self.best_miou = state["best_miou"] if state else float("nan")

        data = build_train_data(
            cfg, with_unlabeled=_method_uses_teacher(cfg), start_iteration=self.start_iteration,
            rank=dist.rank(), world=dist.world_size(),
        )
        self.info, self.val_dataset = data.info, data.val

        torch.manual_seed(cfg.seed)  # identical initial weights (student and teacher) on every rank
        self.model = build_model(cfg, self.info.num_classes).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and dist.world_size() > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.method = build_method(cfg, self.info.num_classes).to(self.device)
        self.teacher = EMATeacher(self.model, cfg.method.ema_decay) if self.method.uses_teacher else None
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = poly_scheduler(self.optimizer, cfg.train.iterations, cfg.optim.poly_power)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16" and self.device.type == "cuda")
        seed_all(cfg.seed + dist.rank())  # per-rank streams for mixing and sampling
        if state:
            self._load_state(state)
        self.student = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                    broadcast_buffers=False)  # buffers are averaged after each step instead
            if dist.is_distributed() else self.model
        )
        if cfg.train.compile:  # the student's forward only; checkpoints keep the plain module's keys
            self.student = torch.compile(self.student)
        if not resume:
            create_run_dir(cfg, overwrite)
        elif self.main:
            drop_records_after(self.run_dir, self.start_iteration)
        self.tb = None
        self.trajectory = PrototypeTrajectory(self.run_dir / "prototype_trajectory.pt")
        self._stop_signal: Optional[int] = None
        with torch.random.fork_rng(devices=[]):  # last, so a failure above starts no DataLoader workers
            self.labeled = iter(data.labeled)
            self.unlabeled = iter(data.unlabeled) if data.unlabeled is not None else None

    # ----------------------------------------------------------------- run directory and state
    def _resume_state(self, force: bool) -> dict:
        state = load_checkpoint(self.ckpt_dir / "last.pt")
        check_resumable(state["config"], to_dict(self.cfg), self.run_dir, force)
        return state

    def state_dict(self, iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": to_dict(self.cfg),
            "num_classes": self.info.num_classes,
            "class_names": list(self.info.class_names),
            "model": self.model.state_dict(),
            "teacher": self.teacher.model.state_dict() if self.teacher else None,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_miou": self.best_miou,
            "skipped_steps": self.skipped_steps,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        last = self.ckpt_dir / "last.pt"
        if state["num_classes"] != self.info.num_classes:
            raise CheckpointError(f"{last} has {state['num_classes']} classes but {self.cfg.data.dataset} has "
                                  f"{self.info.num_classes}; resume it with its own dataset, or train under a new name")
        try:
            self.model.load_state_dict(state["model"])
            if self.teacher is not None:
                self.teacher.model.load_state_dict(state["teacher"])
            self.method.load_state_dict(state["method"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{last} does not fit this model/method ({' '.join(str(err).split())[:300]}); "
                                  "resume with the run's own config, or train under a new name") from err
        self.skipped_steps = state.get("skipped_steps", 0)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if dist.world_size() == 1:  # RNG streams are per process; a new world size starts new ones
            set_rng_state(state["rng"])

    def save(self, iteration: int, name: str = "last.pt") -> Path:
        path = self.ckpt_dir / name
        if self.main:
            try:
                save_checkpoint(self.state_dict(iteration), path)
            except OSError as err:
                kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
                raise CheckpointError(f"cannot write checkpoint {path} ({err.strerror or err}); {kept}. Free disk "
                                      f"space, then resume with `prcl train --resume {self.run_dir}`") from err
        if name == "last.pt":
            self.saved_iteration = iteration
            if self.main:
                self.trajectory.save()
        dist.barrier()
        return path

    # ----------------------------------------------------------------- one iteration
    def _next(self, it) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(it).items() if torch.is_tensor(v)}
        if self.cfg.train.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                     for k, v in batch.items()}
        return batch

    def _autocast(self):
        """bf16 autocast on CUDA or CPU; fp16 on CUDA only (it needs the GradScaler, which is CUDA's here)."""
        amp = self.cfg.train.amp
        if amp == "none":
            return nullcontext()
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {self.device.type}); "
                              "use train.amp=bf16 or train.amp=none")
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def train_step(self, iteration: int) -> tuple[dict[str, float], dict[str, float]]:
        labeled = self._next(self.labeled)
        unlabeled = self._next(self.unlabeled) if self.unlabeled is not None else None
        progress = iteration / self.cfg.train.iterations
        undo = self._snapshot() if self.cfg.train.skip_nonfinite else None
        with self._autocast():
            terms, stats = self.method.losses(self.student, self.teacher, labeled, unlabeled, progress)
        loss = sum(terms.values())
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        problem = self._backward(loss)
        if problem is None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._skip_step(iteration, problem, values, undo)  # raises unless train.skip_nonfinite
        self.scheduler.step()
        if problem is None:
            dist.average_buffers(self.model)
            if self.teacher is not None:
                self.teacher.update(self.model, iteration)
        values["skipped_steps"] = self.skipped_steps
        return values, stats

    # ----------------------------------------------------------------- numerical guards
    def _backward(self, loss: torch.Tensor) -> Optional[str]:
        """Backpropagate a finite loss. Returns what is non-finite ("loss" or "gradient") or None,
        the same answer on every process, so all ranks stop or skip together."""
        if not _finite_everywhere(loss):
            return "loss"
        self.scaler.scale(loss).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.scaler.is_enabled() or not grads:  # fp16: the scaler skips overflowing steps itself
            return None
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # torch < 2.6
        return None if _finite_everywhere(norm) else "gradient"

    def _snapshot(self) -> dict[str, Any]:
        """Copies of what a forward pass changes (BatchNorm statistics, prototypes, memory bank)."""
        return {"model": [b.detach().clone() for b in self.model.buffers()],
                "method": {k: v.detach().clone() for k, v in self.method.state_dict().items()}}

    def _skip_step(self, iteration: int, problem: str, values: dict[str, float], undo: Optional[dict]) -> None:
        """Stop with a message naming the iteration, the loss terms and the last good checkpoint, or (with
        train.skip_nonfinite) undo the forward pass's state changes and count the skipped step."""
        if undo is None:
            last = self.ckpt_dir / "last.pt"
            saved = (f"the last good checkpoint is {last} (iteration {self.saved_iteration})"
                     if self.saved_iteration is not None else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite {problem} at iteration {iteration + 1}, loss terms {values}; {saved}. Lower optim.lr and "
                f"resume with `prcl train --resume {self.run_dir}`, or add train.skip_nonfinite=true to skip such steps"
            )
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved_buffer in zip(self.model.buffers(), undo["model"]):
                buffer.copy_(saved_buffer)
        self.method.load_state_dict(undo["method"])
        self.skipped_steps += 1
        if self.main:
            tqdm.write(f"skipped iteration {iteration + 1}: non-finite {problem}, loss terms {values} "
                       f"({self.skipped_steps} skipped so far)")

    # ----------------------------------------------------------------- evaluation and logging
    def evaluate(self) -> tuple[float, list[float]]:
        e = self.cfg.eval
        model = self.teacher.model if self.teacher is not None else self.model
        cm = evaluate(
            model, self.val_dataset, self.info.num_classes, device=self.device, mode=e.mode, crop=e.crop_size,
            stride=e.stride, batch_size=e.batch_size, num_workers=0, autocast=self._autocast,
        )
        return cm.miou(), [None if math.isnan(v) else v for v in cm.iou().tolist()]

    def _log(self, filename: str, record: dict, prefix: str) -> None:
        if not self.main:
            return
        with open(self.run_dir / filename, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.start_iteration + 1 if self.start_iteration else None  # hide events after the checkpoint
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"{prefix}/{k}", v, record["iteration"])

    def _handle_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop at once, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.main:
            print(f"signal {signum}: saving a checkpoint after this step (send it again to stop at once)",
                  file=sys.stderr, flush=True)

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        cfg, T = self.cfg, self.cfg.train.iterations
        handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        images_per_it = cfg.data.batch_size + ((cfg.data.unlabeled_batch_size or cfg.data.batch_size) if self.unlabeled is not None else 0)
        bar = tqdm(range(self.start_iteration, T), initial=self.start_iteration, total=T, disable=not self.main,
                   desc=f"{cfg.method.name}", dynamic_ncols=True, mininterval=1.0)
        miou, train_seconds, t0 = float("nan"), 0.0, time.time()
        try:
            for it in bar:
                tic = time.time()
                values, stats = self.train_step(it)
                train_seconds += time.time() - tic
                done = it + 1
                if cfg.train.log_prototypes_every and done % cfg.train.log_prototypes_every == 0:
                    self.trajectory.record(done, getattr(self.method, "contrastive", None))
                if done % cfg.train.log_every == 0 or done == T:
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
                    self._log("train_log.jsonl", {"iteration": done, "lr": lr, **values, **stats}, "train")
                if done % cfg.train.eval_every == 0 or done == T:
                    miou, per_class = self.evaluate()
                    improved = not (self.best_miou >= miou)  # also true while best is NaN
                    self.best_miou = miou if improved else self.best_miou
                    self._log("metrics.jsonl", {"iteration": done, "miou": miou, "per_class_iou": per_class}, "val")
                    bar.write(f"iteration {done}: mIoU {100 * miou:.2f} (best {100 * self.best_miou:.2f})")
                    if improved:
                        self.save(done, "best.pt")
                if done % cfg.train.checkpoint_every == 0 or done == T:
                    self.save(done)
                stop = torch.tensor([float(self._stop_signal is not None)], device=self.device)
                if dist.all_reduce_sum(stop).item():  # under DDP every rank stops after the same step
                    signum = int(self._stop_signal or signal.SIGTERM)
                    if self.saved_iteration != done:
                        self.save(done)
                    bar.close()
                    print(f"stopped by signal {signum} at iteration {done}; checkpoint saved. "
                          f"Resume with: prcl train --resume {self.run_dir}")
                    raise SystemExit(128 + signum)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.tb is not None:
                self.tb.close()
            for loader in (self.labeled, self.unlabeled):  # stop workers now, not at interpreter exit
                getattr(loader, "_shutdown_workers", lambda: None)()
            self.lock.release()
        bar.close()
        run_its = T - self.start_iteration
        summary = {
            "method": cfg.method.name,
            "miou": miou,
            "best_miou": self.best_miou,
            "iterations": T,
            "wall_seconds": time.time() - t0,
            "images_per_second": images_per_it * run_its / train_seconds if train_seconds else None,
            "skipped_steps": self.skipped_steps,
            "run_dir": str(self.run_dir),
        }
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _finite_everywhere(x: torch.Tensor) -> bool:
    """Whether `x` is finite on every process (one tiny all-reduce under DDP)."""
    bad = (~torch.isfinite(x.detach())).any().float().reshape(1)
    return dist.all_reduce_sum(bad).item() == 0


def _method_uses_teacher(cfg: Config) -> bool:
    from prcl.methods import METHODS

    return METHODS[cfg.method.name].uses_teacher


def train(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """Train `cfg` and return the run summary (see `Trainer`)."""
    return Trainer(cfg, **kwargs).fit()
