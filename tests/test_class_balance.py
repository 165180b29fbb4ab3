"""The class balance of the pseudo-labels (issue #35): the statistics against a numpy recomputation, the
remedies against their formulas, the warning through a real training run (a planted imbalance warns, a
balanced labeler does not), and the config rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from prcl import IGNORE_INDEX
from prcl.config import ConfigError, load_config
from prcl.engine.class_warnings import by_class_name
from prcl.engine.trainer import Trainer
from prcl.methods import mean_teacher
from prcl.methods.class_balance import ClassBalance, flexmatch_map, pseudo_label_recall_precision
from prcl.methods.fixmatch import thresholded_pseudo_label_loss
from prcl.methods.mean_teacher import weighted_pseudo_label_loss
from prcl.methods.pseudo_labels import PseudoLabels

C = 3


def _balance(*overrides: str) -> ClassBalance:
    return ClassBalance(load_config(None, ["method.name=classmix", *overrides]), C)


def _step(rng: np.random.Generator, shares: list[float], labeled_shares: list[float], size=(2, 8, 8)):
    """A labeled mask with `labeled_shares`, pseudo-labels drawn with `shares`, confidences in [0, 1)."""
    labeled = torch.from_numpy(rng.choice(C, size=size, p=labeled_shares))
    pseudo = torch.from_numpy(rng.choice(C, size=size, p=shares))
    confidence = torch.from_numpy(rng.random(size)).float()
    probs = torch.from_numpy(rng.dirichlet(np.ones(C), size=size)).float().movedim(-1, 1)
    pseudo[0, 0, :3] = IGNORE_INDEX  # crop padding
    return labeled, probs, pseudo, confidence


def test_statistics_equal_a_numpy_recomputation():
    balance, rng, m = _balance("method.class_balance.momentum=0.5"), np.random.default_rng(0), 0.5
    labeled_total, share, mean_pred = np.zeros(C), None, None
    for _ in range(4):
        labeled, probs, pseudo, confidence = _step(rng, [0.9, 0.08, 0.02], [0.6, 0.3, 0.1])
        balance.observe(labeled, probs, pseudo, confidence, threshold=0.5, progress=1.0)
        lab, p, conf = labeled.numpy(), pseudo.numpy(), confidence.numpy()
        labeled_total += np.bincount(lab.ravel(), minlength=C)
        valid = p != IGNORE_INDEX
        counts = np.bincount(p[valid & (conf >= 0.5)], minlength=C)
        step_share = counts / counts.sum()
        step_pred = probs.numpy().transpose(0, 2, 3, 1)[valid].mean(0)
        share = step_share if share is None else m * share + (1 - m) * step_share
        mean_pred = step_pred if mean_pred is None else m * mean_pred + (1 - m) * step_pred
    np.testing.assert_allclose(balance.labeled_share().numpy(), labeled_total / labeled_total.sum(), rtol=1e-12)
    np.testing.assert_allclose(balance.confident_share.numpy(), share, rtol=1e-12)
    np.testing.assert_allclose(balance.mean_prediction.numpy(), mean_pred, rtol=1e-6)
    ratio = share / (labeled_total / labeled_total.sum())
    np.testing.assert_allclose(balance.share_ratio().numpy(), ratio, rtol=1e-12)
    assert balance.starved.tolist() == (ratio < 0.5).tolist() == [False, True, True]
    prediction_ratio = mean_pred / (labeled_total / labeled_total.sum())
    np.testing.assert_allclose(balance.prediction_ratio().numpy(), prediction_ratio, rtol=1e-6)
    assert balance.shrinking.tolist() == (prediction_ratio < 0.6).tolist()


def test_a_class_turns_shrinking_once_after_the_ema_horizon_in_the_second_half():
    balance, rng = _balance("method.class_balance.momentum=0.8"), np.random.default_rng(1)  # horizon: 5 steps
    turned = []
    for step in range(10):
        labeled, _, pseudo, confidence = _step(rng, [0.97, 0.02, 0.01], [0.5, 0.3, 0.2])
        probs = torch.nn.functional.one_hot(pseudo.clamp(max=C - 1), C).movedim(-1, 1).float()  # it predicts its labels
        balance.observe(labeled, probs, pseudo, confidence, threshold=0.0, progress=step / 16)
        turned.append(balance.newly_shrinking.tolist())
        stats = balance.stats(pseudo, confidence, threshold=0.0)
        assert stats.get("class_balance/newly_shrinking/1", 0.0) == float(turned[-1][1])
    assert turned[:8] == [[False] * 3] * 8  # within the horizon (steps 0-3) or the first half (steps 4-7): not judged
    assert turned[8] == [False, True, True] and turned[9] == [False] * 3  # warned once
    assert balance.starved.tolist() == [False, True, True]  # starved (confident shares) from the horizon on


def test_no_step_without_confident_pixels_moves_the_shares():
    balance, rng = _balance(), np.random.default_rng(2)
    labeled, probs, pseudo, confidence = _step(rng, [0.5, 0.3, 0.2], [0.4, 0.3, 0.3])
    balance.observe(labeled, probs, pseudo, confidence, threshold=1.1, progress=0.0)  # nothing is confident
    assert int(balance.confident_steps) == 0 and balance.share_ratio().tolist() == [1.0] * C
    assert balance.thresholds(pseudo, 0.9) == 0.9  # adaptive or not, no evidence: the fixed threshold


def test_adaptive_thresholds_lower_only_the_starved_classes_by_flexmatch_map():
    balance, rng = _balance("method.class_balance.threshold=adaptive", "method.class_balance.momentum=0.5"), \
        np.random.default_rng(3)
    pseudo = torch.tensor([[[0, 1, 2, IGNORE_INDEX]]])
    for _ in range(2):  # balanced pseudo-labels: nothing is starved, every class keeps τ
        balance.observe(*_step(rng, [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], size=(4, 16, 16)), threshold=0.0, progress=0.0)
    assert not balance.starved.any() and balance.thresholds(pseudo, 0.95) == 0.95
    balance.labeled_pixels.copy_(torch.tensor([50.0, 30.0, 20.0], dtype=torch.float64))
    balance.confident_share.copy_(torch.tensor([0.7, 0.27, 0.03], dtype=torch.float64))
    balance.starved.copy_(torch.tensor([False, False, True]))  # r = 1.4, 0.9, 0.15 against ρ = 0.5
    per_pixel = balance.thresholds(pseudo, 0.95)
    x = 0.15 / 0.5
    np.testing.assert_allclose(per_pixel[0, 0, :3].numpy(), [0.95, 0.95, 0.95 * x / (2 - x)], rtol=1e-6)
    assert float(flexmatch_map(torch.tensor(0.0))) == 0 and float(flexmatch_map(torch.tensor(1.0))) == 1
    assert _balance().thresholds(pseudo, 0.95) == 0.95  # fixed: the scalar itself


def test_distribution_alignment_is_remixmatch_and_off_by_default():
    balance = _balance("method.class_balance.alignment=distribution")
    balance.labeled_pixels.copy_(torch.tensor([80.0, 15.0, 5.0], dtype=torch.float64))
    balance.mean_prediction.copy_(torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64))
    balance.steps.fill_(3)
    probs = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    raw = np.array([0.6, 0.3, 0.1]) * np.array([0.8, 0.15, 0.05]) / np.array([0.9, 0.08, 0.02])
    np.testing.assert_allclose(balance.align(probs).flatten().numpy(), raw / raw.sum(), rtol=1e-6)
    assert _balance().align(probs) is probs


def test_class_balanced_weights_make_the_confident_classes_weigh_as_the_labeled_ones():
    balance = _balance("method.class_balance.weighting=class_balanced", "method.class_balance.max_weight=5")
    balance.labeled_pixels.copy_(torch.tensor([60.0, 30.0, 10.0], dtype=torch.float64))
    balance.confident_share.copy_(torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64))
    balance.confident_steps.fill_(1)
    weights = balance.weights(torch.tensor([[[0, 1, 2]]]))[0, 0]
    np.testing.assert_allclose(weights.numpy(), [0.6 / 0.9, 0.3 / 0.09, 5.0], rtol=1e-6)  # the last one capped
    assert _balance().weights(torch.tensor([[[0]]])) is None


@pytest.mark.parametrize("loss", [thresholded_pseudo_label_loss, weighted_pseudo_label_loss])
def test_per_pixel_thresholds_and_weights_reach_the_unlabeled_loss(loss):
    g = torch.Generator().manual_seed(0)
    logits, pseudo = torch.randn(2, C, 4, 4, generator=g), torch.randint(0, C, (2, 4, 4), generator=g)
    confidence = torch.rand(2, 4, 4, generator=g)
    assert torch.equal(loss(logits, pseudo, confidence, torch.full((2, 4, 4), 0.5)), loss(logits, pseudo, confidence, 0.5))
    per_pixel = torch.where(pseudo == 1, 0.0, 2.0)  # only class 1 passes
    assert torch.allclose(loss(logits, pseudo, confidence, per_pixel),
                          loss(logits, pseudo, torch.where(pseudo == 1, 1.0, 0.0), 0.5))
    assert torch.allclose(loss(logits, pseudo, confidence, 0.5, torch.full((2, 4, 4), 3.0)),
                          3 * loss(logits, pseudo, confidence, 0.5))


def test_confident_pixels_loss_is_fixmatchs_and_leaves_the_unsure_pixels_alone():
    """`method.unsup_pixels=confident`: the CE of the confident pixels over each image's valid pixels (float64
    brute force), no ω, and no gradient into a pixel below the threshold (Eq. 14's `all` pulls every pixel)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, C, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pseudo, confidence = torch.randint(0, C, (2, 4, 4), generator=g), torch.rand(2, 4, 4, generator=g)
    pseudo[0, 0, 0] = IGNORE_INDEX
    loss = weighted_pseudo_label_loss(logits, pseudo, confidence, 0.5, pixels="confident")
    expected = []
    for b in range(2):
        terms = [-torch.log_softmax(logits[b, :, i, j], 0)[pseudo[b, i, j]] for i in range(4) for j in range(4)
                 if pseudo[b, i, j] != IGNORE_INDEX and confidence[b, i, j] >= 0.5]
        expected.append(sum(terms) / int((pseudo[b] != IGNORE_INDEX).sum()))
    assert torch.allclose(loss, sum(expected) / 2)
    loss.backward()
    unsure = (confidence < 0.5) & (pseudo != IGNORE_INDEX)
    assert unsure.any() and logits.grad.movedim(1, -1)[unsure].abs().max() == 0
    every = torch.autograd.grad(weighted_pseudo_label_loss(logits, pseudo, confidence, 0.5), logits)[0]
    assert every.movedim(1, -1)[unsure].abs().min() > 0  # Eq. 14 trains them toward the arg-max


def test_unsup_pixels_belongs_to_the_families_that_have_a_choice():
    assert load_config(None, ["method.name=classmix"]).method.unsup_pixels == "all"  # Eq. 14
    assert load_config(None, ["method.name=unimatch"]).method.unsup_pixels == "confident"  # its preset
    assert load_config(None, ["method.name=prcl", "method.unsup_pixels=confident"]).method.unsup_pixels == "confident"
    with pytest.raises(ConfigError, match="unimatch's loss is FixMatch's"):
        load_config(None, ["method.name=unimatch", "method.unsup_pixels=all"])
    with pytest.raises(ConfigError, match="method.unsup_pixels=confident acts on pseudo-labels"):
        load_config(None, ["method.name=supervised", "method.unsup_pixels=confident"])


def test_pseudo_label_recall_and_precision_per_class():
    truth = torch.tensor([[0, 0, 1, 1, 2, IGNORE_INDEX]])
    pseudo = torch.tensor([[0, 1, 1, 0, 0, 2]])
    confidence = torch.tensor([[0.9, 0.9, 0.9, 0.2, 0.9, 0.9]])
    out = pseudo_label_recall_precision(pseudo, confidence, 0.5, truth, C)
    assert out == {"reliability/pseudo_recall/0": 0.5, "reliability/pseudo_recall/1": 0.5,
                   "reliability/pseudo_recall/2": 0.0, "reliability/pseudo_precision/0": 0.5,
                   "reliability/pseudo_precision/1": 0.5}


def test_per_class_keys_are_logged_under_class_names():
    stats = {"class_balance/ratio/1": 0.2, "reliability/pseudo_recall/0": 0.9, "reliability/auroc/x": 1.0, "sup": 1}
    assert by_class_name(stats, ["ground", "crack"]) == {"class_balance/ratio/crack": 0.2,
                                                        "reliability/pseudo_recall/ground": 0.9,
                                                        "reliability/auroc/x": 1.0, "sup": 1}


@pytest.mark.slow
@pytest.mark.parametrize("planted", [True, False])
def test_a_planted_imbalance_warns_in_the_console_and_the_log_and_a_balanced_labeler_does_not(
        planted, synth_root, tmp_path, monkeypatch, capsys):
    """The teacher is replaced by a labeler that returns every unlabeled pixel's true class (balanced), or
    background everywhere (planted), with confidence 1 and its label's one-hot as probabilities; only the
    planted run warns, naming the classes, from the second half of training on."""
    def labeler(teacher, image, padding, align=None):
        truth = monkeypatch_truth["now"]
        pseudo = torch.where(truth == IGNORE_INDEX, IGNORE_INDEX, truth * (0 if planted else 1))  # 255: left out
        probs = torch.nn.functional.one_hot(pseudo.clamp(max=7), 8).movedim(-1, 1).float()
        return PseudoLabels(pseudo, torch.ones(pseudo.shape), pseudo, probs)

    monkeypatch_truth = {}
    real_losses = mean_teacher.MeanTeacher.losses

    def losses(self, student, teacher, labeled, unlabeled, progress):
        monkeypatch_truth["now"] = unlabeled["truth"]
        return real_losses(self, student, teacher, labeled, unlabeled, progress)

    monkeypatch.setattr(mean_teacher, "teacher_pseudo_labels", labeler)
    monkeypatch.setattr(mean_teacher.MeanTeacher, "losses", losses)
    cfg = tiny_config(synth_root, tmp_path, "method.name=classmix", "train.iterations=8", "train.log_every=100",
                      "data.batch_size=8", "method.class_balance.momentum=0.8",  # judged from step 5 on
                      "method.class_balance.shrink_ratio=0.3")  # 8-image batches: a class's share varies by 2x
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    warnings = [w for r in records for w in r.get("warnings", [])]
    captured = capsys.readouterr()
    printed = captured.err + captured.out
    if planted:
        warned = [(r, w.split("'")[1]) for r in records for w in r.get("warnings", [])]
        assert warned and all("is shrinking in the pseudo-labels" in w for w in warnings)
        assert all("try method.unsup_pixels=confident" in w for w in warnings)  # the mean-teacher family's remedy
        assert {name for _, name in warned} <= {"disc", "ring", "tile", "crate", "wedge", "star", "cross"}
        assert len(warned) == len({name for _, name in warned})  # once per class: it stays starved
        assert all(r[f"class_balance/shrinking/{name}"] == 1.0 and r["iteration"] >= 5 for r, name in warned)
        assert f"class '{warned[0][1]}' is shrinking" in printed
    else:
        assert not warnings and "shrinking" not in printed
        assert records[-1]["class_balance/shrinking/disc"] == 0.0


def test_the_unlabeled_weight_ramps_up_as_laine_and_aila_and_is_the_weight_itself_without_a_ramp():
    method = mean_teacher.MeanTeacher(load_config(None, ["method.name=classmix", "method.unsup_rampup=0.4",
                                                         "method.unsup_weight=2"]), C)
    for t in (0.0, 0.1, 0.3, 0.39):
        assert method.unsupervised_weight(t) == pytest.approx(2 * np.exp(-5 * (1 - t / 0.4) ** 2), rel=1e-12)
    assert method.unsupervised_weight(0.4) == method.unsupervised_weight(0.9) == 2.0
    plain = mean_teacher.MeanTeacher(load_config(None, ["method.name=classmix"]), C)
    assert plain.unsupervised_weight(0.0) == 1.0  # the paper's: the full weight from the first step


def test_supervised_refuses_the_remedies():
    with pytest.raises(ConfigError, match="method.class_balance.threshold=adaptive acts on pseudo-labels"):
        load_config(None, ["method.name=supervised", "method.class_balance.threshold=adaptive"])
    with pytest.raises(ConfigError, match="method.unsup_rampup=0.2 acts on pseudo-labels"):
        load_config(None, ["method.name=supervised", "method.unsup_rampup=0.2"])
    with pytest.raises(ConfigError, match="method.class_balance.momentum"):
        load_config(None, ["method.class_balance.momentum=1.0"])


def test_a_checkpoint_without_the_statistics_still_loads():
    method = mean_teacher.MeanTeacher(load_config(None, ["method.name=classmix"]), C)
    older = {k: v for k, v in method.state_dict().items() if not k.startswith("balance.")}
    assert not method.load_state_dict(older).missing_keys
