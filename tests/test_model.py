from __future__ import annotations

import pytest
import torch

from prcl.models import DeepLabV3Plus
from prcl.models import backbone as backbone_mod
from prcl.models.backbone import WeightsError, create_backbone


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


def test_batch_of_one_trains():  # the ASPP image-pooling branch has no BatchNorm
    model = DeepLabV3Plus(3, "resnet18", backbone_widths=(8, 16, 32, 64), aspp_channels=16).train()
    model(torch.randn(1, 3, 32, 32))["logits"].sum().backward()
    assert model.aspp.pool[1].weight.grad is not None


def test_missing_local_weights_file_names_it(tmp_path):
    with pytest.raises(WeightsError) as err:
        create_backbone("resnet18", pretrained=True, weights=str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(err.value) and "model.weights" in str(err.value)


def test_offline_pretrained_fails_fast_with_download_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(backbone_mod, "_hub_reachable", lambda timeout=3.0: False)
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
