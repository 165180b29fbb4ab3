"""`train.amp=bf16` runs under CPU autocast too (fp16 stays CUDA-only and is refused on CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from prcl.config import ConfigError
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.evaluate import evaluate
from prcl.engine.trainer import Trainer


def test_bf16_autocast_trains_on_cpu_with_float32_weights_and_checkpoints(make_config):
    trainer = Trainer(make_config("method.name=prcl", "train.amp=bf16", "train.device=cpu", "train.iterations=3",
                                  "data.max_val_images=2"))
    seen = []
    trainer.model.seg_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [trainer.train_step(it)[0] for it in range(3)]
    assert torch.bfloat16 in seen, "the forward did not run under bf16 autocast"
    assert all(math.isfinite(v) for step in losses for v in step.values())
    # evaluation runs under the same autocast, and predicts what float32 predicts up to bf16 rounding
    seen.clear()
    trainer.teacher.model.seg_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    in_bf16 = evaluate(trainer.teacher.model, trainer.val_dataset, trainer.info.num_classes, device=trainer.device,
                       autocast=trainer._autocast).mat
    assert seen and set(seen) == {torch.bfloat16}
    in_fp32 = evaluate(trainer.teacher.model, trainer.val_dataset, trainer.info.num_classes, device=trainer.device).mat
    assert torch.equal(in_bf16.sum(1), in_fp32.sum(1))  # the same pixels counted
    assert int((in_bf16 - in_fp32).abs().sum()) // 2 <= 0.02 * int(in_fp32.sum())  # ≤ 2 % of predictions move
    state = load_checkpoint(trainer.save(3))
    trainer.lock.release()
    for part in ("model", "teacher"):
        dtypes = {v.dtype for v in state[part].values() if v.is_floating_point()}
        assert dtypes == {torch.float32}, (part, dtypes)


def test_fp16_on_cpu_is_refused_naming_the_key(make_config):
    cfg = make_config("method.name=supervised", "train.amp=fp16", "train.device=cpu", "train.iterations=1",
                      "data.max_val_images=2")
    with pytest.raises(ConfigError, match=r"train\.amp=fp16 needs a CUDA device .*train\.amp=bf16"):
        Trainer(cfg)
    assert not cfg.run_dir.exists()  # refused before the run directory is made
