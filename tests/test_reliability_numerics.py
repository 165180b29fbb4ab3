"""Numerical guards (issue 6, item 3): NaN/Inf injected into a training batch stops the run naming the
iteration, the loss terms and the last good checkpoint, or — with `train.skip_nonfinite=true` — the
step is undone and counted; a non-finite gradient behind a finite loss is caught too; σ² = 0 in the
MLS stays finite in float32, gradients included."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prcl import cli
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.nonfinite import NonFiniteLossError
from prcl.engine.trainer import Trainer
from prcl.probabilistic import VAR_EPS, mutual_likelihood_score
from test_reliability_inputs import error_line, run_cli, tiny_args


def poison_batches(monkeypatch, value: float, at: int) -> None:
    """Write `value` into a 4x4 patch of the first labeled image of the `at`-th labeled batch (1-based)."""
    real, seen = Trainer._next, []

    def _next(self, it):
        batch = real(self, it)
        if it is self.labeled:
            seen.append(it)
            if len(seen) == at:
                batch["image"][0, :, :4, :4] = value
        return batch

    monkeypatch.setattr(Trainer, "_next", _next)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def test_nan_in_a_batch_stops_naming_iteration_terms_and_checkpoint(capsys, synth_root, tmp_path, monkeypatch):
    poison_batches(monkeypatch, float("nan"), at=3)
    args = tiny_args(synth_root, tmp_path / "runs", "x", "train.iterations=4", "train.checkpoint_every=2")
    code, err = run_cli(capsys, "train", *args)
    last = tmp_path / "runs" / "x" / "checkpoints" / "last.pt"
    line = error_line(err)
    assert code == 2 and "non-finite loss at iteration 3, loss terms {'sup': nan, 'total': nan}" in line, line
    assert f"the last good checkpoint is {last} (iteration 2)" in line and "train.skip_nonfinite=true" in line
    state = load_checkpoint(last)
    assert state["iteration"] == 2 and all_finite(state["model"])


@pytest.mark.slow
def test_inf_in_a_batch_is_skipped_counted_and_logged(capsys, synth_root, tmp_path, monkeypatch):
    poison_batches(monkeypatch, float("inf"), at=2)
    args = tiny_args(synth_root, tmp_path / "runs", "x", "train.iterations=3", "train.skip_nonfinite=true")
    code = cli.main(["train", *args])
    out = capsys.readouterr()
    assert code == 0 and "skipped iteration 2: non-finite loss" in out.out + out.err
    run = tmp_path / "runs" / "x"
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in log] == [0, 1, 1] and math.isnan(log[1]["total"])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["skipped_steps"] == 1 and all_finite(state["model"])  # BN statistics too
    assert math.isfinite(json.loads((run / "metrics.jsonl").read_text())["miou"])


def _full_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"teacher.{k}": v.clone() for k, v in trainer.teacher.model.state_dict().items()})
    state.update({f"method.{k}": v.clone() for k, v in trainer.method.state_dict().items()})
    for i, param_state in trainer.optimizer.state_dict()["state"].items():  # momentum / Adam moments and step
        state.update({f"optimizer.{i}.{k}": v.clone() for k, v in param_state.items() if torch.is_tensor(v)})
    return state


@pytest.mark.slow
def test_skipped_step_leaves_weights_statistics_prototypes_and_optimizer_untouched(make_config, monkeypatch):
    """PRCL: the forward pass of a poisoned batch already updated BN statistics and the GDPs; a skip undoes it."""
    poison_batches(monkeypatch, float("nan"), at=3)
    cfg = make_config("method.name=prcl", "train.iterations=4", "train.skip_nonfinite=true",
                      "data.crop_size=32", "data.batch_size=2", "data.max_val_images=2")
    trainer = Trainer(cfg)
    trainer.train_step(0), trainer.train_step(1)
    before = _full_state(trainer)
    assert any("gdp" in k for k in before) and any(k.startswith("optimizer.") for k in before)
    values, _ = trainer.train_step(2)
    assert values["skipped_steps"] == 1 and trainer.scheduler.last_epoch == 3
    after = _full_state(trainer)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    trainer.train_step(3)
    assert all_finite(_full_state(trainer)) and trainer.state_dict(4)["skipped_steps"] == 1


@pytest.mark.slow
def test_non_finite_gradient_behind_a_finite_loss(make_config):
    trainer = Trainer(make_config("method.name=supervised", "train.iterations=2", "data.crop_size=32"))
    real = trainer.method.losses

    def losses(*args):  # sqrt(|w - w|²) is 0 but its gradient is 0/0
        step = real(*args)
        w = next(trainer.model.parameters())  # the backbone's first convolution
        step.terms["probe"] = ((w - w.detach()) ** 2).sum().sqrt()
        return step

    trainer.method.losses = losses
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at iteration 1, .*'probe': 0\.0.*no checkpoint"):
        trainer.train_step(0)


def test_mls_with_zero_variance_has_finite_scores_and_gradients_in_float32():
    """The probability head's sigmoid can underflow to σ² = 0 in float32; VNs carry σ² = 0 by design."""
    g = torch.Generator().manual_seed(0)
    mu_a = torch.randn(5, 1, 16, generator=g, requires_grad=True)
    mu_b = torch.randn(1, 7, 16, generator=g)
    var = torch.sigmoid(torch.full((5, 1, 16), -200.0)).requires_grad_()  # exactly 0 in float32
    assert (var == 0).all()
    for normalize in (True, False):
        for reduction in ("mean", "sum"):
            score = mutual_likelihood_score(mu_a, var, mu_b, torch.zeros(1, 7, 16), normalize=normalize,
                                            reduction=reduction)  # [5, 7]
            loss = torch.nn.functional.cross_entropy(score / 0.5, torch.zeros(5, dtype=torch.long))
            grad_mu, grad_var = torch.autograd.grad(loss, (mu_a, var))
            assert torch.isfinite(score).all() and torch.isfinite(loss)
            assert torch.isfinite(grad_mu).all() and torch.isfinite(grad_var).all()
    # the clamp sets the scale: with var = 0 the score equals the one at var = VAR_EPS
    at_eps = mutual_likelihood_score(mu_a, torch.full_like(var, VAR_EPS), mu_b, torch.zeros(1, 7, 16))
    assert torch.equal(mutual_likelihood_score(mu_a, var, mu_b, torch.zeros(1, 7, 16)), at_eps)
