from __future__ import annotations

import torch
from torch import nn

from prcl import IGNORE_INDEX
from prcl.engine.ema import EMATeacher, ema_decay
from prcl.engine.schedules import poly_factor
from prcl.methods.mean_teacher import teacher_pseudo_labels, weighted_pseudo_label_loss
from prcl.models import DeepLabV3Plus


def test_ema_decay_schedule():
    assert ema_decay(0) == 0.0  # the teacher starts as a copy of the student
    assert ema_decay(1) == 0.5 and ema_decay(9) == 0.9
    assert ema_decay(10_000) == 0.99 and ema_decay(100, 0.999) == 1 - 1 / 101


def test_ema_update_maths_and_no_heads():
    torch.manual_seed(0)
    student = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16, rep_dim=8, prob_dim=8)
    teacher = EMATeacher(student, 0.99)
    assert teacher.model.rep_head is None and teacher.model.prob_head is None
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 32, 32))  # changes BN running stats
    teacher.update(student, step=3)  # decay = 0.75
    s = student.state_dict()
    for k, t in teacher.model.state_dict().items():
        if t.dtype.is_floating_point:
            torch.testing.assert_close(t, 0.75 * before[k] + 0.25 * s[k])
        else:
            assert torch.equal(t, s[k])
    assert not teacher.train().model.training  # always predicts in eval mode


def test_weighted_pseudo_label_loss_matches_brute_force():
    torch.manual_seed(1)
    B, C, H, W = 3, 4, 5, 6
    logits = torch.randn(B, C, H, W, dtype=torch.float64)
    pseudo = torch.randint(0, C, (B, H, W))
    pseudo[0, :2] = IGNORE_INDEX
    conf = torch.rand(B, H, W, dtype=torch.float64)
    expected = 0.0
    for b in range(B):
        logp = torch.log_softmax(logits[b], 0)
        valid = [(i, j) for i in range(H) for j in range(W) if pseudo[b, i, j] != IGNORE_INDEX]
        omega = sum(conf[b, i, j] >= 0.6 for i, j in valid) / len(valid)
        ce = -sum(logp[pseudo[b, i, j], i, j] for i, j in valid) / len(valid)
        expected += omega * ce / B
    torch.testing.assert_close(weighted_pseudo_label_loss(logits, pseudo, conf, 0.6), torch.as_tensor(expected))


def test_pseudo_labels_ignore_padding():
    class Fixed(nn.Module):
        def forward(self, x):
            return {"logits": torch.stack([x[:, 0], -x[:, 0]], 1)}

    x = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]]).expand(1, 3, 2, 2)
    padding = torch.tensor([[[False, False], [False, True]]])
    pseudo, conf, runner_up, _ = teacher_pseudo_labels(Fixed(), x, padding)
    assert pseudo.tolist() == [[[0, 1], [0, IGNORE_INDEX]]]
    assert runner_up.tolist() == [[[1, 0], [1, IGNORE_INDEX]]]
    torch.testing.assert_close(conf[0, 0, 0], torch.sigmoid(torch.tensor(4.0)))
    assert conf[0, 1, 1] == 0


def test_poly_schedule():
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert abs(poly_factor(50, 100, 0.9) - 0.5**0.9) < 1e-12
