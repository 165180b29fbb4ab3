"""UniMatch V2 (issue 21): complementary dropout masks, pseudo-labels from the EMA teacher (not the
student), the loss (Ls + (L_s1 + L_s2)/2)/2 with one forward of both strong views under complementary
dropout, the V2 preset, the contrast's rows in `unimatch_v2_prcl`, and OHEM against a float64 brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.config import load_config
from prcl.losses.cross_entropy import ohem_cross_entropy, supervised_loss
from prcl.methods import build_method
from prcl.models.feature_perturbation import complementary_channel_masks

LOG3 = math.log(3.0)


@pytest.mark.parametrize("pairs", [1, 2, 7, 8])
def test_complementary_masks_sum_to_two_where_dropped_and_are_one_where_kept(pairs):
    torch.manual_seed(pairs)
    first_level, second_level = complementary_channel_masks(pairs, (64, 5))
    for mask in (first_level, second_level):
        view_1, view_2 = mask[:pairs], mask[pairs:]
        kept = (view_1 == 1).all(1)
        assert torch.equal(kept, (view_2 == 1).all(1)), "an image keeps all channels in both views or in neither"
        assert int(kept.sum()) == pairs // 2  # UniMatch V2: ⌊B/2 · (1 − 0.5)⌋ images keep everything
        dropped = ~kept
        assert torch.equal(view_1[dropped] + view_2[dropped], torch.full_like(view_1[dropped], 2.0))
        assert set(view_1[dropped].unique().tolist()) <= {0.0, 2.0}
    assert torch.equal((first_level[:pairs] == 1).all(1), (second_level[:pairs] == 1).all(1)), "levels share the kept images"
    drops = complementary_channel_masks(4000, (16,))[0][:4000]
    drops = drops[(drops != 1).any(1)]
    assert 0.45 < float((drops == 0).float().mean()) < 0.55  # {0, 2} with probability ½ each


def test_complementary_dropout_masks_the_encoder_features_of_the_model():
    """Through DeepLabv3+: the decoder reads backbone features multiplied by the two views' masks."""
    from prcl.models import DeepLabV3Plus

    torch.manual_seed(0)
    model = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16, low_level_channels=8,
                          head_channels=16).eval()
    seen: list[torch.Tensor] = []
    model.reduce.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(torch.cat([image, image]))
        model(torch.cat([image, image]), complementary_dropout=True)
    clean, masked = seen[0], seen[1]
    ratio = masked / clean.clamp(min=1e-6)
    per_channel = torch.where(clean.abs() > 1e-6, ratio, torch.nan).nanmean((2, 3))  # [4, C]
    pair_sum = per_channel[:2] + per_channel[2:]  # NaN where a channel is zero (ReLU) in the clean pass
    live = ~pair_sum.isnan()
    assert live.float().mean() > 0.5 and torch.allclose(pair_sum[live], torch.tensor(2.0), atol=1e-4)
    assert set(per_channel[live.repeat(2, 1)].round().unique().tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="odd batch"):
        model(image[:1], complementary_dropout=True)


class LabelStub(torch.nn.Module):
    """Confident logits for one class everywhere (`label`); records the calls' inputs and switches."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, x, heads=True, feature_dropout=0.0, complementary_dropout=False):
        self.calls.append({"batch": x.shape[0], "complementary_dropout": complementary_dropout,
                           "training": self.training, "grad": torch.is_grad_enabled()})
        logits = self.w + torch.zeros(x.shape[0], 3, *x.shape[2:])
        if not torch.is_grad_enabled():  # the pseudo-label passes (no gradient): confident
            logits = logits + 10.0 * F.one_hot(torch.tensor(self.label), 3).float()[None, :, None, None]
        return {"logits": logits}


def batches(n_l: int = 1, n_u: int = 2, size: int = 8):
    padding = torch.zeros(n_u, size, size, dtype=torch.bool)
    unlabeled = {"image": torch.zeros(n_u, 3, size, size), "padding": padding,
                 "image_strong": torch.zeros(n_u, 3, size, size), "image_strong2": torch.zeros(n_u, 3, size, size)}
    labeled = {"image": torch.zeros(n_l, 3, size, size), "mask": torch.zeros(n_l, size, size, dtype=torch.long)}
    return labeled, unlabeled


def test_pseudo_labels_come_from_the_ema_teacher_and_the_loss_is_v2s(monkeypatch):
    import prcl.methods.fixmatch as frame  # every unlabeled term of the FixMatch family goes through its loss

    targets: list[torch.Tensor] = []
    real = frame.thresholded_pseudo_label_loss
    monkeypatch.setattr(frame, "thresholded_pseudo_label_loss", lambda logits, pseudo, conf, tau, weight=None:
                        targets.append(pseudo) or real(logits, pseudo, conf, tau, weight))
    method = build_method(load_config(None, ["method.name=unimatch_v2", "method.mix=cutmix"]), 3)
    assert method.uses_teacher and method.cfg.method.ema_decay == 0.996 and method.loss_scale == 0.5
    student, teacher = LabelStub(label=1).train(), LabelStub(label=2).eval()
    labeled, unlabeled = batches()
    step = method.losses(student, teacher, labeled, unlabeled, 0.0)
    assert len(targets) == 2 and all(bool((t == 2).all()) for t in targets), "the teacher's class, both views"
    assert [c["batch"] for c in student.calls] == [1, 4], "the labeled images, then [strong 1; strong 2]"
    assert [c["complementary_dropout"] for c in student.calls] == [False, True]
    assert all(c["training"] and c["grad"] for c in student.calls), "the student never labels"
    assert [c["grad"] for c in teacher.calls] == [False]
    # the train-mode stub is uniform: CE = log 3 everywhere; every pixel is confident and not padding
    assert float(step.terms["sup"].detach()) == pytest.approx(0.5 * LOG3)  # Ls / 2
    assert float(step.terms["unsup"].detach()) == pytest.approx(0.5 * (0.5 * LOG3 + 0.5 * LOG3))  # (L_s1+L_s2)/2 / 2
    assert set(step.terms) == {"sup", "unsup"} and step.stats["pseudo_confident"] == 1.0


@pytest.mark.slow
def test_unimatch_v2_prcl_runs_the_heads_on_the_labeled_rows_and_strong_view_1(make_config):
    from prcl.engine.trainer import Trainer

    trainer = Trainer(make_config("method.name=unimatch_v2_prcl", "train.iterations=1", "data.max_val_images=2"))
    seen: list[int] = []
    trainer.model.prob_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    trainer.train_step(0)
    n_l, n_u = trainer.cfg.data.batch_size, trainer.cfg.data.batch_size
    assert seen == [n_l, n_u]  # [labeled] of the first forward, [strong 1] of the second
    assert trainer.teacher is not None and trainer.teacher.model.prob_head is None


def _ohem_reference(logits: torch.Tensor, target: torch.Tensor, threshold: float, min_kept: int) -> float:
    """Float64 brute force: sort the labeled pixels by true-class probability, keep those ≤ the cut."""
    lg, t = logits.double().permute(0, 2, 3, 1).reshape(-1, logits.shape[1]), target.reshape(-1)
    valid = t != IGNORE_INDEX
    lg, t = lg[valid], t[valid]
    p = torch.softmax(lg, 1)[torch.arange(len(t)), t]
    if len(t) <= min_kept:
        keep = torch.ones_like(p, dtype=torch.bool)
    else:
        cut = max(threshold, float(torch.sort(p).values[min_kept - 1])) if min_kept > 0 else threshold
        keep = p <= cut
    ce = -torch.log_softmax(lg, 1)[torch.arange(len(t)), t]
    return float(ce[keep].mean())


@pytest.mark.parametrize("threshold, min_kept", [(0.7, 10), (0.7, 200), (0.2, 100), (0.9, 0), (0.7, 10_000)])
def test_ohem_equals_the_float64_brute_force(threshold, min_kept):
    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 4, 16, 16)
    target = torch.randint(0, 4, (2, 16, 16))
    target[0, :4] = IGNORE_INDEX
    got = float(ohem_cross_entropy(logits, target, threshold, min_kept))
    assert got == pytest.approx(_ohem_reference(logits, target, threshold, min_kept), rel=1e-5)


def test_ohem_keeps_the_easy_pixels_out_of_the_gradient_and_is_ce_when_few_are_labeled():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, :2] = 10.0  # pixels 0, 1: confident and right (easy); pixels 2, 3: p = 0.5 (hard)
    logits.requires_grad_(True)
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    ohem_cross_entropy(logits, target, threshold=0.7, min_kept=1).backward()
    assert torch.equal(logits.grad[0, :, 0, :2], torch.zeros(2, 2)) and logits.grad[0, :, 0, 2:].abs().sum() > 0
    plain = F.cross_entropy(logits.detach(), target)
    assert float(ohem_cross_entropy(logits.detach(), target, 0.7, min_kept=4)) == pytest.approx(float(plain))
    assert float(supervised_loss(logits.detach(), target, "ce")) == pytest.approx(float(plain))
    with pytest.raises(ValueError, match="supervised_loss"):
        supervised_loss(logits, target, "focal")
