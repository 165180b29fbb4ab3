"""Issue #19: the reliability diagnostics, the σ² head that can learn, VNs that spread (pseudo-label noise:
`test_pseudo_label_noise.py`)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prcl import IGNORE_INDEX
from prcl.config import contrastive_preset, load_config
from prcl.engine.reliability import reliability_stats, within_class_auroc
from prcl.engine.trainer import Trainer
from prcl.losses import PRCLContrastiveLoss
from prcl.methods import build_method
from prcl.models import build_model
from prcl.probabilistic import GlobalDistributionPrototypes, class_natural_sums
from conftest import TINY_MODEL
from test_method_rules import HeadStub, batches as rule_batches, teacher as rule_teacher


def _auroc_brute_force(scores: np.ndarray, wrong: np.ndarray) -> float:
    """P(score of a wrong pixel > score of a right one) + ½ P(tie), over every pair (float64)."""
    pos, neg = scores[wrong], scores[~wrong]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_within_class_auroc_is_the_macro_mean_of_per_class_pair_counts():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 300)
    wrong = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * wrong + 0.5 * classes, 2)  # ties included
    wrong[classes == 3] = False  # a class without wrong pixels is left out of the mean
    expected = np.mean([_auroc_brute_force(scores[classes == c], wrong[classes == c]) for c in range(3)])
    assert within_class_auroc(scores, wrong, classes) == pytest.approx(expected, abs=1e-12)
    # a score that only tells the classes apart (and classes with more errors score higher) ranks well over all
    # pixels but is exactly uninformative within a class
    by_class = classes.astype(float)
    assert within_class_auroc(by_class, wrong, classes) == pytest.approx(0.5)
    assert within_class_auroc(scores, np.zeros(300, dtype=bool), classes) is None


def assert_same(a, b, where: str = "") -> None:
    """Bit-exact equality of nested state (tensors, dicts, lists, numbers; NaN equals NaN), keys and lengths included."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def _run(make_config, method: str, *overrides):
    """3 iterations with the diagnostics at iterations 1 and 3 (the last: a state change there shows only in
    the final state); the train log and the trainer's whole state (its checkpoint without the config)."""
    cfg = make_config(f"method.name={method}", "train.iterations=3", "train.eval_every=100",
                      "train.diagnostics_every=3", "train.log_every=1", "data.max_val_images=2",
                      "method.unsup_threshold=0.0", "method.contrastive.weak_threshold=0.0", *overrides)
    trainer = Trainer(cfg)
    trainer.fit()
    log = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    state = trainer.state_dict(cfg.train.iterations)
    state.pop("config")  # the run names and the switch differ
    return log, state


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prcl", "unimatch_prcl", "unimatch_v2_prcl"])
def test_diagnostics_read_the_truth_but_never_change_the_run(make_config, method):
    """The truth (mixed along with the pseudo-labels) feeds the reliability statistics only: with them on and
    off, every logged value but theirs and every state (student weights and buffers, teacher, GDP, optimizer,
    scheduler, RNG streams) are bit-identical."""
    on, state_on = _run(make_config, method, "name=run_on")
    off, state_off = _run(make_config, method, "name=run_off", "train.reliability_diagnostics=false")
    assert [r["iteration"] for r in on] == [r["iteration"] for r in off] == [1, 2, 3]
    logged = [r for r in on if "grad/sup" in r]
    assert [r["iteration"] for r in logged] == [1, 3]  # the diagnostics run at iteration 1 too
    keys = {k for r in logged for k in r if k.startswith("reliability/")}
    for where in ("confident", "anchors"):
        assert {f"reliability/{where}/{k}" for k in ("wrong_fraction", "var_wrong")} <= keys
        for r in logged:  # a statistic that needs right pixels is there exactly when some are right
            some_right = r[f"reliability/{where}/wrong_fraction"] < 1
            assert (f"reliability/{where}/var_right" in r) == some_right
            assert (f"reliability/{where}/auroc_all" in r) == some_right
    assert "reliability/anchors/grad_wrong" in keys and not any(k.startswith("reliability") for r in off for k in r)
    assert all(0.0 < r["reliability/confident/wrong_fraction"] <= 1.0 for r in logged)
    for a, b in zip(on, off):
        common = {k: v for k, v in a.items() if not k.startswith("reliability/")}
        assert_same(common, b, f"train_log iteration {a['iteration']}")  # every loss, statistic and gradient norm
    assert (state_on["teacher"] is None) == (method == "unimatch_prcl")
    assert any(".gdp." in k for k in state_on["method"]) and state_on["optimizer"]["state"]
    assert_same(state_on, state_off)


class LabelerStub(HeadStub):
    """`test_method_rules.HeadStub` (eval mode: class i % 3 on image i) taking UniMatch V2's switch too."""

    def forward(self, x, heads=True, feature_dropout=0.0, complementary_dropout=False):
        return super().forward(x, heads, feature_dropout)


@pytest.mark.parametrize("name", ["prcl", "unimatch_prcl", "unimatch_v2_prcl"])
def test_the_truth_is_mixed_along_with_the_pseudo_labels(name):
    """With each image's truth the class its labeler gives it, the probe's truth equals its pseudo-labels on every
    pixel the contrast takes after mixing, the pixels pasted from a partner included (wrong fraction 0); a truth
    one class off is wrong on all of them (1). With the method's own mix (ClassMix, UniMatch's CutMix box)."""
    method = build_method(load_config(None, [f"method.name={name}", "model.rep_dim=4", "method.contrastive.num_anchors=4",
                                             "method.contrastive.num_negatives=8"]), 3)
    labeled, unlabeled = rule_batches()
    own = torch.arange(4) % 3  # image i's class, from the teacher and from the student in eval mode
    for offset, wrong in ((0, 0.0), (1, 1.0)):
        truth = ((own + offset) % 3)[:, None, None].expand(4, 16, 16).clone()
        truth[unlabeled["padding"]] = IGNORE_INDEX
        torch.manual_seed(0)
        step = method.losses(LabelerStub().train(), rule_teacher, labeled, {**unlabeled, "truth": truth}, 0.3)
        probe = step.probe
        taken = probe.confident
        assert (probe.pseudo[taken] != own[:, None, None].expand_as(taken)[taken]).any(), "a partner's pixels are taken"
        assert ((probe.pseudo != probe.truth)[taken] == bool(wrong)).all(), f"truth offset {offset}: misaligned"
        stats = reliability_stats(probe, step.terms["contrastive"])
        assert stats["reliability/confident/wrong_fraction"] == wrong


def test_gdp_empirical_var_is_the_spread_of_every_pixel_seen():
    g = torch.Generator().manual_seed(0)
    gdp = GlobalDistributionPrototypes(3, 4)
    seen = {c: [] for c in range(3)}
    for _ in range(5):
        labels = torch.randint(0, 2, (50,), generator=g)
        mu = torch.randn(50, 4, generator=g, dtype=torch.float64) * 0.3 + labels[:, None]
        gdp.update_from_sums(class_natural_sums(labels, mu, torch.rand(50, 4, generator=g, dtype=torch.float64) + 0.1, 3))
        for c in range(2):
            seen[c].append(mu[labels == c])
    for c in range(2):
        np.testing.assert_allclose(gdp.empirical_var[c].numpy(), torch.cat(seen[c]).var(0, unbiased=False).numpy(),
                                   rtol=1e-10)
    assert torch.isnan(gdp.empirical_var[2]).all()


@pytest.mark.parametrize("source", ["empirical", "posterior"])
def test_vn_spread_does_not_shrink_as_the_gdp_sees_more_pixels(source):
    """VNs drawn from the empirical spread keep ~β per-pixel std from the GDP mean however many pixels it has
    seen; drawn from the GDP's posterior variance (Eq. 10 literally) they collapse onto the mean."""
    c, d = 3, 16
    cfg = contrastive_preset("prcl", num_anchors=8, num_negatives=8, vn={"source": source, "scale": "std"})
    loss_fn = PRCLContrastiveLoss(c, d, cfg)
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(c, d, generator=g), dim=1)
    spreads = []
    for _ in range(30):
        labels = torch.randint(0, c, (2, 8, 8), generator=g)
        mu = (centres[labels] + 0.3 * torch.randn(2, 8, 8, d, generator=g)).permute(0, 3, 1, 2)
        _, stats = loss_fn(mu, torch.full_like(mu, 0.5), labels, torch.ones(2, 8, 8, dtype=torch.bool),
                           torch.full((2, c, 8, 8), 1.0 / c), generator=g)
        spreads.append(stats["vn_spread"])
    if source == "empirical":
        assert min(spreads) >= 0.5 and spreads[-1] >= 0.9 * spreads[0], spreads
    else:
        assert spreads[-1] < 0.3 * spreads[0], spreads  # like 1/sqrt(pixels seen)


def _striped_batch():
    """Two 48² images of four colour stripes: classes 0, 1, 2 and a narrow fourth colour (red + green) labeled 2,
    the wrong pixels; and their representations μ `[2, D, 48, 48]`: one unit direction per colour, the fourth
    between the first two, so the wrong pixels lie far from their label's prototype and near other classes."""
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5], [1.5, 1.5, -1.0]])
    stripes = torch.tensor([0] * 16 + [1] * 16 + [2] * 12 + [3] * 4)  # column -> stripe
    stripe = torch.stack([stripes, stripes.flip(0)])[:, None, :].expand(2, 48, 48)
    g = torch.Generator().manual_seed(0)
    image = colours[stripe].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 3, 48, 48, generator=g)
    directions = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    directions = torch.cat([directions, F.normalize(directions[:1] + directions[1:2], dim=1)])
    mu = directions[stripe].permute(0, 3, 1, 2)
    return image, mu, stripe.clamp(max=2), stripe == 3


LR = 0.01  # the default job's σ² lr: optim.lr 0.05 × prob_head_lr_scale 0.2


def _train_sigma(final_norm: bool, steps: int = 15):
    """A few steps of the contrast on the real σ² head and trunk (μ given), on a fixed batch with known wrong
    labels; returns the batch's σ² (mean over D) at feature resolution before and after, and the wrong pixels."""
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_MODEL, f"model.prob_final_norm={str(final_norm).lower()}"])
    model = build_model(cfg, 3)
    image, mu, labels, wrong = _striped_batch()
    loss_fn = PRCLContrastiveLoss.from_config(cfg, 3)
    model.aspp.project[1].p = 0.0  # no dropout: the σ² measured before and after differ by training only
    opt = torch.optim.SGD(model.trunk_parameters() + list(model.prob_head.parameters()), lr=LR)
    g = torch.Generator().manual_seed(0)
    model.train()
    history = []
    for _ in range(steps + 1):
        var = model(image)["var"]
        size = var.shape[-2:]
        def small(t):
            return F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0]
        rep = F.interpolate(mu, size=size, mode="nearest")
        history.append(var.detach().mean(1))
        loss, _ = loss_fn(rep, var, small(labels).long(), torch.ones(2, *size, dtype=torch.bool),
                          torch.full((2, 3, *size), 1 / 3), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history[0], history[-1], small(wrong).bool()


@pytest.mark.slow
def test_sigma_head_learns_to_flag_wrong_labels_and_can_move_its_level():
    """40 steps at the σ² lr of `optim.prob_head_lr_scale=0.2`. The head without the final BatchNorm widens σ²'s
    lead on the wrong pixels and moves the batch's mean σ². At this lr the paper's head (BatchNorm before the
    sigmoid) re-ranks the pixels too: what the review's point 1 pins is its level, which only its β moves."""
    before, after, wrong = _train_sigma(final_norm=False, steps=40)
    def gap(v):
        return float(v[wrong].mean() - v[~wrong].mean())
    assert gap(after) > 0.03 and gap(after) > gap(before) + 0.03, (gap(before), gap(after))
    assert abs(float(after.mean() - before.mean())) > 0.005, (before.mean(), after.mean())
    bn_before, bn_after, _ = _train_sigma(final_norm=True, steps=40)
    assert gap(bn_after) > gap(bn_before) + 0.03, (gap(bn_before), gap(bn_after))


def test_paper_sigma_head_initialises_as_before_the_options():
    """The options must not move the default head's random initialisation (it follows construction order):
    the same seed gives the weights of Linear-BN-ReLU-Linear-BN built in that order."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(304, 64, 1, bias=False), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                                    torch.nn.Conv2d(64, 64, 1, bias=False), torch.nn.BatchNorm2d(64))
    from prcl.models.deeplab import ProbabilityHead
    torch.manual_seed(0)
    head = ProbabilityHead(304, 64)
    for (k, a), (_, b) in zip(reference.state_dict().items(), head.net.state_dict().items()):
        assert torch.equal(a, b), k
