"""The trainer: one loop for every method, readable top to bottom.

    build data, student (+ EMA teacher), method, SGD with poly lr
    for t in [start, T):  losses = method(batch) → backward → step → teacher EMA
        every `log_every`: train_log.jsonl + TensorBoard;  every `eval_every`: mIoU → metrics.jsonl
        every `checkpoint_every` (and on SIGINT/SIGTERM, and at the end): checkpoints/last.pt
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from prcl.config import Config, ConfigError, save_config, to_dict
from prcl.data.loaders import build_train_data
from prcl.data.sources import copy_split
from prcl.engine import distributed as dist
from prcl.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from prcl.engine.ema import EMATeacher
from prcl.engine.evaluate import evaluate
from prcl.engine.schedules import poly_scheduler
from prcl.methods import build_method
from prcl.models import build_model

# Keys that may change when a run is resumed without --force: they do not alter the experiment.
RESUME_SAFE_KEYS = (
    "train.eval_every", "train.checkpoint_every", "train.log_every", "train.device", "train.threads",
    "data.num_workers", "output_dir",
)


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


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, force: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = select_device(cfg.train.device)
        dist.init_distributed(self.device)
        self.device = select_device(cfg.train.device)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = dist.is_main_process()
        state = self._resume_state(force) if resume else None
        self.start_iteration = state["iteration"] if state else 0
        self.best_miou = state["best_miou"] if state else float("nan")

        data = build_train_data(
            cfg, with_unlabelled=_method_uses_teacher(cfg), start_iteration=self.start_iteration,
            rank=dist.rank(), world=dist.world_size(),
        )
        self.info, self.val_dataset = data.info, data.val
        self.labelled, self.unlabelled = iter(data.labelled), iter(data.unlabelled) if data.unlabelled is not None else None

        torch.manual_seed(cfg.seed)  # identical initial weights (student and teacher) on every rank
        self.model = build_model(cfg, self.info.num_classes).to(self.device)
        if self.device.type == "cuda" and dist.world_size() > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.method = build_method(cfg, self.info.num_classes).to(self.device)
        self.teacher = EMATeacher(self.model, cfg.method.ema_decay) if self.method.uses_teacher else None
        groups = self.model.param_groups()
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            [{"params": groups["main"], "lr": o.lr}]
            + ([{"params": groups["prob_head"], "lr": o.prob_head_lr}] if groups["prob_head"] else []),
            lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
        )
        self.scheduler = poly_scheduler(self.optimizer, cfg.train.iterations, o.poly_power)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16" and self.device.type == "cuda")
        torch.manual_seed(cfg.seed + dist.rank())  # per-rank streams for mixing and sampling
        if state:
            self._load_state(state)
        self.student = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                    broadcast_buffers=False)  # buffers are averaged after each step instead
            if dist.is_distributed() else self.model
        )
        if not resume:
            self._create_run_dir(overwrite)
        self.tb = None
        self._stop_signal: Optional[int] = None

    # ----------------------------------------------------------------- run directory and state
    def _resume_state(self, force: bool) -> dict:
        state = load_checkpoint(self.ckpt_dir / "last.pt")
        changed = [k for k in config_differences(state["config"], to_dict(self.cfg)) if k not in RESUME_SAFE_KEYS]
        if changed and not force:
            raise ConfigError(
                f"resuming {self.run_dir} with a config that changes the experiment ({', '.join(changed)}); "
                "pass --force to resume anyway, or train under a new name"
            )
        return state

    def _create_run_dir(self, overwrite: bool) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"run directory {self.run_dir} already exists; continue it with `prcl train --resume "
                    f"{self.run_dir}`, start afresh with --overwrite, or pick another name=..."
                )
            if self.main:
                shutil.rmtree(self.run_dir)
        dist.barrier()
        if self.main:
            try:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(f"cannot create run directory {self.run_dir}: {err}; set output_dir=... to a writable place") from err
            save_config(self.cfg, self.run_dir / "config.yaml")
            d = self.cfg.data
            copy_split(d.dataset, Path(d.root), {"labeled": d.labeled_split, "unlabeled": d.unlabeled_split,
                                                 "val": d.val_split}, self.run_dir / "split")

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
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["num_classes"] != self.info.num_classes:
            raise CheckpointError(f"checkpoint has {state['num_classes']} classes, the dataset {self.info.num_classes}")
        self.model.load_state_dict(state["model"])
        if self.teacher is not None:
            self.teacher.model.load_state_dict(state["teacher"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if dist.world_size() == 1:  # RNG streams are per process; a new world size starts new ones
            set_rng_state(state["rng"])

    def save(self, iteration: int, name: str = "last.pt") -> Path:
        path = self.ckpt_dir / name
        if self.main:
            save_checkpoint(self.state_dict(iteration), path)
        dist.barrier()
        return path

    # ----------------------------------------------------------------- one iteration
    def _next(self, it) -> dict[str, torch.Tensor]:
        batch = next(it)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    def _autocast(self):
        if self.cfg.train.amp == "none" or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.cfg.train.amp == "bf16" else torch.float16)

    def train_step(self, iteration: int) -> tuple[dict[str, float], dict[str, float]]:
        labelled = self._next(self.labelled)
        unlabelled = self._next(self.unlabelled) if self.unlabelled is not None else None
        progress = iteration / self.cfg.train.iterations
        with self._autocast():
            terms, stats = self.method.losses(self.student, self.teacher, labelled, unlabelled, progress)
        loss = sum(terms.values())
        values = {k: float(v.detach()) for k, v in terms.items()}
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteLossError(
                f"non-finite loss at iteration {iteration}: {values}; the last good checkpoint is "
                f"{self.ckpt_dir / 'last.pt'} (resume with `prcl train --resume {self.run_dir}`)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        dist.average_buffers(self.model)
        if self.teacher is not None:
            self.teacher.update(self.model, iteration)
        values["total"] = float(loss.detach())
        return values, stats

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

            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"{prefix}/{k}", v, record["iteration"])

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        cfg, T = self.cfg, self.cfg.train.iterations
        handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        images_per_it = cfg.data.batch_size + ((cfg.data.unlabeled_batch_size or cfg.data.batch_size) if self.unlabelled is not None else 0)
        bar = tqdm(range(self.start_iteration, T), initial=self.start_iteration, total=T, disable=not self.main,
                   desc=f"{cfg.method.name}", dynamic_ncols=True, mininterval=1.0)
        miou, train_seconds, t0 = float("nan"), 0.0, time.time()
        try:
            for it in bar:
                tic = time.time()
                values, stats = self.train_step(it)
                train_seconds += time.time() - tic
                done = it + 1
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
                if self._stop_signal is not None:
                    self.save(done)
                    bar.close()
                    print(f"stopped by signal {self._stop_signal} at iteration {done}; checkpoint saved. "
                          f"Resume with: prcl train --resume {self.run_dir}")
                    raise SystemExit(128 + self._stop_signal)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.tb is not None:
                self.tb.close()
        bar.close()
        run_its = T - self.start_iteration
        summary = {
            "method": cfg.method.name,
            "miou": miou,
            "best_miou": self.best_miou,
            "iterations": T,
            "wall_seconds": time.time() - t0,
            "images_per_second": images_per_it * run_its / train_seconds if train_seconds else None,
            "run_dir": str(self.run_dir),
        }
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _method_uses_teacher(cfg: Config) -> bool:
    from prcl.methods import METHODS

    return METHODS[cfg.method.name].uses_teacher


def train(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """Train `cfg` and return the run summary (see `Trainer`)."""
    return Trainer(cfg, **kwargs).fit()
