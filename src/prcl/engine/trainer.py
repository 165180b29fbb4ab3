"""The trainer: one loop for every method, readable top to bottom.

    build data, student (+ EMA teacher when the method has one), method, optimiser with poly lr
    for t in [start, T):  losses = method(batch) → backward → step → teacher EMA
        every `diagnostics_every`: each loss term's gradient norm at the trunk (engine/diagnostics.py)
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
from tqdm import tqdm

from prcl import distributed as dist
from prcl.config import Config, ConfigError, to_dict
from prcl.data.loaders import build_train_data
from prcl.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_all, set_rng_state
from prcl.engine.diagnostics import InertTermMonitor, gradient_norms
from prcl.engine.ema import EMATeacher, teacher_decay
from prcl.engine.evaluate import evaluate
from prcl.engine.nonfinite import NonFiniteLossError, StepUndo, guarded_backward
from prcl.engine.optimizer import build_optimizer
from prcl.engine.prototype_log import TRAJECTORY_FILE, PrototypeTrajectory
from prcl.engine.reliability import reliability_stats
from prcl.engine.run_dir import (BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, METRICS_LOG, SUMMARY_FILE, TRAIN_LOG,
                                 RunLock, check_resumable, create_run_dir, drop_records_after, remove_run_files)
from prcl.engine.run_log import RunLog
from prcl.engine.schedules import poly_scheduler
from prcl.engine.class_warnings import by_class_name, shrinking_class_warnings
from prcl.methods import METHODS, StepLosses, build_method, reported_model_name
from prcl.models import build_model


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, force: bool = False, overwrite: bool = False) -> None:
        self.lock = RunLock(cfg.run_dir)  # rank 0 holds it from _setup until fit() ends (or _setup fails)
        self.unstarted_new_run = False  # from create_run_dir to the end of the first step: a failure removes the run
        try:
            self._setup(cfg, resume, force, overwrite)
        except BaseException:
            self._discard_if_unstarted()
            raise

    def _setup(self, cfg: Config, resume: bool, force: bool, overwrite: bool) -> None:
        self.cfg = cfg
        self.reported_model_name = reported_model_name(cfg)  # its mIoU is the run's; best.pt follows it
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = dist.select_device(cfg.train.device)
        dist.init_distributed(self.device)
        self.device = dist.select_device(cfg.train.device)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":  # before anything is written
            raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {self.device.type}); "
                              "use train.amp=bf16 or train.amp=none")
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.main = dist.is_main_process()
        dist.run_on_main(self.lock.acquire)  # before the run directory is read, created or overwritten
        state = self._resume_state(force) if resume else None
        self.start_iteration = state["iteration"] if state else 0
        self.saved_iteration: Optional[int] = self.start_iteration if state else None  # of last.pt
        self.skipped_steps = 0  # steps skipped for a non-finite loss/gradient (train.skip_nonfinite)
        self.best_miou = state["best_miou"] if state else float("nan")
        self.best_by_model: dict[str, float] = dict(state.get("best_miou_by_model", {})) if state else {}
        self.miou_by_model: dict[str, float] = {}  # of the last evaluation

        method_cls = METHODS[cfg.method.name]
        data = build_train_data(
            cfg, with_unlabeled=method_cls.uses_unlabeled, start_iteration=self.start_iteration,
            rank=dist.rank(), world=dist.world_size(), strong_views=method_cls.strong_views,
        )
        self.info, self.val_dataset = data.info, data.val

        torch.manual_seed(cfg.seed)  # identical initial weights (student and teacher) on every rank
        self.model = build_model(cfg, self.info.num_classes).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and dist.world_size() > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.method = build_method(cfg, self.info.num_classes).to(self.device)
        self.teacher = EMATeacher(self.model, teacher_decay(cfg)) if self.method.uses_teacher else None
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = poly_scheduler(self.optimizer, cfg.train.iterations, cfg.optim.poly_power)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16" and self.device.type == "cuda")
        seed_all(cfg.seed + dist.rank())  # per-rank streams for mixing and sampling
        if state:
            self._load_state(state)
        self.student = dist.data_parallel(self.model, self.device) if dist.is_distributed() else self.model
        if cfg.train.compile:  # the student's forward only; checkpoints keep the plain module's keys
            if cfg.train.diagnostics_every and self.main:  # their extra autograd.grad calls (retain_graph) break
                # a compiled backward (it refuses them, or with donated buffers off the step then differs)
                print("train.compile=true: the gradient and reliability diagnostics (train.diagnostics_every) are "
                      "skipped; train without compile to get them", file=sys.stderr)
            self.student = torch.compile(self.student)
        if not resume:
            create_run_dir(cfg, overwrite, data.source, data.splits)
            self.unstarted_new_run = True
        elif self.main:
            drop_records_after(self.run_dir, self.start_iteration)
        self.log = RunLog(self.run_dir, main=self.main, start_iteration=self.start_iteration)
        self.monitor = InertTermMonitor()
        self.trajectory = PrototypeTrajectory(self.run_dir / TRAJECTORY_FILE)
        self._stop_signal: Optional[int] = None
        with torch.random.fork_rng(devices=[]):  # last, so a failure above starts no DataLoader workers
            self.labeled = iter(data.labeled)
            self.unlabeled = iter(data.unlabeled) if data.unlabeled is not None else None

    # ----------------------------------------------------------------- run directory and state
    def _discard_if_unstarted(self) -> None:
        """Release the lock; a new run that failed before its first step or checkpoint loses its files first."""
        if self.unstarted_new_run and dist.is_main_process():
            remove_run_files(self.run_dir)
        self.lock.release()

    def _resume_state(self, force: bool) -> dict:
        state = load_checkpoint(self.ckpt_dir / LAST_CHECKPOINT)
        check_resumable(state["config"], to_dict(self.cfg), self.run_dir, force)
        return state

    def state_dict(self, iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "config": to_dict(self.cfg),
            "num_classes": self.info.num_classes,
            "class_names": list(self.info.class_names),
            "class_colors": None if self.info.colors is None else self.info.colors.tolist(),  # [C, 3], for predict
            "model": self.model.state_dict(),
            "teacher": self.teacher.model.state_dict() if self.teacher else None,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_miou": self.best_miou,
            "best_miou_by_model": self.best_by_model,
            "skipped_steps": self.skipped_steps,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        last = self.ckpt_dir / LAST_CHECKPOINT
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

    def save(self, iteration: int, name: str = LAST_CHECKPOINT) -> Path:
        """Write `checkpoints/<name>` atomically (rank 0; a failure there stops every rank)."""
        path = self.ckpt_dir / name

        def write() -> None:
            try:
                save_checkpoint(self.state_dict(iteration), path)
            except OSError as err:
                kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
                raise CheckpointError(f"cannot write checkpoint {path} ({err.strerror or err}); {kept}. Free disk "
                                      f"space, then resume with `prcl train --resume {self.run_dir}`") from err
            if name == LAST_CHECKPOINT:
                self.trajectory.save()

        dist.run_on_main(write)
        if name == LAST_CHECKPOINT:
            self.saved_iteration = iteration
            self.unstarted_new_run = False  # a checkpoint on disk makes the run resumable: it stays
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
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def train_step(self, iteration: int) -> tuple[dict[str, float], dict[str, float]]:
        """One optimisation step; returns the loss values and the method's statistics (with the
        gradient diagnostics on the iterations that compute them)."""
        labeled = self._next(self.labeled)
        unlabeled = self._next(self.unlabeled) if self.unlabeled is not None else None
        progress = iteration / self.cfg.train.iterations
        undo = StepUndo(self.model, self.method) if self.cfg.train.skip_nonfinite else None
        with self._autocast():
            step = self.method.losses(self.student, self.teacher, labeled, unlabeled, progress)
        loss = sum(step.terms.values())
        values = {k: float(v.detach()) for k, v in step.terms.items()}
        values["total"] = float(loss.detach())
        stats = dict(step.stats)
        every = 0 if self.cfg.train.compile else self.cfg.train.diagnostics_every  # see __init__
        if every and (iteration == 0 or (iteration + 1) % every == 0):
            stats.update(self._diagnose(step, iteration + 1))
        self.optimizer.zero_grad(set_to_none=True)
        problem = guarded_backward(loss, self.model, self.scaler)  # the same answer on every rank
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

    def _diagnose(self, step: StepLosses, iteration: int) -> dict[str, float]:
        """Gradient norm of each loss term (and path) at the trunk, warning once about inert terms; where the
        truth of the unlabeled images is known, how σ² ranks the wrong pseudo-labels (`engine/reliability.py`)."""
        norms = gradient_norms(step.terms, step.paths, self.model.trunk_parameters())
        if self.main and iteration > 1:  # at iteration 1 the teacher has no confident pixel yet: no inert alarm
            for message in self.monitor.check(norms, step.stats, iteration):
                tqdm.write(f"warning: {message}")
        if step.probe is not None and "contrastive" in step.terms:
            norms.update(reliability_stats(step.probe, step.terms["contrastive"]))
        return norms

    def _skip_step(self, iteration: int, problem: str, values: dict[str, float], undo: Optional[StepUndo]) -> None:
        """Stop with a message naming the iteration, the loss terms and the last good checkpoint, or (with
        train.skip_nonfinite) undo the forward pass's state changes and count the skipped step."""
        if undo is None:
            last = self.ckpt_dir / LAST_CHECKPOINT
            saved = (f"the last good checkpoint is {last} (iteration {self.saved_iteration})"
                     if self.saved_iteration is not None else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite {problem} at iteration {iteration + 1}, loss terms {values}; {saved}. Lower optim.lr and "
                f"resume with `prcl train --resume {self.run_dir}`, or add train.skip_nonfinite=true to skip such steps"
            )
        self.optimizer.zero_grad(set_to_none=True)
        undo.restore()
        self.skipped_steps += 1
        if self.main:
            tqdm.write(f"skipped iteration {iteration + 1}: non-finite {problem}, loss terms {values} "
                       f"({self.skipped_steps} skipped so far)")

    # ----------------------------------------------------------------- evaluation and logging
    def evaluate(self) -> dict[str, tuple[float, list[Optional[float]]]]:
        """mIoU and per-class IoU of each model: `{"teacher": ..., "student": ...}` for methods with a teacher
        (their authors evaluate both: UniMatch V2 every epoch), `{"student": ...}` otherwise."""
        e = self.cfg.eval
        models = {"teacher": self.teacher.model} if self.teacher is not None else {}
        models["student"] = self.model
        results = {}
        for i, (name, model) in enumerate(models.items()):
            # An evaluation draws the DataLoader's base seed from the global RNG; a second one must not move the
            # training stream, so that adding it left every run's training as it was.
            with torch.random.fork_rng(devices=[]) if i else nullcontext():
                cm = evaluate(
                    model, self.val_dataset, self.info.num_classes, device=self.device, mode=e.mode, crop=e.crop_size,
                    stride=e.stride, batch_size=e.batch_size, num_workers=0, autocast=self._autocast,
                )
            results[name] = cm.miou(), [None if math.isnan(v) else v for v in cm.iou().tolist()]
        return results

    def _handle_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second signal: stop at once, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.main:
            print(f"signal {signum}: saving a checkpoint after this step (send it again to stop at once)",
                  file=sys.stderr, flush=True)

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train from the start (or the resumed) iteration to `train.iterations`; returns the summary."""
        T = self.cfg.train.iterations
        bar = tqdm(range(self.start_iteration, T), initial=self.start_iteration, total=T, disable=not self.main,
                   desc=self.cfg.method.name, dynamic_ncols=True, mininterval=1.0)
        handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.model.train()
        self.miou, self.train_seconds, t0 = float("nan"), 0.0, time.time()
        try:
            for it in bar:
                tic = time.time()
                values, stats = self.train_step(it)
                self.unstarted_new_run = False  # from here on a failed run stays, to inspect or resume
                self.train_seconds += time.time() - tic
                self._after_step(it + 1, values, stats, bar)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self._close()
        bar.close()
        return self._summary(time.time() - t0)

    def _after_step(self, done: int, values: dict[str, float], stats: dict[str, float], bar: tqdm) -> None:
        """Prototype trajectory, logs (with starved-class warnings), evaluation, checkpoints, a stop, as scheduled."""
        schedule, T = self.cfg.train, self.cfg.train.iterations
        if schedule.log_prototypes_every and done % schedule.log_prototypes_every == 0:
            self.trajectory.record(done, self.method.prototypes())
        warnings = shrinking_class_warnings(stats, self.info.class_names, done, self.method.shrinking_remedy)
        for message in warnings if self.main else ():
            tqdm.write(f"warning: {message}")
        if done % schedule.log_every == 0 or done == T or warnings or any(k.startswith("grad/") for k in stats):
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
            record = {"iteration": done, "lr": lr, **values, **by_class_name(stats, self.info.class_names)}
            self.log.write(TRAIN_LOG, {**record, "warnings": warnings} if warnings else record, "train")
        if done % schedule.eval_every == 0 or done == T:
            self._evaluate_and_keep_best(done, bar)
        if done % schedule.checkpoint_every == 0 or done == T:
            self.save(done)
        self._stop_if_signalled(done, bar)

    def _evaluate_and_keep_best(self, done: int, bar: tqdm) -> None:
        """Evaluate (`evaluate`), log `metrics.jsonl` (the reported model's `miou`/`per_class_iou`, and with a
        teacher each model's under `miou/<model>`), and save `best.pt` when the reported model improved."""
        results = self.evaluate()
        self.miou, per_class = results[self.reported_model_name]
        improved = not (self.best_miou >= self.miou)  # also true while best is NaN
        self.best_miou = self.miou if improved else self.best_miou
        record: dict[str, Any] = {"iteration": done, "model": self.reported_model_name, "miou": self.miou,
                                  "per_class_iou": per_class}
        line = f"iteration {done}: mIoU {100 * self.miou:.2f} (best {100 * self.best_miou:.2f})"
        self.miou_by_model = {name: miou for name, (miou, _) in results.items()}
        for name, miou in self.miou_by_model.items():
            best = self.best_by_model.get(name, math.nan)
            self.best_by_model[name] = miou if not (best >= miou) else best
        if len(results) > 1:
            for name, (miou, iou) in results.items():
                record.update({f"miou/{name}": miou, f"per_class_iou/{name}": iou})
            other = next(name for name in results if name != self.reported_model_name)
            line += f" of the {self.reported_model_name}; {other} {100 * results[other][0]:.2f}"
        self.log.write(METRICS_LOG, record, "val")
        bar.write(line)
        if improved:
            self.save(done, BEST_CHECKPOINT)

    def _stop_if_signalled(self, done: int, bar: tqdm) -> None:
        stop = torch.tensor([float(self._stop_signal is not None)], device=self.device)
        if dist.all_reduce_sum(stop).item():  # under DDP every rank stops after the same step
            signum = int(self._stop_signal or signal.SIGTERM)
            if self.saved_iteration != done:
                self.save(done)
            bar.close()
            print(f"stopped by signal {signum} at iteration {done}; checkpoint saved. "
                  f"Resume with: prcl train --resume {self.run_dir}")
            raise SystemExit(128 + signum)

    def _close(self) -> None:
        """Close the logs, stop DataLoader workers now (dropping an iterator's last reference shuts them down)
        and release the run lock (removing the run if it failed in its first step)."""
        self.log.close()
        self.labeled = self.unlabeled = None
        self._discard_if_unstarted()

    def _summary(self, wall_seconds: float) -> dict[str, Any]:
        cfg, T = self.cfg, self.cfg.train.iterations
        d = cfg.data
        images_per_it = d.batch_size + ((d.unlabeled_batch_size or d.batch_size) if self.method.uses_unlabeled else 0)
        summary = {
            "method": cfg.method.name,
            "evaluated_model": self.reported_model_name,  # the reported model (the key predates the name)
            "miou": self.miou,
            "best_miou": self.best_miou,
            "miou_by_model": self.miou_by_model,
            "best_miou_by_model": self.best_by_model,
            "iterations": T,
            "wall_seconds": wall_seconds,
            "images_per_second": images_per_it * (T - self.start_iteration) / self.train_seconds
            if self.train_seconds else None,
            "skipped_steps": self.skipped_steps,
            "run_dir": str(self.run_dir),
        }
        if self.main:
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        return summary


def train(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """Train `cfg` and return the run summary (see `Trainer`)."""
    return Trainer(cfg, **kwargs).fit()
