"""Options that carry the authors' recipes into short runs (issue 27): the teacher's EMA horizon scaled to
the run's length, and UniMatch V2's complementary dropout with one channel draw shared by every encoder level."""

from __future__ import annotations

import pytest
import torch

from prcl.engine.ema import rescaled_ema_decay
from prcl.engine.trainer import Trainer
from prcl.models import build_model
from prcl.models.feature_perturbation import complementary_channel_masks


@pytest.mark.parametrize("decay, reference, iterations, expected", [
    (0.996, 39_300, 400, 1 - 157.2 / 400),  # UniMatch V2 at VOC 92: a 250-step horizon = 0.64% of 39,300
    (0.99, 80_000, 400, 0.0),  # PRCL's 100 steps of 80k: under one step of a 400-step run, so the student
    (0.99, 1_000, 1_000, 0.99),  # the run it was made for: unchanged
    (0.9, 100, 2_000, 1 - 1 / 200),  # a longer run: a longer horizon (10 steps of 100 -> 200 of 2000)
])
def test_rescaled_decay_keeps_the_horizon_a_fixed_fraction_of_training(decay, reference, iterations, expected):
    scaled = rescaled_ema_decay(decay, reference, iterations)
    assert scaled == pytest.approx(expected, abs=1e-12)
    if scaled > 0:  # time constant / run length is the reference's
        assert (1 / (1 - scaled)) / iterations == pytest.approx((1 / (1 - decay)) / reference, rel=1e-9)


def test_the_trainer_builds_its_teacher_with_the_rescaled_decay(make_config):
    plain = Trainer(make_config("method.name=unimatch_v2", "train.iterations=400"))
    plain.lock.release()
    scaled = Trainer(make_config("method.name=unimatch_v2", "train.iterations=400", "name=scaled",
                                 "method.ema_reference_iterations=39300"))
    scaled.lock.release()
    assert plain.teacher.max_decay == 0.996
    assert scaled.teacher.max_decay == pytest.approx(0.607, abs=1e-9)


@pytest.mark.parametrize("pairs", [1, 4, 7])
def test_a_shared_draw_gives_every_level_the_first_channels_of_one_mask(pairs):
    torch.manual_seed(0)
    low, high = complementary_channel_masks(pairs, (24, 40), shared=True)
    assert low.shape == (2 * pairs, 24) and high.shape == (2 * pairs, 40)
    assert torch.equal(low, high[:, :24])
    for mask in (low, high):
        assert torch.equal(mask[:pairs] + mask[pairs:], torch.full_like(mask[:pairs], 2.0))  # complementary
        kept = (mask[:pairs] == 1).all(1)
        assert int(kept.sum()) == pairs // 2 and set(mask[:pairs][~kept].unique().tolist()) <= {0.0, 2.0}


def test_per_level_draws_are_independent():
    torch.manual_seed(0)
    low, high = complementary_channel_masks(16, (24, 40), shared=False)
    dropped = (high[:16] != 1).all(1)  # images whose masks drop channels
    assert not torch.equal(low[:16][dropped], high[:16, :24][dropped])


def test_the_model_draws_its_masks_as_configured(make_config):
    for choice, shared in (("shared", True), ("per_level", False)):
        model = build_model(make_config("method.name=unimatch_v2", f"model.complementary_mask={choice}"), 8)
        assert model.shared_channel_mask is shared
        with torch.no_grad():
            features = [torch.ones(4, 8, 6, 6), torch.ones(4, 16, 3, 3)]
            torch.manual_seed(1)
            low, high = model.complementary_masks(features)
        assert torch.equal(low, high[:, :8]) is shared
