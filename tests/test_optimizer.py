"""The optimiser's parameter groups: the network at `optim.lr`, the probability head at
`optim.prob_head_lr` (the paper's "soft freeze" of σ², Sec. 4.1), every parameter in exactly one
group, and the per-iteration poly schedule scaling both groups alike."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL
from prcl.config import load_config
from prcl.engine.optimizer import build_optimizer
from prcl.engine.schedules import poly_scheduler
from prcl.models import build_model


def model_and_optim(method: str, name: str):
    cfg = load_config(None, [*TINY_MODEL, f"method.name={method}", f"optim.name={name}", "optim.lr=0.01",
                             "optim.prob_head_lr=0.0003", "optim.poly_power=0.9"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    return model, build_optimizer(model, cfg.optim), cfg.optim


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_prob_head_has_its_own_lr_and_every_parameter_is_in_exactly_one_group(name):
    model, optim, o = model_and_optim("prcl", name)
    assert type(optim).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[name]
    main, prob = optim.param_groups
    assert (main["lr"], prob["lr"]) == (o.lr, o.prob_head_lr) == (0.01, 0.0003)
    ids = [id(p) for g in optim.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter in no group"
    assert {id(p) for p in prob["params"]} == {id(p) for p in model.prob_head.parameters()}
    assert {id(p) for p in model.seg_head.parameters()} <= {id(p) for p in main["params"]}
    assert all(g["weight_decay"] == o.weight_decay for g in optim.param_groups)


def test_without_a_probability_head_there_is_one_group():
    model, optim, o = model_and_optim("baseline", "sgd")  # deterministic μ: no σ² head
    assert model.prob_head is None and len(optim.param_groups) == 1
    assert optim.param_groups[0]["lr"] == o.lr
    assert {id(p) for p in optim.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_poly_schedule_scales_both_groups_each_iteration():
    model, optim, o = model_and_optim("prcl", "sgd")
    total = 10
    scheduler = poly_scheduler(optim, total, o.poly_power)
    for t in range(total + 1):
        factor = (1 - t / total) ** 0.9
        assert [g["lr"] for g in optim.param_groups] == pytest.approx([0.01 * factor, 0.0003 * factor], abs=1e-15)
        optim.step()
        scheduler.step()
    assert [g["lr"] for g in optim.param_groups] == [0.0, 0.0]  # stays at 0 past the end


def test_head_lr_scale_gives_decoder_and_heads_their_own_group():
    """UniMatch's recipe: the backbone at lr, everything after it at 10× lr; the σ² head keeps its group."""
    cfg = load_config(None, [*TINY_MODEL, "method.name=unimatch_prcl", "optim.name=sgd", "optim.lr=0.001",
                             "optim.head_lr_scale=10", "optim.prob_head_lr=0.0003"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    optim = build_optimizer(model, cfg.optim)
    backbone, head, prob = optim.param_groups
    assert [g["lr"] for g in optim.param_groups] == pytest.approx([0.001, 0.01, 0.0003])
    ids = [id(p) for g in optim.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    for part in (model.aspp, model.reduce, model.seg_head, model.rep_head):
        assert {id(p) for p in part.parameters()} <= {id(p) for p in head["params"]}
    scheduler = poly_scheduler(optim, 10, cfg.optim.poly_power)
    for _ in range(5):
        optim.step()
        scheduler.step()
    assert [g["lr"] for g in optim.param_groups] == pytest.approx([x * 0.5 ** 0.9 for x in (0.001, 0.01, 0.0003)])
