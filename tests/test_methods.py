"""The methods: one registry for the preset names, the options each honours or refuses, the
contrastive term's inputs (δw mask, feature-resolution labels, λc(t)), and the gradient diagnostics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prcl import IGNORE_INDEX
from prcl.config import METHOD_PRESETS, ConfigError, load_config
from prcl.engine.diagnostics import InertTermMonitor, gradient_norms
from prcl.engine.trainer import train
from prcl.methods import METHODS, build_method
from prcl.methods.contrastive_term import ContrastiveTerm
from prcl.models import build_model


def test_every_preset_name_has_a_method_and_back():
    assert set(METHODS) == set(METHOD_PRESETS)


def test_model_heads_follow_the_contrastive_switch():
    for name in METHOD_PRESETS:
        cfg = load_config(None, [f"method.name={name}", "model.backbone=resnet18", "model.pretrained=false"])
        model = build_model(cfg, 4)
        c = cfg.method.contrastive
        assert (model.rep_head is not None) == c.enabled, name
        assert (model.prob_head is not None) == (c.enabled and c.pr), name


class _Recorder(torch.nn.Module):
    """A stand-in student that records its input and returns zero logits."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes, self.inputs = classes, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, heads=True):
        self.inputs.append(x)
        return {"logits": self.w + torch.zeros(x.shape[0], self.classes, *x.shape[2:])}


def _teacher(pseudo: torch.Tensor):
    def teacher(x):  # confident one-hot predictions of `pseudo`
        return {"logits": 10 * torch.nn.functional.one_hot(pseudo, 3).permute(0, 3, 1, 2).float()}
    return teacher


@pytest.mark.parametrize("name, mix, mixed", [("mean_teacher", None, False), ("mean_teacher", "cutmix", True),
                                             ("classmix", None, True), ("classmix", "none", False)])
def test_method_mix_is_honoured_by_every_teacher_method(name, mix, mixed):
    """`method.mix` was documented for methods with a teacher but mean_teacher ignored it."""
    cfg = load_config(None, [f"method.name={name}"] + ([f"method.mix={mix}"] if mix else []))
    method = build_method(cfg, 3)
    torch.manual_seed(0)
    strong = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()  # image i is all i
    pseudo = torch.zeros(4, 8, 8, dtype=torch.long)
    pseudo[:, :4] = 1  # two classes per image, so ClassMix takes one of them
    unlabeled = {"image": torch.zeros(4, 3, 8, 8), "image_strong": strong, "padding": torch.zeros(4, 8, 8, dtype=bool)}
    labeled = {"image": torch.zeros(1, 3, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long)}
    student = _Recorder()
    method.losses(student, _teacher(pseudo), labeled, unlabeled, 0.0)
    seen = student.inputs[0][1:]  # the unlabeled part of the student's batch
    assert torch.equal(seen, strong) != mixed
    if mixed:  # pixels come from the image itself or from its partner i-1, nothing else
        partner = strong.roll(1, 0)
        assert ((seen == strong) | (seen == partner)).all()


@pytest.mark.parametrize("override, match", [
    ("method.mix=classmix", "method.mix=classmix has no effect with method.name=supervised"),
    ("method.contrastive.enabled=true", "method.contrastive.enabled=true needs pseudo-labels"),
])
def test_supervised_refuses_options_it_would_ignore(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["method.name=supervised", override])


def test_contrastive_term_inputs_mask_resolution_and_weight(monkeypatch):
    """Labels and pseudo-labels reach the loss at feature resolution (nearest), unlabeled pixels only
    where the teacher confidence is >= δw, labeled ones wherever they are not ignored, and the
    term is λc(t)·Lc with λc = λ0·exp(α·t²) (Eq. 12)."""
    cfg = load_config(None, ["method.name=prcl", "model.rep_dim=4", "method.contrastive.weak_threshold=0.7",
                             "method.contrastive.lambda0=2.0", "method.contrastive.lambda_alpha=-3.0"])
    term = ContrastiveTerm(cfg, 3)
    seen = {}

    def fake_forward(mu, var, target, valid, probs, **kw):
        seen.update(mu=mu, var=var, target=target, valid=valid, probs=probs)
        return (mu.sum() * 0 + 1.5), {"loss": 1.5}

    monkeypatch.setattr(term.loss, "forward", fake_forward)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGNORE_INDEX, IGNORE_INDEX], [2, 2, 1, 1]]])
    labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)  # [1, 8, 8] in 2x2 blocks
    pseudo = torch.ones(1, 8, 8, dtype=torch.long)
    confidence = torch.full((1, 8, 8), 0.9)
    confidence[:, :4] = 0.5  # top half below δw
    out = {"mu": torch.randn(2, 4, 4, 4, requires_grad=True), "var": torch.rand(2, 4, 4, 4) + 0.1,
           "logits": torch.randn(2, 3, 8, 8)}
    step = term(out, labels, pseudo, confidence, progress=0.5)
    target, valid = seen["target"], seen["valid"]
    assert target.shape == valid.shape == (2, 4, 4)
    assert torch.equal(target[0], labels[0, ::2, ::2])
    assert torch.equal(valid[0], labels[0, ::2, ::2] != IGNORE_INDEX)
    assert valid[1, :2].sum() == 0 and valid[1, 2:].all()
    assert seen["probs"].shape == (2, 3, 4, 4) and torch.allclose(seen["probs"].sum(1), torch.ones(2, 4, 4))
    assert float(step.terms["contrastive"].detach()) == pytest.approx(2.0 * math.exp(-3.0 * 0.25) * 1.5)
    assert step.stats["contrastive/lambda"] == pytest.approx(2.0 * math.exp(-0.75))
    assert set(step.paths["contrastive"]) == {"mu", "var"}


def test_gradient_norms_split_a_term_exactly_by_path():
    """The μ-path share equals the gradient with σ² detached (and vice versa), the term's own norm
    the gradient of the whole term, all against plain autograd on the same graph."""
    torch.manual_seed(0)
    trunk = torch.nn.Linear(5, 6)
    x = torch.randn(7, 5)
    h = trunk(x)
    mu, var = h[:, :3] * 2.0, torch.sigmoid(h[:, 3:])
    loss = ((mu - 1) ** 2 / var + var.log()).mean()
    norms = gradient_norms({"c": loss}, {"c": {"mu": mu, "var": var}}, list(trunk.parameters()))

    def ref(mu_, var_):
        grads = torch.autograd.grad(((mu_ - 1) ** 2 / var_ + var_.log()).mean(), list(trunk.parameters()),
                                    retain_graph=True)
        return float(torch.cat([g.flatten() for g in grads]).norm())

    assert norms["grad/c"] == pytest.approx(ref(mu, var), rel=1e-6)
    assert norms["grad/c.mu"] == pytest.approx(ref(mu, var.detach()), rel=1e-6)
    assert norms["grad/c.var"] == pytest.approx(ref(mu.detach(), var), rel=1e-6)
    loss.backward()  # the graph is still usable by the training step
    assert trunk.weight.grad is not None


def test_inert_and_saturated_terms_are_reported_once():
    monitor = InertTermMonitor()
    norms = {"grad/sup": 1.0, "grad/unsup": 0.5, "grad/contrastive": 0.004, "grad/contrastive.mu": 0.0}
    stats = {"contrastive/loss": 1e-4, "contrastive/uniform_loss": 5.5}
    first = monitor.check(norms, stats, 100)
    assert len(first) == 2
    assert "'contrastive' is inert" in first[0] and "0.4%" in first[0]
    assert "saturated" in first[1]
    assert monitor.check(norms, stats, 200) == []
    faded = {"grad/sup": 1.0, "grad/contrastive": 0.005}  # λc(t) = exp(-5) at the end of training
    assert InertTermMonitor().check(faded, {"contrastive/lambda": math.exp(-5.0)}, 400) == []


@pytest.mark.slow
def test_trainer_logs_gradient_diagnostics(make_config, capsys):
    cfg = make_config("method.name=prcl", "train.iterations=4", "train.eval_every=100", "train.log_every=4",
                      "train.diagnostics_every=2", "data.max_val_images=2")
    train(cfg)
    records = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 4]  # iteration 1 too
    for r in records:
        assert {"grad/sup", "grad/unsup", "grad/contrastive", "grad/contrastive.mu", "grad/contrastive.var"} <= set(r)
        assert r["grad/sup"] > 0 and r["contrastive/uniform_loss"] > 0
