"""Rules every method shares (issue 20): the contrast's weight against the supervised cross-entropy,
one definition of `pseudo_confident`, and the μ/σ² heads run on exactly the rows a loss reads (training)
and on none (evaluation)."""

from __future__ import annotations

import math

import pytest
import torch

from prcl import IGNORE_INDEX
from prcl.config import load_config
from prcl.engine.evaluate import evaluate
from prcl.methods import build_method
from prcl.models import DeepLabV3Plus

LOG3 = math.log(3.0)


class HeadStub(torch.nn.Module):
    """Uniform logits (CE = log 3 against any label) and fixed random μ/σ² for the rows `heads` asks for;
    eval mode: confident class `b % 3` on image b (so each image has its own pseudo-label)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.dim = dim

    def forward(self, x, heads=True, feature_dropout=0.0):
        b, _, h, w = x.shape
        logits = self.w + torch.zeros(b, 3, h, w)
        if not self.training:
            logits = logits + 10 * torch.nn.functional.one_hot(torch.arange(b) % 3, 3).float()[:, :, None, None]
        out = {"logits": logits}
        if feature_dropout:
            out["logits_fp"] = self.w + torch.zeros(b, 3, h, w)
        if heads is not False:
            rows = torch.arange(b)[heads if heads is not True else slice(None)]
            g = torch.Generator().manual_seed(0)
            out["mu"] = self.w + torch.randn(b, self.dim, h // 4, w // 4, generator=g)[rows]
            out["var"] = self.w + 0.2 + torch.rand(b, self.dim, h // 4, w // 4, generator=g)[rows]
        return out


def batches(n_l: int = 2, n_u: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(1)
    padding = torch.zeros(n_u, size, size, dtype=torch.bool)
    padding[:, :, -4:] = True  # a quarter of each crop is padding
    unlabeled = {"image": torch.zeros(n_u, 3, size, size), "padding": padding,
                 "image_strong": torch.rand(n_u, 3, size, size, generator=g),
                 "image_strong2": torch.rand(n_u, 3, size, size, generator=g)}
    mask = torch.randint(0, 3, (n_l, size, size), generator=g)
    return {"image": torch.zeros(n_l, 3, size, size), "mask": mask}, unlabeled


def teacher(x):
    """Confident class b % 3 on image b, except uniform (confidence 1/3) on the top quarter of the rows."""
    b, _, h, w = x.shape
    logits = 10 * torch.nn.functional.one_hot(torch.arange(b) % 3, 3).float()[:, :, None, None].expand(b, 3, h, w)
    logits = logits.clone()
    logits[:, :, : h // 4] = 0.0
    return {"logits": logits}


@pytest.mark.parametrize("name, scale", [("prcl", 1.0), ("unimatch_prcl", 0.5)])
def test_the_contrast_weighs_the_same_against_the_supervised_ce_in_every_method(name, scale):
    """L = scale·(Ls + Lu + λc·Lc): the contrast's term over the supervised term is λc·Lc / Ls in every
    method (before issue 20 unimatch_prcl added λc·Lc to (Ls + Lu)/2, twice prcl's relative weight)."""
    cfg = load_config(None, [f"method.name={name}", "model.rep_dim=4", "method.mix=cutmix",
                             "method.contrastive.num_anchors=4", "method.contrastive.num_negatives=8",
                             "method.contrastive.weak_threshold=0.0", "method.contrastive.strong_threshold=1.0"])
    method = build_method(cfg, 3)
    assert method.loss_scale == scale
    labeled, unlabeled = batches()
    torch.manual_seed(0)
    step = method.losses(HeadStub().train(), teacher, labeled, unlabeled, 0.3)
    assert float(step.terms["sup"].detach()) == pytest.approx(scale * LOG3, rel=1e-6)
    weighted = step.stats["contrastive/lambda"] * step.stats["contrastive/loss"]
    assert step.stats["contrastive/loss"] > 0
    assert float(step.terms["contrastive"].detach()) == pytest.approx(scale * weighted, rel=1e-6)
    assert float(step.terms["contrastive"].detach() / step.terms["sup"].detach()) == pytest.approx(weighted / LOG3, rel=1e-6)


@pytest.mark.parametrize("name", ["classmix", "fixmatch", "unimatch"])
def test_pseudo_confident_counts_the_pixels_outside_the_padding(name):
    """One definition: confident pixels / non-padding pixels of the weak view. The mean teacher used to
    divide by all pixels, padding included (here 0.75 · 0.75 = 0.5625 instead of 0.75)."""
    method = build_method(load_config(None, [f"method.name={name}", "method.mix=cutmix"]), 3)
    labeled, unlabeled = batches()
    if name == "classmix":
        step = method.losses(HeadStub().train(), teacher, labeled, unlabeled, 0.0)
        want = 0.75  # confident on the lower 3/4 of the rows
    else:
        step = method.losses(HeadStub().train(), None, labeled, unlabeled, 0.0)
        want = 1.0  # the eval-mode stub is confident everywhere; the padding is not counted
    assert step.stats["pseudo_confident"] == pytest.approx(want)


def tiny_model(**kw) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16, low_level_channels=8,
                         head_channels=16, rep_dim=4, prob_dim=4, **kw)


def head_batches(model: DeepLabV3Plus) -> dict[str, list[int]]:
    """Record the batch size of every call of the representation and σ² heads."""
    seen: dict[str, list[int]] = {"rep": [], "prob": []}
    model.rep_head.register_forward_hook(lambda m, args, out: seen["rep"].append(args[0].shape[0]))
    model.prob_head.register_forward_hook(lambda m, args, out: seen["prob"].append(args[0].shape[0]))
    return seen


@pytest.mark.slow
def test_unimatch_prcl_runs_the_heads_on_the_labeled_rows_and_strong_view_1_only():
    """The weak view's and the second strong view's rows never reach the heads (nor their BatchNorm)."""
    cfg = load_config(None, ["method.name=unimatch_prcl", "model.rep_dim=4", "method.contrastive.num_anchors=4",
                             "method.contrastive.num_negatives=8"])
    method = build_method(cfg, 3)
    model = tiny_model().train()
    seen = head_batches(model)
    labeled, unlabeled = batches(n_l=2, n_u=3, size=32)
    step = method.losses(model, None, labeled, unlabeled, 0.0)
    assert seen == {"rep": [2, 3], "prob": [2, 3]}  # [labeled] of the first forward, [strong 1] of the second
    head = list(model.prob_head.parameters())
    contrast = torch.autograd.grad(step.terms["contrastive"], head, retain_graph=True)
    sum(step.terms.values()).backward()
    # the σ² head learns from the contrast (every parameter; tiny at the paper's initialisation, whose last
    # BatchNorm starts σ² flat) and from nothing else
    for p, want in zip(head, contrast):
        assert torch.isfinite(p.grad).all() and (p.grad != 0).any()
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-12)
    assert max(float(p.grad.abs().max()) for p in head) > 1e-6


def test_evaluation_runs_no_representation_or_probability_head():
    model = tiny_model()
    seen = head_batches(model)
    images = [{"image": torch.randn(3, 32, 32), "mask": torch.full((32, 32), IGNORE_INDEX)} for _ in range(2)]
    evaluate(model, images, 3, device=torch.device("cpu"), batch_size=2)
    assert seen == {"rep": [], "prob": []}
