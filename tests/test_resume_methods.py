"""Resuming gives exactly the uninterrupted run, for every method preset: T iterations straight equal
T/2, a stop with a checkpoint (as on SIGTERM), then `resume=True` to T, bit for bit: student, teacher,
method state (GDP, EMA prototypes, memory bank), optimizer, scheduler, RNG states, the logged losses and
mIoU. One more PRCL run adds pseudo-label noise, a memory bank, and the gradient and reliability
diagnostics on both sides of the resume point."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from prcl.config import METHOD_PRESETS
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.trainer import Trainer

pytestmark = pytest.mark.slow  # end-to-end trainings or spawned processes: `-m "not slow"` skips them

T = 4
COMMON = [f"train.iterations={T}", f"train.eval_every={T // 2}", f"train.checkpoint_every={T // 2}",
          "train.log_every=1", "data.max_val_images=2"]
NOISY = ["method.name=prcl", "method.pseudo_label_noise=0.3", "train.diagnostics_every=2",  # at 1, 2 and 4
         "method.unsup_threshold=0.0", "method.contrastive.weak_threshold=0.0",  # confident pixels from the start
         "method.contrastive.memory_bank.enabled=true", "method.contrastive.memory_bank.size=800"]
STATEFUL = {"baseline_plus", "prcl", "unimatch_prcl", "unimatch_v2_prcl", "prcl_noise_bank_diagnostics"}  # prototypes
RUNS = {**{name: [f"method.name={name}"] for name in METHOD_PRESETS}, "prcl_noise_bank_diagnostics": NOISY}


def _train(make_config, name: str, overrides: list[str], *, stop_at: int | None = None) -> Path:
    """Train to T, or stop after iteration `stop_at` with a checkpoint (the SIGTERM path) and resume to T
    in a new trainer; returns the run directory."""
    cfg = make_config(*COMMON, *overrides, f"name={name}")
    trainer = Trainer(cfg)
    if stop_at is not None:
        step = trainer.train_step

        def step_then_signal(iteration: int):
            out = step(iteration)
            if iteration + 1 == stop_at:
                trainer._stop_signal = signal.SIGTERM
            return out

        trainer.train_step = step_then_signal
        with pytest.raises(SystemExit):
            trainer.fit()
        assert load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["iteration"] == stop_at
        trainer = Trainer(cfg, resume=True)
        assert trainer.start_iteration == stop_at
    trainer.fit()
    return cfg.run_dir


def _flat(state, where: str = "") -> dict[str, object]:
    """Checkpoint contents as {dotted path: leaf}: tensors, numbers, strings (RNG states, optimizer settings)."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flat(value, f"{where}.{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _flat(value, f"{where}[{i}]").items()}
    return {where: state}


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b or (a != a and b != b)  # NaN (best_miou before an evaluation) equals NaN


def _log(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


@pytest.mark.parametrize("run", list(RUNS))
def test_resumed_run_equals_the_uninterrupted_run(make_config, run):
    full = _train(make_config, "full", RUNS[run])
    resumed = _train(make_config, "resumed", RUNS[run], stop_at=T // 2)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (full, resumed))
    assert a["iteration"] == b["iteration"] == T
    assert (a["teacher"] is not None) == (run not in ("supervised", "fixmatch", "unimatch", "unimatch_prcl"))
    a.pop("config"), b.pop("config")  # the run names differ
    a, b = _flat(a), _flat(b)  # model, teacher, method, optimizer, scheduler, scaler, rng, best_miou
    assert a.keys() == b.keys()
    seen = [bool(a[k].any()) for k in a if k.startswith(".method.") and k.endswith(".initialized")]
    assert seen == ([True] if run in STATEFUL else [])  # the prototypes to restore were updated
    differ = [k for k in a if not _same(a[k], b[k])]
    assert not differ, f"{len(differ)} entries of last.pt differ, in {sorted({k.split('.')[1] for k in differ})}: " \
                       f"{differ[:4]}"
    logs = {name: _log(full, name) for name in ("train_log.jsonl", "metrics.jsonl")}
    assert [r["iteration"] for r in logs["train_log.jsonl"]] == list(range(1, T + 1))
    assert [r["iteration"] for r in logs["metrics.jsonl"]] == [T // 2, T]
    for name, records in logs.items():
        assert _log(resumed, name) == records, name  # JSON floats round-trip exactly
    if run == "prcl_noise_bank_diagnostics":  # the diagnostics ran before and after the resume point
        for prefix in ("grad/", "reliability/confident/"):  # (the pseudo-labels' recall is logged every step)
            logged = [r["iteration"] for r in logs["train_log.jsonl"] if any(k.startswith(prefix) for k in r)]
            assert logged == [1, 2, 4], prefix
        assert a[".method.contrast.loss.bank.filled"].sum() > 0
