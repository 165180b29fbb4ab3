"""Using a checkpoint: the evaluated network is loaded strictly (a missing weight is an error naming it,
never a random layer), and `prcl predict` overlays carry a legend of the predicted classes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from prcl.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from prcl.engine.trainer import Trainer
from prcl.inference import model_from_checkpoint


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory):
    """An untrained PRCL run's last.pt: the student has rep/prob heads, the teacher none."""
    from conftest import tiny_config

    trainer = Trainer(tiny_config(synth_root, tmp_path_factory.mktemp("runs"), "method.name=prcl",
                                  "data.max_val_images=2"))
    path = trainer.save(0)
    trainer.lock.release()
    return path


def test_the_evaluated_teacher_has_exactly_the_saved_weights(checkpoint):
    state = load_checkpoint(checkpoint)
    teacher = model_from_checkpoint(checkpoint)[0]
    assert teacher.rep_head is None and teacher.prob_head is None
    assert teacher.state_dict().keys() == state["teacher"].keys()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state["teacher"][k]), k
    student = model_from_checkpoint(checkpoint, which="student")[0]
    assert student.state_dict().keys() == state["model"].keys() and student.prob_head is not None


@pytest.mark.parametrize("part, which, key", [("teacher", "evaluated", "seg_head.1.weight"),
                                              ("teacher", "evaluated", "aspp.project.0.1.running_var"),
                                              ("model", "student", "prob_head.net.0.weight")])
def test_a_checkpoint_missing_a_weight_is_an_error_naming_it(checkpoint, tmp_path, part, which, key):
    state = load_checkpoint(checkpoint)
    assert key in state[part]
    del state[part][key]
    damaged = tmp_path / "damaged.pt"
    save_checkpoint(state, damaged)
    with pytest.raises(CheckpointError, match=rf"damaged\.pt lacks {part} weights: {re.escape(key)};"):
        model_from_checkpoint(damaged, which=which)


def test_a_checkpoint_with_an_unexpected_weight_is_an_error_naming_it(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["teacher"]["rep_head.1.weight"] = torch.zeros(1)  # the teacher has no representation head
    damaged = tmp_path / "damaged.pt"
    save_checkpoint(state, damaged)
    with pytest.raises(CheckpointError, match=r"has unexpected teacher weights: rep_head\.1\.weight"):
        model_from_checkpoint(damaged)
