"""FixMatch and UniMatch: the thresholded loss against a hand computation, pseudo-labels from the
student in eval mode without gradient, UniMatch's loss weights, the feature-perturbation stream (only
that stream is perturbed, and at the encoder features, not the image), two strong views with
different mixes, UniMatch's CutMix box, and the second strong view from the data pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from prcl import IGNORE_INDEX
from prcl.config import load_config
from prcl.data.loaders import build_train_data
from prcl.data.mixing import PartnerError, cutmix_box_masks, partner_shifts
from prcl.data.transforms import TrainTransform
from prcl.methods import build_method
from prcl.methods.fixmatch import thresholded_pseudo_label_loss
from prcl.models import DeepLabV3Plus

LOG3 = math.log(3.0)


def test_thresholded_loss_equals_the_hand_computation():
    """4 pixels, τ = 0.95: two confident, one below τ (counts in the denominator only), one padding
    (counts nowhere). UniMatch: Σ CE·1[conf ≥ τ] / #non-padding pixels."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 4)
    pseudo = torch.tensor([[[0, 1, 0, IGNORE_INDEX]]])
    confidence = torch.tensor([[[0.99, 0.96, 0.90, 0.0]]])
    ce0, ce1, ce2 = math.log(1 + 2 * math.exp(-2)), math.log(1 + 2 * math.exp(-1)), math.log(2 + math.exp(3))
    assert float(thresholded_pseudo_label_loss(logits, pseudo, confidence, 0.95)) == pytest.approx((ce0 + ce1) / 3)
    # τ = 0 (UniMatch's Cityscapes recipe) keeps every non-padding pixel; the padding stays out
    assert float(thresholded_pseudo_label_loss(logits, pseudo, confidence, 0.0)) == pytest.approx((ce0 + ce1 + ce2) / 3)
    none = torch.full_like(pseudo, IGNORE_INDEX)
    assert float(thresholded_pseudo_label_loss(logits, none, confidence, 0.95)) == 0.0


class StubStudent(torch.nn.Module):
    """Eval mode: confident class-1 logits on the left half of each image, uniform on the right;
    train mode: uniform logits everywhere (CE = log 3 against any label). Records every call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, x, heads=True, feature_dropout=0.0):
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "batch": x.shape[0],
                           "feature_dropout": feature_dropout, "input": x})
        b, _, h, w = x.shape
        logits = self.w + torch.zeros(b, 3, h, w)
        if not self.training:
            logits = logits.clone()
            logits[:, 1, :, : w // 2] = 10.0
        out = {"logits": logits}
        if feature_dropout:
            out["logits_fp"] = self.w + torch.zeros(b, 3, h, w)
        return out


def batches(n_u: int = 2, size: int = 8):
    padding = torch.zeros(n_u, size, size, dtype=torch.bool)
    padding[:, :, -1] = True  # one padded column, in the right (unconfident) half
    unlabeled = {"image": torch.zeros(n_u, 3, size, size), "padding": padding,
                 "image_strong": torch.zeros(n_u, 3, size, size), "image_strong2": torch.zeros(n_u, 3, size, size)}
    labeled = {"image": torch.zeros(1, 3, size, size), "mask": torch.zeros(1, size, size, dtype=torch.long)}
    return labeled, unlabeled


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_pseudo_labels_from_eval_mode_without_gradient_and_unimatch_weights(name):
    method = build_method(load_config(None, [f"method.name={name}", "method.mix=none"]), 3)
    student = StubStudent().train()
    labeled, unlabeled = batches()
    step = method.losses(student, None, labeled, unlabeled, 0.0)
    weak, *train_calls = student.calls
    assert (weak["training"], weak["grad"], weak["batch"]) == (False, False, 2)  # own pseudo-labels
    assert student.training, "the student's train mode is restored"
    assert all(c["training"] and c["grad"] for c in train_calls)
    # confident (conf ≈ 1 ≥ 0.95) on the left 4 columns; 7 of 8 columns are not padding
    lu = LOG3 * 4 / 7
    assert step.stats["pseudo_confident"] == pytest.approx(4 / 7)
    assert float(step.terms["sup"].detach()) == pytest.approx(0.5 * LOG3)  # (Ls + Lu) / 2
    if name == "fixmatch":
        assert [c["batch"] for c in train_calls] == [1 + 2]  # [labeled; strong]
        assert set(step.terms) == {"sup", "unsup"}
        assert float(step.terms["unsup"].detach()) == pytest.approx(0.5 * lu)
    else:  # [labeled; weak] with the perturbed twin, then [strong 1; strong 2]
        assert [(c["batch"], c["feature_dropout"]) for c in train_calls] == [(1 + 2, 0.5), (2 + 2, 0.0)]
        assert float(step.terms["unsup"].detach()) == pytest.approx(0.5 * (0.25 + 0.25) * lu)  # S1, S2
        assert float(step.terms["unsup_fp"].detach()) == pytest.approx(0.5 * 0.5 * lu)  # FP
        assert step.stats["unsup/s1"] == step.stats["unsup/s2"] == pytest.approx(lu)


def tiny_model(**kw) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16, low_level_channels=8,
                         head_channels=16, **kw)


def test_feature_perturbation_changes_only_its_stream_at_the_encoder_features():
    model = tiny_model(rep_dim=8).eval()
    seen: dict[str, list] = {"backbone": [], "aspp": [], "reduce": []}
    model.backbone.register_forward_pre_hook(lambda m, args: seen["backbone"].append(args[0]))
    model.aspp.register_forward_pre_hook(lambda m, args: seen["aspp"].append(args[0]))
    model.reduce.register_forward_pre_hook(lambda m, args: seen["reduce"].append(args[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        torch.manual_seed(1)
        out = model(x, feature_dropout=0.5)
    # the image is not perturbed: the backbone runs once, on the clean batch
    assert len(seen["backbone"]) == 2 and torch.equal(seen["backbone"][1], x)
    for name in ("aspp", "reduce"):  # the features the decoder consumes: [clean; channel-dropped ×2]
        clean, both = seen[name]
        assert both.shape[0] == 4 and torch.equal(both[:2], clean)
        perturbed, scale = both[2:], both[2:] / 2
        zeroed = (perturbed == 0).flatten(2).all(2)  # [2, C]: whole channels dropped
        kept = (torch.isclose(scale, clean, atol=1e-6)).flatten(2).all(2)
        assert (zeroed | kept).all() and zeroed.any() and kept.any(), name
    # eval mode (BatchNorm at running statistics): the clean outputs are the plain forward's
    assert torch.allclose(out["logits"], plain["logits"], atol=1e-5)
    assert torch.allclose(out["mu"], plain["mu"], atol=1e-5) and out["fused"].shape == plain["fused"].shape
    assert not torch.allclose(out["logits_fp"], plain["logits"], atol=1e-3)
    assert "logits_fp" not in plain


def test_feature_perturbation_stream_trains_the_encoder():
    model = tiny_model().train()
    model(torch.randn(2, 3, 32, 32), feature_dropout=0.5)["logits_fp"].square().mean().backward()
    assert model.backbone.conv1.weight.grad is not None and model.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_a_global_batch_of_one_unlabeled_image_is_refused(name):
    """No partner exists: mixing would paste the image onto itself (a silent no-op before issue 20)."""
    method = build_method(load_config(None, [f"method.name={name}", "method.mix=cutmix"]), 3)
    labeled, unlabeled = batches(n_u=1)
    with pytest.raises(PartnerError, match=r"global unlabeled batch holds 1 image.*method\.mix=none"):
        method.losses(StubStudent().train(), None, labeled, unlabeled, 0.0)
    with pytest.raises(PartnerError):
        partner_shifts(1, 2)


def test_two_strong_views_get_different_partners_and_boxes():
    method = build_method(load_config(None, ["method.name=unimatch", "method.mix=cutmix"]), 3)
    student = StubStudent().train()
    labeled, unlabeled = batches(n_u=4)
    unlabeled["padding"][:] = False
    ids = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8)
    unlabeled["image_strong"], unlabeled["image_strong2"] = ids.clone(), 10 + ids
    torch.manual_seed(0)
    method.losses(student, None, labeled, unlabeled, 0.0)
    strong = student.calls[-1]["input"]  # [strong 1; strong 2]
    s1, s2 = strong[:4, 0], strong[4:, 0] - 10
    own = ids[:, 0]
    assert ((s1 == own) | (s1 == own.roll(1, 0))).all() and (s1 != own).any()  # partner i-1
    assert ((s2 == own) | (s2 == own.roll(2, 0))).all() and (s2 != own).any()  # partner i-2
    assert not torch.equal(s1 == own, s2 == own), "the two views should get different boxes"


def test_unimatch_cutmix_box():
    """UniMatch's box: present with probability 0.5, a filled rectangle of at most 40 % of the image,
    sizes spread over the range."""
    g = torch.Generator().manual_seed(0)
    masks = cutmix_box_masks(2000, 32, 32, generator=g)
    area = masks.flatten(1).float().mean(1)
    present = area > 0
    assert 0.45 < present.float().mean() < 0.55
    assert area.max() <= 0.4 and area[present].min() < 0.1 and area.max() > 0.3
    for m in masks[present][:50]:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        assert m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a rectangle


def test_second_strong_view_is_independently_augmented(make_config):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    out = TrainTransform(32, strong=True, strong_views=2, color_jitter=1.0, blur=0.0)(image, None)
    assert set(out) == {"image", "padding", "image_strong", "image_strong2"}
    assert not torch.equal(out["image_strong"], out["image_strong2"])
    data = build_train_data(make_config("method.name=unimatch"), with_unlabeled=True, strong_views=2)
    batch = next(iter(data.unlabeled))
    assert batch["image_strong2"].shape == batch["image_strong"].shape == batch["image"].shape
