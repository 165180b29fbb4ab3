"""`method.pseudo_label_noise` (issues #19, #28): which pixels flip and to what, that the flipped labels reach
every loss of every method with pseudo-labels and only where the labeler's confidence is ≥ δw (with δw > 0),
and that each DDP rank flips its own pixels while rank 0 keeps the single-process draw."""

from __future__ import annotations

import pytest
import torch

from prcl import IGNORE_INDEX
from prcl.config import WITHOUT_PSEUDO_LABELS, load_config
from prcl.methods import METHODS, build_method, pseudo_label_noise
from prcl.methods.contrastive_term import ContrastiveTerm
from prcl.methods.pseudo_label_noise import PseudoLabelNoise, corrupt_pseudo_labels
from prcl.methods.pseudo_labels import PseudoLabels, argmax_pseudo_labels

SEED, ITERATIONS, ITERATION = 3, 10, 5  # the draw of iteration 5 of 10


def old_seed(seed: int, iteration: int) -> int:
    """The seed of every process before the rank entered it (single-process runs must keep it)."""
    return seed * 1_000_003 + iteration


def test_pseudo_label_noise_flips_a_fraction_of_the_confident_labels_to_another_class():
    g = torch.Generator().manual_seed(0)
    pseudo = torch.randint(0, 5, (4, 64, 64), generator=g)
    pseudo[:, :4] = IGNORE_INDEX
    confidence = torch.rand(4, 64, 64, generator=g)
    noisy = corrupt_pseudo_labels(pseudo, confidence, 0.4, 0.7, 5, torch.Generator().manual_seed(3))
    changed = noisy != pseudo
    eligible = (confidence >= 0.7) & (pseudo != IGNORE_INDEX)
    assert not changed[~eligible].any()  # unconfident and ignored pixels are kept
    n = int(eligible.sum())
    assert abs(int(changed.sum()) - 0.4 * n) < 4 * (0.24 * n) ** 0.5  # binomial(n, 0.4), 4 std
    assert noisy[changed].max() < 5 and noisy[changed].min() >= 0
    again = corrupt_pseudo_labels(pseudo, confidence, 0.4, 0.7, 5, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    # every other class is drawn about equally often
    counts = torch.bincount(((noisy - pseudo) % 5)[changed], minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 0.2 * int(changed.sum())


def test_runner_up_noise_flips_the_same_pixels_to_the_labelers_second_choice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 32, 32, generator=g) * 3
    padding = torch.zeros(3, 32, 32, dtype=torch.bool)
    padding[:, :, :2] = True
    labels = argmax_pseudo_labels(logits, padding)
    second = logits.argsort(1, descending=True)[:, 1]  # independent of topk
    assert torch.equal(labels.runner_up[~padding], second[~padding]) and (labels.runner_up[padding] == IGNORE_INDEX).all()
    uniform = corrupt_pseudo_labels(labels.pseudo, labels.confidence, 0.4, 0.7, 5, torch.Generator().manual_seed(3))
    runner = corrupt_pseudo_labels(labels.pseudo, labels.confidence, 0.4, 0.7, 5, torch.Generator().manual_seed(3),
                                   labels.runner_up)
    changed = runner != labels.pseudo
    assert torch.equal(changed, uniform != labels.pseudo) and changed.sum() > 100  # the same pixels
    assert torch.equal(runner[changed], second[changed])  # each to its second choice


# ----------------------------------------------------------------------------- every method, every loss
DELTA_W, TAU = 0.5, 0.9  # δw (the noise's threshold) and τ/δu (the CE's), apart so that mixing them up shows
N_U, SIZE = 4, 16
HIGH, AT_DELTA_W, LOW = slice(0, 5), slice(5, 10), slice(10, SIZE)  # column bands of the labeler's confidence


def banded_logits(b: int) -> torch.Tensor:
    """The labeler's logits `[b, 3, SIZE, SIZE]`, by columns: confidence ≈ 1 (class i % 3 on image i), exactly
    δw = 0.5 (classes 0 and 1 tied, class 2 at probability 0), and 1/3 < δw (uniform)."""
    logits = torch.zeros(b, 3, SIZE, SIZE)
    for i in range(b):
        logits[i, i % 3, :, HIGH] = 10.0
    logits[:, 2, :, AT_DELTA_W] = -1e4
    return logits


def teacher(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"logits": banded_logits(x.shape[0])}


class Student(torch.nn.Module):
    """Eval mode (FixMatch and UniMatch label with it): `banded_logits`. Train mode: fixed random logits (so a
    CE depends on the label) and μ (and σ² with `var`) for the rows `heads` asks for."""

    def __init__(self, var: bool) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.var = var

    def forward(self, x, heads=True, feature_dropout=0.0, complementary_dropout=False):
        b = x.shape[0]
        if not self.training:
            return {"logits": banded_logits(b)}
        g = torch.Generator().manual_seed(b)
        out = {"logits": self.w + 3 * torch.randn(b, 3, SIZE, SIZE, generator=g)}
        if feature_dropout:
            out["logits_fp"] = self.w + 3 * torch.randn(b, 3, SIZE, SIZE, generator=g)
        if heads is not False:
            rows = torch.arange(b)[heads if heads is not True else slice(None)]
            out["mu"] = self.w + torch.randn(b, 4, SIZE // 4, SIZE // 4, generator=g)[rows]
            if self.var:
                out["var"] = self.w + 0.2 + torch.rand(b, 4, SIZE // 4, SIZE // 4, generator=g)[rows]
        return out


def batches():
    g = torch.Generator().manual_seed(1)
    padding = torch.zeros(N_U, SIZE, SIZE, dtype=torch.bool)
    padding[:, :, 0] = True  # in the confident band: padding is never flipped
    unlabeled = {"image": torch.zeros(N_U, 3, SIZE, SIZE), "padding": padding,
                 "image_strong": torch.rand(N_U, 3, SIZE, SIZE, generator=g),
                 "image_strong2": torch.rand(N_U, 3, SIZE, SIZE, generator=g)}
    return {"image": torch.zeros(2, 3, SIZE, SIZE), "mask": torch.randint(0, 3, (2, SIZE, SIZE), generator=g)}, unlabeled


def record_loss_targets(monkeypatch) -> list[tuple[str, torch.Tensor]]:
    """(loss, the pseudo-labels it was given) for every call of a loss that reads pseudo-labels."""
    import prcl.methods.fixmatch as fixmatch  # UniMatch and V2 call its loss too (`FixMatch.pseudo_label_ce`)
    import prcl.methods.mean_teacher as mean_teacher

    seen: list[tuple[str, torch.Tensor]] = []
    for module, name in ((fixmatch, "thresholded_pseudo_label_loss"), (mean_teacher, "weighted_pseudo_label_loss")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda logits, pseudo, *rest, real=real: (
            seen.append(("unsup", pseudo.clone())) or real(logits, pseudo, *rest)))
    real_contrast = ContrastiveTerm.forward
    monkeypatch.setattr(ContrastiveTerm, "forward", lambda self, out, labels, pseudo, *rest: (
        seen.append(("contrastive", pseudo.clone())) or real_contrast(self, out, labels, pseudo, *rest)))
    return seen


UNSUP_CALLS = {"fixmatch": 1, "unimatch": 3, "unimatch_prcl": 3, "unimatch_v2": 2, "unimatch_v2_prcl": 2}
"""Calls of the unlabeled CE per step: UniMatch's S1, S2 and FP streams, V2's two strong views; 1 elsewhere."""


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(WITHOUT_PSEUDO_LABELS)))
def test_noise_reaches_every_loss_only_on_pixels_at_least_delta_w(name, monkeypatch):
    """Every loss that reads pseudo-labels gets the same noisy ones: flipped exactly where the single-process
    draw of (seed, iteration) falls below p among the pixels of confidence ≥ δw, the pixels at exactly δw
    included, none below δw or in the padding; and the loss values change."""
    seen = record_loss_targets(monkeypatch)
    steps, targets = {}, {}
    for p in (0.0, 0.5):
        cfg = load_config(None, [f"method.name={name}", "method.mix=none", f"method.pseudo_label_noise={p}",
                                 f"method.contrastive.weak_threshold={DELTA_W}", f"method.unsup_threshold={TAU}",
                                 "method.contrastive.strong_threshold=1.0", "method.contrastive.num_anchors=4",
                                 "method.contrastive.num_negatives=8", "model.rep_dim=4", f"seed={SEED}",
                                 f"train.iterations={ITERATIONS}"])
        method = build_method(cfg, 3)
        labeled, unlabeled = batches()
        seen.clear()
        torch.manual_seed(0)
        steps[p] = method.losses(Student(var=cfg.method.contrastive.pr).train(), teacher, labeled, unlabeled,
                                 ITERATION / ITERATIONS)
        targets[p] = list(seen)
    contrast = cfg.method.contrastive.enabled
    expected_calls = ["unsup"] * UNSUP_CALLS.get(name, 1) + ["contrastive"] * contrast
    assert sorted(k for k, _ in targets[0.5]) == sorted(expected_calls) == sorted(k for k, _ in targets[0.0])

    g = torch.Generator().manual_seed(old_seed(SEED, ITERATION))
    eligible = torch.zeros(N_U, SIZE, SIZE, dtype=torch.bool)
    eligible[:, :, 1:AT_DELTA_W.stop] = True  # confidence ≥ δw, outside the padding column
    want = eligible & (torch.rand(N_U, SIZE, SIZE, generator=g) < 0.5)
    for (where, clean), (_, noisy) in zip(targets[0.0], targets[0.5]):
        flipped = noisy != clean
        assert flipped[..., AT_DELTA_W].any() and flipped[..., 1:HIGH.stop].any(), where  # ≥ δw, not > δw
        assert not flipped[..., LOW].any() and not flipped[..., 0].any(), where
        assert torch.equal(flipped, want), where
        assert ((noisy[flipped] >= 0) & (noisy[flipped] < 3)).all(), where
    for term in steps[0.0].terms:
        if term != "sup":
            assert float(steps[0.0].terms[term].detach()) != float(steps[0.5].terms[term].detach()), term
    assert float(steps[0.0].terms["sup"].detach()) == float(steps[0.5].terms["sup"].detach())


# ----------------------------------------------------------------------------- ranks
def test_each_rank_flips_its_own_pixels_and_rank_0_keeps_the_single_process_draw(monkeypatch):
    """Under DDP every rank draws for its own images: with the seed of (seed, iteration) alone all ranks
    flipped the same pixel positions. Rank 0 must still draw exactly what every process drew before."""
    cfg = load_config(None, ["method.pseudo_label_noise=0.3", f"method.contrastive.weak_threshold={DELTA_W}",
                             f"seed={SEED}", f"train.iterations={ITERATIONS}"])
    noise = PseudoLabelNoise(cfg, 5)
    g = torch.Generator().manual_seed(0)
    pseudo = torch.randint(0, 5, (4, 32, 32), generator=g)
    confidence = torch.rand(4, 32, 32, generator=g)
    labels = PseudoLabels(pseudo, confidence, (pseudo + 1) % 5)
    eligible = confidence >= DELTA_W
    noisy = {}
    for r in range(3):
        monkeypatch.setattr(pseudo_label_noise, "rank", lambda r=r: r)
        noisy[r] = noise(labels, ITERATION / ITERATIONS)
    # rank 0: the draw of the code before the rank entered the seed, spelled out
    old = torch.Generator().manual_seed(old_seed(SEED, ITERATION))
    draw, offset = torch.rand(pseudo.shape, generator=old), torch.randint(1, 5, pseudo.shape, generator=old)
    assert torch.equal(noisy[0], torch.where((draw < 0.3) & eligible, (pseudo + offset) % 5, pseudo))
    flips = {r: noisy[r] != pseudo for r in noisy}
    n = int(eligible.sum())
    for r, f in flips.items():
        assert not f[~eligible].any() and abs(int(f.sum()) - 0.3 * n) < 4 * (0.21 * n) ** 0.5, r
    for a, b in ((0, 1), (0, 2), (1, 2)):  # independent draws: both flip ≈ p² of the eligible pixels, not p
        both = int((flips[a] & flips[b]).sum())
        assert abs(both - 0.09 * n) < 4 * (0.09 * 0.91 * n) ** 0.5, (a, b, both, n)
