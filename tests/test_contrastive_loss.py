"""Tests of the contrastive loss (prcl.losses) against a slow float64 reference loop and closed forms."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prcl.config import ConfigError, contrastive_preset
from prcl.losses import (ClassMemoryBank, KeySet, PixelContrastiveLoss, info_nce, pairwise_similarity,
                         sample_anchors_and_negatives)
from prcl.losses.sampling import sample_classes
from prcl.probabilistic import mutual_likelihood_score

F64 = torch.float64
B, D, H, W, C = 2, 5, 4, 4, 4
SMALL = dict(num_anchors=3, num_negatives=5, vn={"num": 2},
             memory_bank={"enabled": True, "size": 40, "enqueue": 3, "negatives": 1})


def _loss(num_classes: int, dim: int, method: str = "prcl", **overrides) -> PixelContrastiveLoss:
    """The loss of a method preset with `method.contrastive` overrides (config key names)."""
    return PixelContrastiveLoss(num_classes, dim, contrastive_preset(method, **overrides))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int, classes=(0, 1, 2), probabilistic: bool = True):
    """A small float64 batch: labels from `classes` (+ some 255), ~80 % valid, random probs."""
    g = _gen(seed)
    mu = torch.randn(B, D, H, W, generator=g, dtype=F64).requires_grad_()
    var = (0.05 + torch.rand(B, D, H, W, generator=g, dtype=F64)).requires_grad_() if probabilistic else None
    labels = torch.tensor(classes)[torch.randint(len(classes), (B, H, W), generator=g)]
    labels[0, 0, 0] = 255
    valid = torch.rand(B, H, W, generator=g) < 0.8
    probs = torch.softmax(2 * torch.randn(B, C, H, W, generator=g, dtype=F64), 1)
    return mu, var, labels, valid, probs


# ----------------------------------------------------------------------------- reference
def _ref_mls(a, va, b, vb, reduction="mean", log_det="same"):
    v = va + vb
    d = a.numel()
    distance, logdet = (a - b).square().div(v).sum(), v.log().sum()
    ds = 1 / d if reduction == "mean" else 1.0
    ls = 1 / d if reduction == "mean" or log_det == "mean" else 1.0
    return -0.5 * (ds * distance + ls * logdet)


def _ref_pixels(mu, var, labels, valid, normalize=True):
    """Valid pixels in row-major (b, h, w) order, by explicit loops; mu L2-normalised with `normalize`."""
    rows_mu, rows_var, rows_label = [], [], []
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if valid[b, h, w] and labels[b, h, w] != 255:
                    m = mu[b, :, h, w]
                    rows_mu.append(m / m.square().sum().sqrt() if normalize else m)
                    rows_var.append(var[b, :, h, w] if var is not None else None)
                    rows_label.append(int(labels[b, h, w]))
    return rows_mu, rows_var, rows_label


def _ref_local(rows_mu, rows_var, rows_label, c, predictive=False):
    """Eq. 4 (precision-weighted) or the plain mean (rows_var None) of class c, detached; its
    variance is 1/precision (Eq. 4) or, `predictive`, the mean σ² of the class's pixels."""
    idx = [i for i, lab in enumerate(rows_label) if lab == c]
    if rows_var[0] is None:
        return torch.stack([rows_mu[i].detach() for i in idx]).mean(0), None
    precision = sum(1 / rows_var[i].detach() for i in idx)
    var = sum(rows_var[i].detach() for i in idx) / len(idx) if predictive else 1 / precision
    return sum(rows_mu[i].detach() / rows_var[i].detach() for i in idx) / precision, var


def _ref_spread(rows_mu, rows_var, rows_label, c):
    """The spread of class c's representations around their plain mean, per dim: E[μ²] − E[μ]² over its pixels."""
    mus = torch.stack([m.detach() for m, lab in zip(rows_mu, rows_label) if lab == c])
    return mus.var(0, unbiased=False)


def _reference_loss(rows, protos, sample, tau, bank=None, mls=("mean", "same"), vn_var=None, normalize=True):
    """Eq. 15 by loops: mean over anchor classes of the mean over anchors of -log softmax[positive].
    `vn_var`: {class: variance of its VNs} (None: VNs are points, variance 0)."""
    rows_mu, rows_var, _ = rows
    sim = (lambda a, va, b, vb: _ref_mls(a, va, b, vb, *mls)) if rows_var[0] is not None else \
        (lambda a, va, b, vb: (a * b).sum())
    unit = (lambda z: z / z.norm()) if normalize else (lambda z: z)
    per_class = []
    for k, c in enumerate(sample.anchor_classes.tolist()):
        losses = []
        for slot, a_i in enumerate(sample.anchor_index[k].tolist()):
            a, va = rows_mu[a_i], rows_var[a_i]
            p_mu, p_var = protos[c]
            logits = [sim(a, va, unit(p_mu), p_var)]
            if sample.negative_valid[k]:
                for j in sample.negative_index[k, slot].tolist():
                    vb = rows_var[j].detach() if rows_var[j] is not None else None
                    logits.append(sim(a, va, rows_mu[j].detach(), vb))
            if sample.vn is not None:
                for z, cls in zip(sample.vn[k], sample.vn_classes[k].tolist()):
                    if cls != c:
                        logits.append(sim(a, va, unit(z), torch.zeros_like(z) if vn_var is None else vn_var[cls]))
            if sample.bank_index is not None:
                for j, ok in zip(sample.bank_index[k, slot].tolist(), sample.bank_valid[k].tolist()):
                    if ok:
                        logits.append(sim(a, va, bank[0][j], None if bank[1] is None else bank[1][j]))
            scores = torch.stack(logits) / tau
            losses.append(torch.logsumexp(scores, 0) - scores[0])
        per_class.append(torch.stack(losses).mean())
    return torch.stack(per_class).mean()


def _check_sample(sample, rows_label, probs_rows, threshold):
    for k, c in enumerate(sample.anchor_classes.tolist()):
        for i in sample.anchor_index[k].tolist():
            assert rows_label[i] == c and probs_rows[i] < threshold
        if sample.negative_valid[k]:
            assert all(rows_label[j] != c for j in sample.negative_index[k].flatten().tolist())


def _probs_rows(probs, labels, valid):
    return [float(probs[b, labels[b, h, w], h, w]) for b in range(B) for h in range(H) for w in range(W)
            if valid[b, h, w] and labels[b, h, w] != 255]


# The documented presets, written out (README "Method decisions"; `prcl.config` METHOD_PRESETS and
# CONTRASTIVE_FORMS): what each Table 1 method and each scaling of Eq. 3 must make the loss compute. The
# reference below takes its settings from here, never from the object under test, so a wrong preset fails.
METHOD_TABLE = {
    "baseline": dict(pr=False, prototype="local", vn=False),  # cosine on μ, batch prototypes
    "baseline_plus": dict(pr=False, prototype="ema", vn=False),  # + EMA prototypes (Eq. 16)
    "prcl": dict(pr=True, prototype="gdp", vn=True),  # MLS (Eq. 3), GDP (Eq. 9), VNs (Eq. 10)
}
FORM_TABLE = {  # mls = (distance reduction, log-det reduction) over D
    "paper": dict(normalize=False, mls=("sum", "same"), prototype_var="posterior", vn_var="zero"),
    "release": dict(normalize=True, mls=("mean", "same"), prototype_var="posterior", vn_var="zero"),
    "predictive": dict(normalize=True, mls=("sum", "mean"), prototype_var="predictive", vn_var="prototype"),
}
VN_DRAW = ("posterior", "variance")  # every form's VNs: Eq. 10, β·ε·σg² with σg² the GDP's posterior variance
SPREAD_VNS = {"vn": {"source": "empirical", "scale": "std"}}  # the issue #19 option: β·ε·σ, σ² the class's spread
VN_BETA = 1.0  # Eq. 10's β (Fig. 10b), the preset
NO_BANK = {"memory_bank": {"enabled": False}}


def _check_vn_draws(sample, gdp_mean, draw_var, beta, scale):
    """Eq. 10: every VN is μg + β·ε·s of its class's GDP (mean μg, Eq. 9), ε ~ N(0, I), s = σ² of `draw_var`
    (`variance`, the paper) or σ (`std`). ε is solved for from the reference GDP; its spread must be a standard
    normal's (a VN drawn with another variance, or σ instead of σ², puts it ≥ 2× off). Dims without spread
    are skipped."""
    spread = {c: v if scale == "variance" else v.sqrt() for c, v in draw_var.items()}
    eps = torch.cat([((z - gdp_mean[c]) / (beta * spread[c]))[spread[c] > 1e-12]
                     for row, classes in zip(sample.vn, sample.vn_classes) for z, c in zip(row, classes.tolist())])
    assert eps.numel() >= 60
    assert abs(float(eps.mean())) < 0.35 and 0.7 < float(eps.std()) < 1.4, (float(eps.mean()), float(eps.std()))


@pytest.mark.parametrize("method,extra,written", [
    ("prcl", {}, {}),
    ("baseline", {}, {}),
    ("baseline_plus", {}, {}),
    ("prcl", dict(prototype="local", vn={"enabled": False}, **NO_BANK), dict(prototype="local", vn=False)),
    ("prcl", dict(form="release", **NO_BANK), {}),
    ("prcl", dict(form="paper", **NO_BANK), {}),
    ("prcl", dict(form="predictive", prototype="local", **NO_BANK), dict(prototype="local")),
    ("prcl", SPREAD_VNS, dict(vn_draw=("empirical", "std"))),
])
def test_loss_and_gradients_equal_float64_reference_loop(method, extra, written):
    """`extra`: config overrides; `written`: the same overrides in the reference's vocabulary."""
    tau = 0.7
    form = extra.get("form", "predictive")  # the package default
    ref = {**METHOD_TABLE[method], **FORM_TABLE[form], "vn_draw": VN_DRAW, **written}
    normalize = ref["normalize"] or not ref["pr"]  # cosine is always on unit vectors
    predictive = ref["prototype_var"] == "predictive"
    loss_fn = _loss(C, D, method, temperature=tau, **{**SMALL, **extra})
    loss_fn.record_sample = True
    step1, step2 = _batch(1, probabilistic=ref["pr"]), _batch(2, classes=(0, 1, 3), probabilistic=ref["pr"])
    loss_fn(*step1, generator=_gen(10))
    bank = None if loss_fn.bank is None else \
        tuple(None if t is None else t.clone() for t in loss_fn.bank.flat())
    loss, stats = loss_fn(*step2, generator=_gen(11))
    loss.backward()
    sample = loss_fn.last_sample

    rows1, rows2 = _ref_pixels(*step1[:4], normalize), _ref_pixels(*step2[:4], normalize)
    _check_sample(sample, rows2[2], _probs_rows(step2[4], step2[2], step2[3]), 0.8)
    protos = {}
    union = tuple(r1 + r2 for r1, r2 in zip(rows1, rows2))
    for c in set(rows2[2]):
        if ref["prototype"] == "gdp":  # GDP after this step = Eq. 4 over both steps' pixels
            protos[c] = _ref_local(*union, c, predictive)
        elif ref["prototype"] == "ema":  # Eq. 16, initialised by step 1 when the class was seen
            now = _ref_local(*rows2, c)[0]
            protos[c] = (0.99 * _ref_local(*rows1, c)[0] + 0.01 * now if c in rows1[2] else now, None)
        else:
            protos[c] = _ref_local(*rows2, c, predictive)
    assert (sample.vn is not None) == ref["vn"]
    vn_var = None
    if ref["vn"]:
        gdp = {c: _ref_local(*union, c) for c in set(union[2])}  # mean and posterior variance (Eq. 9)
        source, scale = ref["vn_draw"]
        draw_var = {c: v for c, (_, v) in gdp.items()} if source == "posterior" else \
            {c: _ref_spread(*union, c) for c in gdp}
        _check_vn_draws(sample, {c: m for c, (m, _) in gdp.items()}, draw_var, VN_BETA, scale)
        if ref["vn_var"] == "prototype":  # the VN's class's prototype variance, as prototype_var defines it
            vn_var = {c: _ref_local(*union, c, predictive)[1] for c in set(union[2])}
    mu, var = step2[0], step2[1]
    want_loss = _reference_loss(rows2, protos, sample, tau, bank, ref["mls"], vn_var, normalize)
    assert stats["loss"] == pytest.approx(want_loss.item(), rel=1e-10)
    assert stats["classes"] == sample.anchor_classes.numel() > 0
    inputs = [mu] + ([var] if ref["pr"] else [])
    got = [t.grad.clone() for t in inputs]
    want = torch.autograd.grad(want_loss, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction,const,dim,clamp,log_det", [("mean", False, 5, False, "same"),
                                                               ("sum", True, 8, True, "same"),
                                                               ("mean", False, 8, False, "same"),
                                                               ("sum", True, 8, False, "mean")])
def test_pairwise_kernel_matches_mls_values_and_grads(reduction, const, dim, clamp, log_det):
    """The chunked kernel == the public MLS (plain and grouped-log paths, with and without clamp)."""
    g = _gen(3)
    a = torch.randn(7, dim, generator=g, dtype=F64, requires_grad=True)
    va = 0.1 + torch.rand(7, dim, generator=g, dtype=F64)
    table, tvar = torch.randn(9, dim, generator=g, dtype=F64), torch.rand(9, dim, generator=g, dtype=F64)
    tvar[0] = 0.0  # a VN-like key
    index = torch.randint(9, (7, 6), generator=g)
    if clamp:  # anchor 0 with var 0 meets the VN key: va + vb = 0 is clamped to VAR_EPS
        va[0], index[0, :2] = 0.0, 0
    va.requires_grad_()
    got = pairwise_similarity(a, va, table, tvar, index, reduction=reduction, include_const=const,
                              log_det=log_det, chunk_elements=2 * 6 * dim)  # several chunks
    want = mutual_likelihood_score(a[:, None], va[:, None], table[index], tvar[index], reduction=reduction,
                                   normalize=False, include_const=const, log_det=log_det)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(7, 6, generator=g, dtype=F64)
    grads = torch.autograd.grad((got * weights).sum(), (a, va))
    wants = torch.autograd.grad((want * weights).sum(), (a, va))
    for x, y in zip(grads, wants):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    cosine = pairwise_similarity(a, None, table, None, index)
    torch.testing.assert_close(cosine, (a[:, None] * table[index]).sum(-1), rtol=1e-12, atol=1e-12)


def test_gradcheck_info_nce_with_fixed_indices():
    g = _gen(4)
    k, a_n = 2, 3
    anchors = torch.randn(k, a_n, D, generator=g, dtype=F64, requires_grad=True)
    anchor_var = (0.2 + torch.rand(k, a_n, D, generator=g, dtype=F64)).requires_grad_()
    protos = torch.randn(C, D, generator=g, dtype=F64)
    proto_var = 0.01 * torch.rand(C, D, generator=g, dtype=F64)
    pixels, pixel_var = torch.randn(10, D, generator=g, dtype=F64), torch.rand(10, D, generator=g, dtype=F64)
    vns = torch.randn(k * 4, D, generator=g, dtype=F64)
    keys = [KeySet(protos, proto_var, torch.tensor([1, 2]).view(k, 1, 1)),
            KeySet(pixels, pixel_var, torch.randint(10, (k, a_n, 5), generator=g)),
            KeySet(vns, None, torch.arange(k * 4).view(k, 1, 4),  # shared points: the matmul path
                   torch.tensor([[True, False, True, True], [False, True, True, False]]), points=True),
            KeySet(vns, torch.zeros_like(vns), torch.randint(k * 4, (k, a_n, 2), generator=g))]
    for chunk, fast, reduction, log_det in ((7, True, "mean", "same"), (1 << 20, False, "mean", "same"),
                                            (7, True, "sum", "mean")):  # tiny chunks: many loop iterations
        assert torch.autograd.gradcheck(
            lambda m, v: info_nce(m, v, keys, temperature=0.5, reduction=reduction, log_det=log_det,
                                  chunk_elements=chunk), (anchors, anchor_var), fast_mode=fast)
    cos_keys = [KeySet(ks.mu, None, ks.index, ks.valid, ks.points) for ks in keys]
    assert torch.autograd.gradcheck(lambda m: info_nce(m, None, cos_keys, temperature=0.5), (anchors,))


@pytest.mark.parametrize("form, bound", [("predictive", 0.25), ("release", 0.1)])
def test_uncertain_mislabeled_pixel_moves_less(form, bound):
    """Sec. 3.2: a wrongly labeled pixel with a large variance gets a smaller gradient on its mu
    (100x the variance: under a tenth of the gradient in the release's form; with the default form,
    whose small-variance case is closer to saturation, under a quarter)."""
    d, n = 8, 6
    e0, e1 = torch.eye(d, dtype=F64)[0], torch.eye(d, dtype=F64)[1]
    g = _gen(5)
    centres = torch.cat([e0.repeat(n, 1), e1.repeat(n, 1), e0[None]])  # last pixel: near e0, label 1
    points = centres + 0.05 * torch.randn(2 * n + 1, d, generator=g, dtype=F64)
    labels = torch.tensor([0] * n + [1] * n + [1]).view(1, 1, -1)
    probs = torch.full((1, 2, 1, 2 * n + 1), 0.01, dtype=F64)
    probs[0, labels[0, 0], 0, torch.arange(2 * n + 1)] = 0.99
    probs[0, :, 0, -1] = 0.5  # the mislabeled pixel is the only hard anchor
    norms = []
    for bad_var in (0.01, 1.0):
        mu = points.t().reshape(1, d, 1, -1).clone().requires_grad_()
        var = torch.full_like(mu, 0.1)
        var[..., -1] = bad_var
        loss_fn = _loss(2, d, form=form, temperature=0.5, prototype="local", vn={"enabled": False},
                        num_anchors=4, num_negatives=8)
        loss, stats = loss_fn(mu, var, labels, torch.ones_like(labels, dtype=torch.bool), probs,
                              generator=_gen(6))
        loss.backward()
        assert stats["classes"] == 1 and mu.grad[..., :-1].abs().max() < 1e-12
        norms.append(mu.grad[0, :, 0, -1].norm().item())
    assert norms[1] < bound * norms[0]


def test_sampling_follows_class_distribution_and_masks():
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 3)
    hard = torch.ones(15, dtype=torch.bool)
    hard[12:] = False  # class 2 has no hard pixel -> no anchors, but serves as a negative
    logits = torch.tensor([[0.0, 1.0, -0.5, 3.0], [0.3, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4])
    s = sample_anchors_and_negatives(labels, hard, logits, num_anchors=64, num_negatives=512,
                                     generator=_gen(7))
    assert s.anchor_classes.tolist() == [0, 1] and s.negative_valid.tolist() == [True, True]
    neg_cls = labels[s.negative_index[0]].flatten().double()
    want = math.exp(-0.5) / (math.exp(1.0) + math.exp(-0.5))  # class 3 absent, class 0 = own
    assert (neg_cls == 2).double().mean().item() == pytest.approx(want, abs=0.02)
    assert set(neg_cls.unique().tolist()) == {1.0, 2.0}
    assert set(labels[s.anchor_index[1]].tolist()) == {1}
    alone = sample_anchors_and_negatives(torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool),
                                         logits, num_anchors=2, num_negatives=3)
    assert alone.negative_valid.tolist() == [False]
    picked = sample_classes(torch.tensor([[0.0, 1e-300, 0.0, 2.0, 0.0]]), 4000, _gen(8))
    assert set(picked.flatten().tolist()) <= {1, 3}


def test_no_anchor_gives_a_differentiable_zero_and_alone_class_uses_vns():
    mu, var, labels, valid, probs = _batch(9)
    confident = torch.nn.functional.one_hot(labels.clamp(max=C - 1), C).permute(0, 3, 1, 2).to(F64)
    for loss_fn in (_loss(C, D, temperature=0.5, **SMALL),
                    _loss(C, D, "baseline", temperature=0.5)):
        v = var if loss_fn.probabilistic else None
        for vmask in (valid, torch.zeros_like(valid)):
            loss, stats = loss_fn(mu, v, labels, vmask, confident)
            loss.backward()
            assert loss.item() == 0.0 and stats["anchors"] == 0 and (mu.grad == 0).all()
    loss_fn = _loss(C, D, temperature=0.5, **SMALL)
    loss_fn(*_batch(10))  # GDPs for classes 0-2
    alone = _batch(11, classes=(1,))
    loss, stats = loss_fn(*alone)
    assert stats["classes"] == 1 and loss.item() > 0 and stats["vn_spread"] > 0
    baseline = _loss(C, D, "baseline", temperature=0.5)
    assert baseline(alone[0], None, *alone[2:])[1]["classes"] == 0


def test_state_dict_resume_reproduces_the_next_step():
    loss_fn = _loss(C, D, temperature=0.5, **SMALL)
    loss_fn(*_batch(12), generator=_gen(1))
    state = copy.deepcopy(loss_fn.state_dict())
    assert {"gdp.precision", "gdp.precision_mean", "gdp.initialized", "bank.mu", "bank.var",
            "bank.ptr", "bank.filled"} <= set(state)
    resumed = _loss(C, D, temperature=0.5, **SMALL)
    resumed.load_state_dict(state)
    a, stats_a = loss_fn(*_batch(13), generator=_gen(2))
    b, stats_b = resumed(*_batch(13), generator=_gen(2))
    assert a.item() == b.item() and stats_a == stats_b


def test_memory_bank_is_a_fifo_of_fixed_size():
    bank = ClassMemoryBank(2, 3, 11, with_var=True)  # capacity 5 per class
    assert bank.capacity == 5 and bank.mu.shape == (2, 5, 3)
    for step in range(3):  # two pixels of class 1 per step, tagged by (step, i)
        tags = torch.tensor([10.0 * step, 10.0 * step + 1])
        mu = tags[:, None].repeat(1, 3)
        bank.enqueue(torch.tensor([1, 1]), mu, mu + 0.5, per_class=4, generator=_gen(step))
    stored, stored_var = bank.entries(1)
    steps = (stored[:, 0] // 10).tolist()
    assert steps[0] == 0 and sorted(steps[1:]) == [1, 1, 2, 2] and steps[1:3] == [1, 1]
    assert torch.equal(stored_var, stored + 0.5) and bank.filled.tolist() == [0, 5]
    assert bank.entries(0)[0].shape == (0, 3)
    bank.enqueue(torch.tensor([0] * 7), torch.arange(7.0)[:, None].repeat(1, 3), torch.ones(7, 3),
                 per_class=3, generator=_gen(5))
    first = bank.entries(0)[0][:, 0]
    assert first.numel() == 3 and first.unique().numel() == 3 and bank.filled.tolist() == [3, 5]
    index, valid = bank.sample_index(torch.tensor([0, 1]), num_anchors=2, per_class=2, generator=_gen(6))
    assert index.shape == (2, 2, 4)
    assert valid.tolist() == [[False, False, True, True], [True, True, False, False]]
    assert (index[..., 2:] // 5 == 1).all() and (index[..., 2:] % 5 < 5).all()
    with pytest.raises(ValueError, match="memory_bank_size"):
        ClassMemoryBank(4, 3, 3, with_var=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "'method.contrastive.temperature' must be > 0"),
    (dict(prototype="mean"), "'method.contrastive.prototype' must be one of"),
    (dict(pr=False), "prototype=gdp needs pr=true"),
    (dict(pr=False, prototype="local"), "vn.enabled=true needs pr=true"),
    (dict(strong_threshold=1.5), "'method.contrastive.strong_threshold' must be in \\(0, 1\\]"),
    (dict(vn={"scale": "sigma"}), "'method.contrastive.vn.scale' must be one of"),
    (dict(mls={"reduction": "max"}), "'method.contrastive.mls.reduction' must be one of"),
    (dict(num_anchors=0), "'method.contrastive.num_anchors' must be > 0"),
    (dict(memory_bank={"size": -1}), "'method.contrastive.memory_bank.size' must be > 0"),
    (dict(gdp_forgetting=2.0), "'method.contrastive.gdp_forgetting' must be in \\[0, 1\\]"),
    (dict(ema_momentum=1.0), "'method.contrastive.ema_momentum' must be < 1"),
])
def test_bad_settings_raise_the_config_error(kwargs, match):
    """One rule, one place: the loss applies the config's own checks (messages name the config key),
    whether the settings come from a preset or are a hand-built ContrastiveConfig."""
    with pytest.raises(ConfigError, match=match):
        _loss(C, D, **kwargs)
    c = contrastive_preset("prcl")
    for key, value in kwargs.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                setattr(getattr(c, key), sub, v)
        else:
            setattr(c, key, value)
    with pytest.raises(ConfigError, match=match):
        PixelContrastiveLoss(C, D, c)


def test_bad_inputs_raise_clear_errors():
    mu, var, labels, valid, probs = _batch(14)
    loss_fn = _loss(C, D, temperature=0.5)
    with pytest.raises(ValueError, match="var must be"):
        loss_fn(mu, None, labels, valid, probs)
    with pytest.raises(ValueError, match="probs must be"):
        loss_fn(mu, var, labels, valid, probs[:, :2])
    with pytest.raises(ValueError, match="valid must be"):
        loss_fn(mu, var, labels, valid.long(), probs)
    with pytest.raises(ValueError, match=r"labels of valid pixels must lie in \[0, 4\)"):
        loss_fn(mu, var, labels.masked_fill(valid, 7), valid, probs)
    with pytest.raises(ValueError, match="var must be None"):
        _loss(C, D, "baseline", temperature=0.5)(mu, var, labels, valid, probs)
    with pytest.raises(ConfigError, match="unknown method 'reco'"):
        _loss(C, D, "reco", temperature=0.5)


def test_gdp_drift_stat_and_integer_label_dtypes():
    loss_fn = _loss(C, D, temperature=0.5, **SMALL)
    loss_fn(*_batch(15), generator=_gen(1))
    before, seen = loss_fn.gdp.mean.clone(), loss_fn.gdp.initialized.clone()
    mu, var, labels, valid, probs = _batch(16, classes=(0, 1, 3))
    twin = copy.deepcopy(loss_fn)
    _, stats = loss_fn(mu, var, labels, valid, probs, generator=_gen(2))
    moved = seen & torch.isin(torch.arange(C), labels[valid & (labels != 255)])
    want = (loss_fn.gdp.mean[moved] - before[moved]).norm(dim=1).mean().item()
    assert stats["gdp_drift"] == pytest.approx(want, rel=1e-9) and want > 0
    _, stats_int = twin(mu, var, labels.int(), valid, probs, generator=_gen(2))
    assert stats_int == stats


def test_shared_point_matmul_path_matches_direct_mls():
    """VNs (variance 0, shared by a class's anchors) use an expanded matmul form: same values in
    float64, and float32 stays within 1e-5 of float64 at paper-like values (D=256, unit means)."""
    from prcl.losses.pairwise import shared_point_similarity
    g = _gen(17)
    mu = torch.nn.functional.normalize(torch.randn(2, 3, 256, generator=g, dtype=F64), dim=-1)
    var = torch.sigmoid(torch.randn(2, 3, 256, generator=g, dtype=F64) - 3)  # ~0.05, as the release
    noise = 0.3 * torch.randn(2, 4, 256, generator=g, dtype=F64)
    points = torch.nn.functional.normalize(mu[:, :1] + noise, dim=-1)
    direct = mutual_likelihood_score(mu[:, :, None], var[:, :, None], points[:, None],
                                     torch.zeros_like(points)[:, None], normalize=False)
    torch.testing.assert_close(shared_point_similarity(mu, var, points), direct, rtol=1e-12, atol=1e-12)
    single = shared_point_similarity(mu.float(), var.float(), points.float())
    assert (single.double() - direct).abs().max() < 1e-5
    torch.testing.assert_close(shared_point_similarity(mu, None, points), mu @ points.transpose(1, 2))
    for reduction, log_det, const in (("sum", "same", True), ("sum", "mean", False), ("sum", "mean", True)):
        direct = mutual_likelihood_score(mu[:, :, None], var[:, :, None], points[:, None],
                                         torch.zeros_like(points)[:, None], normalize=False, reduction=reduction,
                                         log_det=log_det, include_const=const)
        torch.testing.assert_close(shared_point_similarity(mu, var, points, reduction=reduction, log_det=log_det,
                                                           include_const=const), direct, rtol=1e-12, atol=1e-9)


def test_local_positive_with_gdp_virtual_negatives():
    """Table 8 '+PR+VN': local prototypes are the positives, VNs still come from a maintained GDP."""
    torch.manual_seed(0)
    loss_fn = _loss(4, 8, temperature=0.5, prototype="local", num_anchors=4, num_negatives=4)
    assert loss_fn.gdp is not None and loss_fn.vn_enabled
    mu = torch.randn(2, 8, 5, 5, requires_grad=True)
    var = torch.rand(2, 8, 5, 5) + 0.1
    labels = torch.randint(0, 4, (2, 5, 5))
    probs = torch.full((2, 4, 5, 5), 0.25)
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    loss_fn.record_sample = True
    before, rng = copy.deepcopy(loss_fn), torch.get_rng_state()
    loss, stats = loss_fn(mu, var, labels, valid, probs)
    loss.backward()
    # the gradient reaches exactly the anchors' μ (prototypes, negatives and VNs are detached keys) ...
    anchors = torch.zeros(2 * 5 * 5, dtype=torch.bool)  # every pixel is valid: the table is row-major (b, h, w)
    anchors[loss_fn.last_sample.anchor_index.flatten()] = True
    norms = mu.grad.permute(0, 2, 3, 1).reshape(-1, 8).norm(dim=1)
    assert torch.isfinite(loss) and torch.isfinite(mu.grad).all()
    assert (norms[anchors] > 1e-4).all() and (norms[~anchors] == 0).all() and anchors.sum() >= 4
    # ... with the value of the same step in float64 (the GDP as before it, the same draws)
    torch.set_rng_state(rng)
    mu64 = mu.detach().double().requires_grad_()
    loss64, _ = before(mu64, var.double(), labels, valid, probs.double())
    (grad64,) = torch.autograd.grad(loss64, mu64)
    assert float(loss.detach()) == pytest.approx(float(loss64.detach()), rel=1e-5)
    torch.testing.assert_close(mu.grad.double(), grad64, rtol=1e-3, atol=1e-6)
    assert loss_fn.gdp.initialized.all() and stats["vn_spread"] > 0
    present = torch.isfinite(loss_fn.last_local_mean).all(1)
    assert present.all()


def test_the_cosine_baseline_and_prcl_are_named_classes_of_one_loss():
    from prcl.config import load_config
    from prcl.losses import CosineContrastiveLoss, PRCLContrastiveLoss

    for name, kind in [("baseline", CosineContrastiveLoss), ("baseline_plus", CosineContrastiveLoss),
                       ("prcl", PRCLContrastiveLoss)]:
        loss_fn = PixelContrastiveLoss.from_config(load_config(None, [f"method.name={name}"]), C)
        assert type(loss_fn) is kind and loss_fn.probabilistic == (kind is PRCLContrastiveLoss), name
    assert not CosineContrastiveLoss(C, D).probabilistic and PRCLContrastiveLoss(C, D).probabilistic
    with pytest.raises(ValueError, match="pr=true; the cosine contrast of the Baseline is CosineContrastiveLoss"):
        PRCLContrastiveLoss(C, D, contrastive_preset("baseline"))
    with pytest.raises(ValueError, match="pr=false; the probabilistic contrast is PRCLContrastiveLoss"):
        CosineContrastiveLoss(C, D, contrastive_preset("prcl"))
