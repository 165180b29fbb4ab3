"""DINOv2 ViT encoders and the DPT decoder (UniMatch V2's model side), on tiny random models.

Tiny ViTs go through the real code path (`create_vit_encoder` with timm's depth/width arguments); weight
files are written by the tests in Meta's and timm's naming, nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prcl.analysis.collect import RunData, collect_val, student_outputs
from prcl.config import ConfigError, load_config
from prcl.engine.ema import EMATeacher
from prcl.engine.evaluate import predict_logits
from prcl.models import DPT, DeepLabV3Plus, build_model
from prcl.models import weights as weights_mod
from prcl.models.state_dicts import WeightsError
from prcl.models.vit import ViTEncoder, create_vit_encoder

VIT = "vit_small_patch14_dinov2"
DEPTH, DIM, GRID = 4, 32, 4  # a 4-block, 32-wide ViT pretrained at 56² (a 4×4 grid of 14-px patches)
TINY_VIT = dict(layers=(0, 1, 2, 3), depth=DEPTH, embed_dim=DIM, num_heads=2, img_size=GRID * 14)
TINY_HEADS = dict(head_channels=8, rep_dim=8, prob_dim=8)
TINY_DPT = dict(features=16, out_channels=(8, 16, 16, 32))


def tiny_vit(**kwargs) -> ViTEncoder:
    return create_vit_encoder(VIT, **TINY_VIT, **kwargs)


def tiny_model(decoder: str, backbone: str):
    if decoder == "deeplabv3plus":
        return DeepLabV3Plus(3, backbone, aspp_channels=16, **TINY_HEADS)
    return DPT(3, backbone, backbone_kwargs=TINY_VIT if backbone == VIT else None, **TINY_DPT, **TINY_HEADS)


def meta_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of Meta's `dinov2_vits14_pretrain.pth`, for the tiny ViT."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    state = {"cls_token": t(1, 1, DIM), "pos_embed": t(1, 1 + GRID * GRID, DIM), "mask_token": t(1, DIM),
             "patch_embed.proj.weight": t(DIM, 3, 14, 14), "patch_embed.proj.bias": t(DIM)}
    for i in range(DEPTH):
        for name, shape in (("norm1.weight", (DIM,)), ("norm1.bias", (DIM,)), ("attn.qkv.weight", (3 * DIM, DIM)),
                            ("attn.qkv.bias", (3 * DIM,)), ("attn.proj.weight", (DIM, DIM)), ("attn.proj.bias", (DIM,)),
                            ("ls1.gamma", (DIM,)), ("norm2.weight", (DIM,)), ("norm2.bias", (DIM,)),
                            ("mlp.fc1.weight", (4 * DIM, DIM)), ("mlp.fc1.bias", (4 * DIM,)),
                            ("mlp.fc2.weight", (DIM, 4 * DIM)), ("mlp.fc2.bias", (DIM,)), ("ls2.gamma", (DIM,))):
            state[f"blocks.{i}.{name}"] = t(*shape)
    state.update({"norm.weight": t(DIM), "norm.bias": t(DIM)})
    return state


# ---------------------------------------------------------------- the encoder
def test_vit_gives_four_normalised_stride_14_maps():
    torch.manual_seed(0)
    enc = tiny_vit().eval()
    x = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        maps = enc(x)
        raw = enc.vit.forward_intermediates(x, indices=list(enc.layers), norm=False, intermediates_only=True)
        last = enc.vit.forward_features(x)[:, 1:]  # timm's own path: the last block through the final norm
    assert [tuple(m.shape) for m in maps] == [(2, DIM, 3, 5)] * 4
    assert enc.feature_info.channels() == [DIM] * 4 and enc.feature_info.reduction() == [14] * 4
    for m, r in zip(maps, raw):  # every map through the final LayerNorm, over channels
        torch.testing.assert_close(m, enc.vit.norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), last)


def test_vit_input_not_a_multiple_of_14_is_a_clear_error():
    enc = tiny_vit()
    with pytest.raises(ValueError, match=r"input 45×70 .* multiple of 14 \(height 45 -> 42 or 56\); set data.crop_size"):
        enc(torch.randn(1, 3, 45, 70))


def test_vit_names_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"is a ViT: use DPT \(model.decoder=dpt\)"):
        DeepLabV3Plus(3, VIT)
    with pytest.raises(ValueError, match=r"unknown ViT backbone 'vit_small_patch14_dinov2.foo'.*tag .lvd142m"):
        DPT(3, f"{VIT}.foo")


def test_meta_format_weights_load_exactly(tmp_path):
    source = meta_state_dict()
    torch.save(source, tmp_path / "dinov2_tiny_pretrain.pth")
    enc = tiny_vit(weights=str(tmp_path / "dinov2_tiny_pretrain.pth"))
    loaded = enc.vit.state_dict()
    assert set(loaded) == set(source) - {"mask_token"}  # the one key dropped
    assert all(torch.equal(loaded[k], source[k]) for k in loaded)


def test_timm_format_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    src = tiny_vit()
    torch.save(src.vit.state_dict(), tmp_path / "timm.pth")
    torch.manual_seed(2)
    dst = tiny_vit(weights=str(tmp_path / "timm.pth"))
    x = torch.randn(1, 3, 28, 42)
    assert all(torch.equal(v, src.vit.state_dict()[k]) for k, v in dst.vit.state_dict().items())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src.eval()(x), dst.eval()(x)))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"blocks.1.attn.qkv.weight": torch.zeros(3, DIM)}),
     r"shape mismatches: \['blocks\.1\.attn\.qkv\.weight: file \(3, 32\) vs model \(96, 32\)'\]"),
    (lambda s: s.pop("norm.bias"), r"does not fill: \['norm\.bias'\]"),
    (lambda s: s.update({"register_tokens": torch.zeros(1, 4, DIM)}), r"lacks: \['register_tokens'\]"),
])
def test_weights_that_do_not_fit_name_the_key(tmp_path, change, message):
    source = meta_state_dict()
    change(source)
    torch.save(source, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message) as err:
        tiny_vit(weights=str(tmp_path / "bad.pth"))
    assert "bad.pth" in str(err.value)


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(WeightsError, match=r"model\.weights=.*nope\.pth does not exist"):
        tiny_vit(weights=str(tmp_path / "nope.pth"))


def test_pretrained_offline_fails_fast_naming_the_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(weights_mod, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(weights_mod, "cached_weights", lambda name: None)  # whatever this machine has cached
    with pytest.raises(WeightsError) as err:
        tiny_vit(pretrained=True)
    msg = str(err.value)
    assert "dinov2_vits14_pretrain.pth" in msg and str(tmp_path / f"{VIT}.pth") in msg and "model.weights=" in msg


def test_pretrained_picks_up_a_file_in_the_weights_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(weights_mod, "hub_reachable", lambda timeout=3.0: pytest.fail("no hub without need"))
    source = meta_state_dict(seed=3)
    torch.save(source, tmp_path / f"{VIT}.pth")
    enc = tiny_vit(pretrained=True)
    assert torch.equal(enc.vit.pos_embed, source["pos_embed"])


# ---------------------------------------------------------------- DPT and the shared model
@pytest.mark.slow
@pytest.mark.parametrize("backbone, fused_size", [(VIT, (24, 40)), ("efficientnet_lite0", (16, 20))])
def test_dpt_shapes_and_head_rows(backbone, fused_size):
    """Logits at input size; μ/σ² on the finest fused map (ViT: stride 14/8, CNN: stride 2), only on
    the rows `heads` selects; `logits_fp` beside the clean logits with feature dropout."""
    torch.manual_seed(0)
    model = tiny_model("dpt", backbone).train()
    x = torch.randn(4, 3, 42, 70) if backbone == VIT else torch.randn(4, 3, 32, 40)
    out = model(x, heads=slice(1, 3))
    assert out["logits"].shape == (4, 3, *x.shape[2:])
    assert out["fused"].shape == (4, 16, *fused_size)
    assert out["mu"].shape == out["var"].shape == (2, 8, *fused_size)
    assert (out["var"] > 0).all() and (out["var"] < 1).all()
    assert set(model(x, heads=False)) == {"logits", "fused"}
    fp = model(x, feature_dropout=0.5, heads=False)
    assert fp["logits"].shape == fp["logits_fp"].shape == (4, 3, *x.shape[2:]) and fp["fused"].shape[0] == 4


def reference_dpt(model: DPT, features: list[torch.Tensor], size: tuple[int, int],
                  scales: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fused, logits) of DPT (Ranftl et al.; UniMatch V2's `DPTHead`) written out in float64 from the model's
    parameters: reassemble (1×1 conv, resample by `scales`, 3×3 conv without bias), RefineNet fusion from
    the coarsest map (x + unit(skip), unit, bilinear with aligned corners to the next finer map's size, ×2
    after the finest, 1×1 conv), then Conv3×3-ReLU-Conv1×1 and bilinear upsampling to the input `size`."""
    dec = model.decoder

    def conv(x, layer, **kw):
        bias = None if layer.bias is None else layer.bias.double()
        return F.conv2d(x, layer.weight.double(), bias, **kw)

    def unit(u, x):  # residual conv unit: x + conv2(relu(conv1(relu(x))))
        return x + conv(F.relu(conv(F.relu(x), u.conv1, padding=1)), u.conv2, padding=1)

    maps = []
    for f, scale, project, resize, rn in zip(features, scales, dec.projects, dec.resize, dec.layer_rn):
        x = conv(f.double(), project)
        if scale > 1:
            x = F.conv_transpose2d(x, resize.weight.double(), resize.bias.double(), stride=int(scale))
        elif scale < 1:
            x = conv(x, resize, stride=2, padding=1)
        maps.append(conv(x, rn, padding=1))
    x = maps[3]
    for level in (3, 2, 1, 0):
        block = dec.refine[level]
        if level < 3:
            x = x + unit(block.skip_unit, maps[level])
        x = unit(block.unit, x)
        target = maps[level - 1].shape[-2:] if level else tuple(2 * n for n in maps[0].shape[-2:])
        x = conv(F.interpolate(x, size=target, mode="bilinear", align_corners=True), block.project)
    logits = conv(F.relu(conv(x, model.seg_head[0], padding=1)), model.seg_head[2])
    return x, F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backbone, scales", [(VIT, (4.0, 2.0, 1.0, 0.5)), ("efficientnet_lite0", (1.0,) * 4)])
def test_dpt_matches_a_hand_written_forward(backbone, scales):
    """The fused feature and the logits equal a float64 DPT forward written in the test, on the encoder
    features the decoder received (a ViT's four stride-14 maps resampled ×4, ×2, ×1, ½; a CNN's pyramid as is)."""
    torch.manual_seed(0)
    model = tiny_model("dpt", backbone).eval()
    x = torch.randn(2, 3, 42, 56) if backbone == VIT else torch.randn(2, 3, 32, 64)
    received = []
    model.backbone.register_forward_hook(lambda module, args, out: received.extend(out))
    with torch.no_grad():
        out = model(x, heads=False)
        fused, logits = reference_dpt(model, received, x.shape[-2:], scales)
    torch.testing.assert_close(out["fused"].double(), fused, rtol=1e-4, atol=1e-5 * fused.abs().max().item())
    torch.testing.assert_close(out["logits"].double(), logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("decoder, backbone", [("dpt", VIT), ("dpt", "efficientnet_lite0"),
                                               ("deeplabv3plus", "efficientnet_lite0")])
def test_complementary_dropout_masks_the_encoder_features(decoder, backbone):
    """Through the model: the decoder receives the encoder's features times per-image channel masks
    that are 1 on the kept half of the images and {0, 2} with view 1 + view 2 = 2 on the others; a ViT
    gets one mask for all four layers, a CNN pyramid one per level with the same kept images."""
    torch.manual_seed(0)
    model = tiny_model(decoder, backbone).train()
    raw, seen = [], []
    model.backbone.register_forward_hook(lambda mod, inp, out: raw.extend(f.detach() for f in out))
    decode = model.decode
    model.decode = lambda features: seen.extend(f.detach() for f in features) or decode(features)
    pairs = 4
    model(torch.randn(2 * pairs, 3, 28, 28) if backbone == VIT else torch.randn(2 * pairs, 3, 32, 32),
          complementary_dropout=True)
    assert len(raw) == len(seen) == (4 if decoder == "dpt" else 2)
    masks = [(s * r).sum((2, 3)) / (r * r).sum((2, 3)) for s, r in zip(seen, raw)]  # [2P, C] per level
    for m, s, r in zip(masks, seen, raw):
        torch.testing.assert_close(s, r * m[:, :, None, None])  # a per-image, per-channel factor
        torch.testing.assert_close(m[:pairs] + m[pairs:], torch.full_like(m[:pairs], 2.0))
        assert torch.all((m - m.round()).abs() < 1e-4) and set(m.round().unique().tolist()) <= {0.0, 1.0, 2.0}
    kept = [set(torch.nonzero((m[:pairs].round() == 1).all(1)).flatten().tolist()) for m in masks]
    assert len(kept[0]) == pairs // 2 and all(k == kept[0] for k in kept)
    dropped = [i for i in range(pairs) if i not in kept[0]]
    for m in masks:
        assert set(m[dropped].round().unique().tolist()) == {0.0, 2.0}
    if backbone == VIT:
        assert all(torch.equal(m.round(), masks[0].round()) for m in masks)
    with pytest.raises(ValueError, match="odd batch of 3"):
        model(torch.randn(3, 3, 28, 28), complementary_dropout=True)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [VIT, "efficientnet_lite0"])
def test_gradients_reach_backbone_decoder_and_heads(backbone):
    torch.manual_seed(0)
    model = tiny_model("dpt", backbone).train()
    out = model(torch.randn(2, 3, 28, 28) if backbone == VIT else torch.randn(2, 3, 32, 32), complementary_dropout=True)
    loss = sum((out[k] * torch.randn_like(out[k])).sum() for k in ("logits", "mu", "var"))
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused  # every parameter is used: DDP needs no find_unused_parameters
    for part in (model.backbone, model.decoder, model.seg_head, model.rep_head, model.prob_head):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0
    groups = model.param_groups()
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in model.trunk_parameters()} == {id(p) for m in (model.backbone, model.decoder)
                                                         for p in m.parameters()}


def test_ema_teacher_of_a_dpt_model():
    torch.manual_seed(0)
    student = tiny_model("dpt", VIT)
    teacher = EMATeacher(student, max_decay=0.5)
    assert teacher.model.rep_head is None and teacher.model.prob_head is None
    x = torch.randn(2, 3, 28, 42)
    assert set(teacher(x)) == {"logits", "fused"} and teacher(x)["logits"].shape == (2, 3, 28, 42)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = teacher.model.decoder.projects[0].weight.clone()
    teacher.update(student, step=5)  # decay min(1 - 1/6, 0.5) = 0.5
    torch.testing.assert_close(teacher.model.decoder.projects[0].weight,
                               0.5 * before + 0.5 * student.decoder.projects[0].weight)


def test_predict_logits_pads_an_odd_image_for_a_vit():
    torch.manual_seed(0)
    model = tiny_model("dpt", VIT).eval()
    assert model.size_multiple == 14 and tiny_model("dpt", "efficientnet_lite0").size_multiple == 1
    image = torch.randn(1, 3, 45, 59)
    logits = predict_logits(model, image, 3)
    assert logits.shape == (1, 3, 45, 59) and not logits.requires_grad  # inference builds no graph
    with torch.no_grad():
        padded = model(torch.nn.functional.pad(image, (0, 11, 0, 11)), heads=False)["logits"]
    torch.testing.assert_close(logits, padded[..., :45, :59])
    assert predict_logits(model, image, 3, mode="sliding", crop=28).shape == (1, 3, 45, 59)


def test_analysis_pass_pads_an_odd_image_for_a_vit():
    """`prcl analyze`'s val pass on a ViT: an image whose sides are not multiples of 14 is padded, its μ/σ² maps
    cut to the cells over the image (the same values as the padded forward), and the pass completes."""
    torch.manual_seed(0)
    model = tiny_model("dpt", VIT).eval()
    image = torch.randn(1, 3, 45, 59)
    with torch.no_grad():
        out = student_outputs(model, image)
        padded = model(torch.nn.functional.pad(image, (0, 11, 0, 11)))
    assert out["logits"].shape[-2:] == (45, 59)
    fh, fw = padded["mu"].shape[-2:]  # the padded 56 × 70 image's feature grid
    assert out["mu"].shape[-2:] == (-(-45 * fh // 56), -(-59 * fw // 70)) != (fh, fw)
    torch.testing.assert_close(out["var"], padded["var"][..., :out["var"].shape[-2], :out["var"].shape[-1]])
    run = RunData("vit", None, Path("none.pt"), load_config(None, []), {"num_classes": 3}, model, model)
    mask = torch.randint(3, (45, 59))
    val = collect_val(run, [{"image": image[0], "mask": mask}], num_images=1)  # as `prcl analyze` calls it
    assert val.examples[0]["pred"].shape == (45, 59) and val.examples[0]["var"].shape == (45, 59)
    assert val.features.shape[1] == TINY_HEADS["rep_dim"] and len(val.labels) == len(val.features) > 0


# ---------------------------------------------------------------- config
def test_config_builds_a_dinov2_dpt():
    cfg = load_config(None, [f"model.backbone={VIT}.lvd142m", "model.decoder=dpt", "model.pretrained=false",
                             "data.crop_size=98", "method.name=prcl"])
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    assert isinstance(model, DPT) and model.backbone.layers == (2, 5, 8, 11)  # UniMatch V2's ViT-S layers
    assert model.fused_channels == 64 and model.backbone.feature_info.channels() == [384] * 4
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 28, 28))
    assert out["logits"].shape == (1, 3, 28, 28) and out["mu"].shape == (1, cfg.model.rep_dim, 16, 16)
    cnn = build_model(load_config(None, ["model.decoder=dpt", "model.pretrained=false", "model.dpt_features=32",
                                         "method.name=classmix"]), 3)
    assert isinstance(cnn, DPT) and cnn.fused_channels == 32 and cnn.rep_head is None


@pytest.mark.parametrize("overrides, message", [
    ([f"model.backbone={VIT}", "data.crop_size=98"], "model.decoder=deeplabv3plus cannot read; set model.decoder=dpt"),
    ([f"model.backbone={VIT}", "model.decoder=dpt"], r"'data.crop_size' must be a multiple of 14 .*got 96; nearest: 84 or 98"),
    ([f"model.backbone={VIT}", "model.decoder=dpt", "data.crop_size=98", "eval.mode=sliding", "eval.crop_size=100"],
     r"'eval.crop_size' must be a multiple of 14 .*nearest: 98 or 112"),
    ([f"model.backbone={VIT}", "model.decoder=dpt", "data.crop_size=98", "model.backbone_channels=[8,16,32,64]"],
     "set model.backbone_channels=null"),
    (["model.decoder=upernet"], "'model.decoder' must be one of"),
    (["model.dpt_features=0"], "'model.dpt_features' must be > 0"),
])
def test_config_rejects_what_a_vit_cannot_take(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    if "eval.mode=sliding" in overrides:  # whole-image evaluation pads: its crop size is not checked
        load_config(None, [o for o in overrides if not o.startswith("eval.mode")])
