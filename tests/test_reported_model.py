"""Which model a run reports (issue 27): methods with a teacher evaluate the student and the teacher, log
both, and report (and keep `best.pt` of) the one their authors do; evaluating the second model leaves the
training stream untouched."""

from __future__ import annotations

import json

import pytest
import torch

from prcl.config import METHOD_PRESETS, ConfigError
from prcl.engine import trainer as trainer_module
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.evaluate import evaluate
from prcl.engine.trainer import Trainer
from prcl.methods import reported_model_name

AUTHORS_CHOICE = {  # what each method's authors evaluate and keep their best checkpoint by, read from their code
    "supervised": "student", "fixmatch": "student", "unimatch": "student", "unimatch_prcl": "student",  # no teacher
    "mean_teacher": "teacher", "classmix": "teacher", "baseline": "teacher", "baseline_plus": "teacher",
    "prcl": "teacher",  # the PRCL release: test(ema_model), best_model.pth by its mIoU
    "unimatch_v2": "student", "unimatch_v2_prcl": "student",  # unimatch_v2.py: is_best = mIoU (not mIoU_ema)
}


def test_every_method_has_its_authors_choice():
    assert set(AUTHORS_CHOICE) == set(METHOD_PRESETS)


@pytest.mark.parametrize("method", sorted(AUTHORS_CHOICE))
def test_the_reported_model_is_the_authors_choice_unless_eval_model_says_otherwise(make_config, method):
    assert reported_model_name(make_config(f"method.name={method}")) == AUTHORS_CHOICE[method]
    assert reported_model_name(make_config(f"method.name={method}", "eval.model=student")) == "student"
    if AUTHORS_CHOICE[method] == "teacher" or method.startswith("unimatch_v2"):
        assert reported_model_name(make_config(f"method.name={method}", "eval.model=teacher")) == "teacher"


def test_a_teacher_that_does_not_exist_cannot_be_reported(make_config):
    with pytest.raises(ConfigError, match="eval.model=teacher.*fixmatch.*no teacher"):
        Trainer(make_config("method.name=fixmatch", "eval.model=teacher"))


@pytest.mark.slow
@pytest.mark.parametrize("reported, best_iteration", [("teacher", 1), ("student", 2)])
def test_best_checkpoint_follows_the_reported_model(make_config, monkeypatch, reported, best_iteration):
    """Teacher best at iteration 1, student best at iteration 2: `best.pt`, `miou`, `best_miou` and the
    per-model bests follow the evaluation of the reported model, and metrics.jsonl keeps both."""
    scores = iter([{"teacher": (0.5, [0.5]), "student": (0.3, [0.3])},
                   {"teacher": (0.4, [0.4]), "student": (0.6, [0.6])}])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: next(scores))
    cfg = make_config("method.name=classmix", f"eval.model={reported}", "train.iterations=2", "train.eval_every=1",
                      "train.diagnostics_every=0")
    summary = Trainer(cfg).fit()
    final = {"teacher": 0.4, "student": 0.6}
    assert summary["evaluated_model"] == reported
    assert summary["miou"] == final[reported] and summary["best_miou"] == max(0.5 if reported == "teacher" else 0.3,
                                                                              final[reported])
    assert summary["miou_by_model"] == final and summary["best_miou_by_model"] == {"teacher": 0.5, "student": 0.6}
    assert load_checkpoint(cfg.run_dir / "checkpoints" / "best.pt")["iteration"] == best_iteration
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records] == [reported, reported]
    assert [r["miou"] for r in records] == [r[f"miou/{reported}"] for r in records]
    assert [(r["miou/teacher"], r["miou/student"]) for r in records] == [(0.5, 0.3), (0.4, 0.6)]


@pytest.mark.slow
def test_a_method_without_teacher_logs_the_student_alone(make_config):
    cfg = make_config("method.name=fixmatch", "train.iterations=1", "data.max_val_images=2",
                      "train.diagnostics_every=0")
    summary = Trainer(cfg).fit()
    record = json.loads((cfg.run_dir / "metrics.jsonl").read_text())
    assert record["model"] == "student" and not any(k.startswith("miou/") for k in record)
    assert set(summary["miou_by_model"]) == {"student"} and summary["miou_by_model"]["student"] == summary["miou"]


@pytest.mark.slow
def test_evaluating_the_student_beside_the_teacher_draws_what_the_teacher_alone_draws(make_config):
    """The trainer's evaluation of both models consumes the global RNG exactly as evaluating the teacher alone
    (one DataLoader base seed), so adding the student's evaluation changed no run's training; and it reports
    each model's own confusion matrix."""
    trainer = Trainer(make_config("method.name=unimatch_v2", "data.max_val_images=3"))
    trainer.lock.release()
    with torch.no_grad():  # make the two models differ
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(11)
    results = trainer.evaluate()
    after_both = torch.get_rng_state()
    torch.manual_seed(11)
    alone = {}
    for name, model in (("teacher", trainer.teacher.model), ("student", trainer.model)):
        cm = evaluate(model, trainer.val_dataset, trainer.info.num_classes, device=torch.device("cpu"),
                      batch_size=trainer.cfg.eval.batch_size)
        alone[name] = cm.miou()
        if name == "teacher":
            after_teacher = torch.get_rng_state()
    assert torch.equal(after_both, after_teacher)
    assert {name: miou for name, (miou, _) in results.items()} == alone
    assert alone["teacher"] != alone["student"]
    assert trainer.model.training, "the student goes back to training mode"


def test_the_trainer_reports_what_trainer_evaluate_returns_for_the_reported_model(make_config, monkeypatch):
    """`prcl.engine.trainer.evaluate` is called once per model, teacher first (the one that draws from the RNG)."""
    calls = []
    real = trainer_module.evaluate

    def spy(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    trainer = Trainer(make_config("method.name=classmix", "data.max_val_images=2"))
    trainer.lock.release()
    trainer.evaluate()
    assert calls == [trainer.teacher.model, trainer.model]
