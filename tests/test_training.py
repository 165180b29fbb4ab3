"""End-to-end: a short CPU training learns, and resuming gives exactly the uninterrupted run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from prcl.config import ConfigError
from prcl.engine.trainer import Trainer, train


@pytest.mark.slow
def test_short_supervised_training_beats_chance(make_config):
    cfg = make_config("method.name=supervised", "train.iterations=100", "train.eval_every=100", "data.crop_size=64",
                      "data.batch_size=8", "data.labeled_split=splits/full/labeled.txt", "optim.name=sgd",
                      "optim.lr=0.05")
    summary = train(cfg)
    # 8 classes; an untrained network scores ~1-5 mIoU, predicting background everywhere ~10.
    assert summary["miou"] > 0.25, summary
    run = cfg.run_dir
    assert {"config.yaml", "metrics.jsonl", "summary.json", "train_log.jsonl", "tb", "checkpoints"} <= {
        p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 100 and len(record["per_class_iou"]) == 8
    assert set(json.loads((run / "summary.json").read_text())) >= {
        "method", "miou", "best_miou", "iterations", "wall_seconds", "images_per_second"}


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    if trainer.teacher is not None:
        state.update({f"teacher.{k}": v for k, v in trainer.teacher.model.state_dict().items()})
    state.update({f"method.{k}": v for k, v in trainer.method.state_dict().items()})
    return state


@pytest.mark.slow
@pytest.mark.parametrize("method", ["classmix", "prcl", "fixmatch", "unimatch_prcl", "unimatch_v2_prcl"])
def test_resume_equals_uninterrupted_run(make_config, method):
    common = [f"method.name={method}", "train.iterations=6", "train.eval_every=100", "data.max_val_images=2"]
    full = Trainer(make_config(*common, "name=full"))
    full.fit()
    half = make_config(*common, "name=half", "train.checkpoint_every=3")
    trainer = Trainer(half)
    trainer._stop_signal = None
    # run the first 3 iterations, then "crash": a fresh process resumes from last.pt
    for it in range(3):
        trainer.train_step(it)
    trainer.save(3)
    trainer.lock.release()  # the crashed process's run lock goes with it
    resumed = Trainer(half, resume=True)
    assert resumed.start_iteration == 3
    resumed.fit()
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_run_dir_and_changed_resume_are_refused(make_config):
    cfg = make_config("method.name=supervised", "train.iterations=2", "train.eval_every=2", "data.max_val_images=2")
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg)
    changed = make_config("method.name=supervised", "train.iterations=2", "train.eval_every=2",
                          "data.max_val_images=2", "optim.lr=0.5")
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer(changed, resume=True)
    Trainer(changed, resume=True, force=True)  # allowed when forced
    Trainer(cfg, overwrite=True)


@pytest.mark.slow
def test_prototype_trajectory_is_logged(make_config):
    cfg = make_config("method.name=prcl", "train.iterations=6", "train.eval_every=6", "data.max_val_images=2",
                      "train.log_prototypes_every=2")
    train(cfg)
    traj = torch.load(cfg.run_dir / "prototype_trajectory.pt", weights_only=True)
    assert traj["iterations"].tolist() == [2, 4, 6]
    assert traj["local"].shape == traj["gdp"].shape == (3, 8, 16)
    seen = torch.isfinite(traj["gdp"]).all(2)
    assert seen[0].any() and (seen[1:] >= seen[:-1]).all()  # a class once seen keeps its GDP


@pytest.mark.slow
@pytest.mark.parametrize("switch", [
    "channels_last",
    pytest.param("compile", marks=pytest.mark.skipif(
        shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")),
])
def test_speed_switches_train_like_the_default(make_config, switch):
    """`train.channels_last` (memory layout) and `train.compile` (torch.compile of the student) change
    speed only: every loss term of every step and every parameter and buffer equal up to float error, and
    checkpoints with the plain module's keys. Dropout is switched off: its mask is drawn in memory order, so it
    differs between layouts. SGD, not AdamW: Adam's per-element normalisation turns float-level differences in
    near-zero gradients into lr-sized steps, so its weights cannot be compared element by element."""
    common = ["method.name=supervised", "train.iterations=3", "train.eval_every=100", "data.max_val_images=2",
              "optim.name=sgd", "optim.lr=0.05"]
    runs = {}
    for on in ("false", "true"):
        trainer = Trainer(make_config(*common, f"name={switch}-{on}", f"train.{switch}={on}"))
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        assert hasattr(trainer.student, "_orig_mod") == (switch == "compile" and on == "true")
        initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        losses = [trainer.train_step(it)[0] for it in range(3)]
        trainer.save(3)
        saved = torch.load(trainer.ckpt_dir / "last.pt", weights_only=True)["model"]
        runs[on] = (losses, trainer.model.state_dict(), saved, initial)
    (loss_a, state_a, saved_a, init_a), (loss_b, state_b, saved_b, init_b) = runs["false"], runs["true"]
    assert len(loss_a) == len(loss_b) == 3
    for a, b in zip(loss_a, loss_b):  # every loss term of every step
        assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-4)
    assert saved_a.keys() == saved_b.keys() == state_a.keys() == state_b.keys()
    if switch == "channels_last":
        assert next(p for p in state_b.values() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    trained = {k for k in state_a if not torch.equal(state_a[k], init_a[k])}
    assert len(trained) > len(state_a) // 2, "the steps trained the model"
    for k in state_a:  # every parameter and buffer (BatchNorm statistics, counters), and what was saved
        assert torch.equal(init_a[k], init_b[k]), k  # the same initial weights
        assert state_a[k].dtype == state_b[k].dtype, k
        if state_a[k].is_floating_point():
            torch.testing.assert_close(state_b[k], state_a[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(state_a[k], state_b[k]), k
        assert torch.equal(saved_b[k], state_b[k]) and torch.equal(saved_a[k], state_a[k]), k
    assert {k for k in state_b if not torch.equal(state_b[k], init_b[k])} == trained
