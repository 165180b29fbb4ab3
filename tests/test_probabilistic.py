"""Tests of prcl.probabilistic against independent references (scipy, float64 brute force)."""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy.stats import multivariate_normal

from prcl.probabilistic import (VAR_EPS, EMAPrototypes, GlobalDistributionPrototypes,
                                class_natural_sums, contrastive_weight, local_prototype,
                                mutual_likelihood_score, virtual_negatives)

from spawn import spawn_with_deadline

D = 6


def _rand(*shape, seed=0, low=0.05, high=2.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _scipy_mls(mu_a, var_a, mu_b, var_b):
    """log N(mu_a - mu_b; 0, diag(var_a + var_b)) by scipy, for 1-D numpy vectors."""
    return multivariate_normal.logpdf(mu_a - mu_b, mean=np.zeros(len(mu_a)), cov=np.diag(var_a + var_b))


def test_mls_literal_form_equals_scipy_logpdf():
    mu_a, mu_b = _rand(5, D, seed=1, low=-1, high=1), _rand(5, D, seed=2, low=-1, high=1)
    var_a, var_b = _rand(5, D, seed=3), _rand(5, D, seed=4)
    got = mutual_likelihood_score(mu_a, var_a, mu_b, var_b, reduction="sum", normalize=False,
                                  include_const=True)
    want = [_scipy_mls(*(t[i].numpy() for t in (mu_a, var_a, mu_b, var_b))) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_mls_variants_follow_their_closed_forms():
    mu_a, mu_b = _rand(4, D, seed=5, low=-3, high=3), _rand(4, D, seed=6, low=-3, high=3)
    var_a, var_b = _rand(4, D, seed=7), _rand(4, D, seed=8)
    unit_a, unit_b = mu_a / mu_a.norm(dim=1, keepdim=True), mu_b / mu_b.norm(dim=1, keepdim=True)
    for i in range(4):
        full = _scipy_mls(mu_a[i].numpy(), var_a[i].numpy(), mu_b[i].numpy(), var_b[i].numpy())
        unit = _scipy_mls(unit_a[i].numpy(), var_a[i].numpy(), unit_b[i].numpy(), var_b[i].numpy())
        const = -0.5 * D * math.log(2 * math.pi)
        args = (mu_a[i], var_a[i], mu_b[i], var_b[i])
        cases = {  # (reduction, normalize, include_const) -> closed form
            ("sum", False, False): full - const,
            ("mean", False, True): full / D,
            ("mean", False, False): (full - const) / D,
            ("sum", True, True): unit,
            ("mean", True, False): (unit - const) / D,  # the release's form, the default
        }
        for (reduction, normalize, include_const), want in cases.items():
            got = mutual_likelihood_score(*args, reduction=reduction, normalize=normalize,
                                          include_const=include_const)
            assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12), (reduction, normalize)
        assert mutual_likelihood_score(*args).item() == pytest.approx((unit - const) / D, rel=1e-12)


def test_mls_broadcasts_over_leading_dims():
    mu_a, var_a = _rand(3, 1, D, seed=9, low=-1, high=1), _rand(3, 1, D, seed=10)
    mu_b, var_b = _rand(1, 4, D, seed=11, low=-1, high=1), _rand(4, D, seed=12)
    got = mutual_likelihood_score(mu_a, var_a, mu_b, var_b, reduction="sum", normalize=False,
                                  include_const=True)
    assert got.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            want = _scipy_mls(mu_a[i, 0].numpy(), var_a[i, 0].numpy(), mu_b[0, j].numpy(), var_b[j].numpy())
            assert got[i, j].item() == pytest.approx(want, rel=1e-12)


def test_mls_zero_variance_is_clamped_not_infinite():
    mu = _rand(2, D, seed=13)
    zero = torch.zeros(2, D, dtype=torch.float64)
    score = mutual_likelihood_score(mu[:1], zero[:1], mu[1:], zero[1:], normalize=False)
    assert torch.isfinite(score).all()
    want = -0.5 * ((mu[0] - mu[1]).square() / VAR_EPS + math.log(VAR_EPS)).mean()
    assert score.item() == pytest.approx(want.item(), rel=1e-12)


def test_mls_bad_reduction_is_rejected():
    x = torch.ones(D)
    with pytest.raises(ValueError, match="reduction"):
        mutual_likelihood_score(x, x, x, x, reduction="max")


def _brute_local_prototype(mu, var):
    n, d = mu.shape
    mean, variance = np.zeros(d), np.zeros(d)
    for l in range(d):
        precision = sum(1.0 / var[i, l] for i in range(n))
        variance[l] = 1.0 / precision
        mean[l] = sum(variance[l] / var[i, l] * mu[i, l] for i in range(n))
    return mean, variance


def test_local_prototype_equals_brute_force_loop():
    mu, var = _rand(7, D, seed=14, low=-2, high=2), _rand(7, D, seed=15)
    got_mu, got_var = local_prototype(mu, var)
    want_mu, want_var = _brute_local_prototype(mu.numpy(), var.numpy())
    np.testing.assert_allclose(got_mu.numpy(), want_mu, rtol=1e-13)
    np.testing.assert_allclose(got_var.numpy(), want_var, rtol=1e-13)
    with pytest.raises(ValueError, match="same shape"):
        local_prototype(mu, var[:3])


def test_gdp_chain_equals_local_prototype_of_the_union():
    """Eq. 6-9 / Appendix A: sequential Bayesian updates == Eq. 4 over all batches at once."""
    gdp = GlobalDistributionPrototypes(4, D)
    batches = [(_rand(n, D, seed=20 + i, low=-2, high=2), _rand(n, D, seed=40 + i, low=1e-3, high=3))
               for i, n in enumerate((5, 1, 9, 3))]
    for mu, var in batches:  # class 1 in every batch; class 2 in the first only; 0 and 3 never
        local_mu, local_var = local_prototype(mu, var)
        gdp.update(torch.tensor([1]), local_mu[None], local_var[None])
        if mu is batches[0][0]:
            gdp.update(torch.tensor([2]), local_mu[None], local_var[None])
    union_mu, union_var = _brute_local_prototype(torch.cat([b[0] for b in batches]).numpy(),
                                                 torch.cat([b[1] for b in batches]).numpy())
    np.testing.assert_allclose(gdp.mean[1].numpy(), union_mu, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gdp.var[1].numpy(), union_var, rtol=1e-10)
    first_mu, first_var = local_prototype(*batches[0])  # first observation initialises (sigma_0 -> inf)
    np.testing.assert_allclose(gdp.mean[2].numpy(), first_mu.numpy(), atol=1e-12)
    np.testing.assert_allclose(gdp.var[2].numpy(), first_var.numpy(), rtol=1e-12)
    assert gdp.initialized.tolist() == [False, True, True, False]
    assert (gdp.mean[[0, 3]] == 0).all() and torch.isinf(gdp.var[[0, 3]]).all()


def test_gdp_update_from_pixel_sums_matches_prototype_update_and_round_trips():
    labels = torch.tensor([0, 2, 2, 0, 2, 0, 0])
    mu, var = _rand(7, D, seed=50, low=-1, high=1), _rand(7, D, seed=51)
    by_sums, by_protos = GlobalDistributionPrototypes(3, D), GlobalDistributionPrototypes(3, D)
    ids = by_sums.update_from_sums(class_natural_sums(labels, mu, var, 3))
    assert ids.tolist() == [0, 2]
    for c in (0, 2):
        local_mu, local_var = local_prototype(mu[labels == c], var[labels == c])
        by_protos.update(torch.tensor([c]), local_mu[None], local_var[None])
    for name in ("mean", "var"):
        np.testing.assert_allclose(getattr(by_sums, name)[[0, 2]].numpy(),
                                   getattr(by_protos, name)[[0, 2]].numpy(), rtol=1e-12)
    restored = GlobalDistributionPrototypes(3, D)
    restored.load_state_dict(by_sums.state_dict())
    assert set(by_sums.state_dict()) == {"precision", "precision_mean", "count", "var_sum", "mu_sum", "mu_sq_sum",
                                         "initialized"}
    # predictive variance = the mean σ² of the class's pixels (a float64 loop as the reference)
    for c in (0, 2):
        pix = var[labels == c].double()
        np.testing.assert_allclose(by_sums.predictive_var[c].numpy(), (pix.sum(0) / len(pix)).numpy(), rtol=1e-12)
    assert by_sums.count.tolist() == [4.0, 0.0, 3.0]
    assert torch.equal(restored.mean, by_sums.mean) and torch.equal(restored.initialized, by_sums.initialized)
    assert by_sums.precision.dtype == torch.float64
    assert GlobalDistributionPrototypes(21, 256).nbytes == 21 * 256 * 8 * 5 + 21 * 8 + 21


def test_gdp_forgetting_scales_old_natural_parameters():
    gdp = GlobalDistributionPrototypes(1, D, forgetting=0.5)
    (m1, v1), (m2, v2) = [(_rand(1, D, seed=60 + i), _rand(1, D, seed=70 + i)) for i in range(2)]
    gdp.update(torch.tensor([0]), m1, v1)
    gdp.update(torch.tensor([0]), m2, v2)
    precision = 0.5 / v1 + 1 / v2
    np.testing.assert_allclose(gdp.var.numpy(), (1 / precision).numpy(), rtol=1e-12)
    np.testing.assert_allclose(gdp.mean.numpy(), ((0.5 * m1 / v1 + m2 / v2) / precision).numpy(), rtol=1e-12)


def test_gdp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="forgetting"):
        GlobalDistributionPrototypes(2, D, forgetting=1.5)
    gdp = GlobalDistributionPrototypes(2, D)
    ones = torch.ones(2, D)
    with pytest.raises(ValueError, match="unique"):
        gdp.update(torch.tensor([1, 1]), ones, ones)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        gdp.update(torch.tensor([0, 2]), ones, ones)
    with pytest.raises(ValueError, match="tensors"):
        gdp.update(torch.tensor([0]), ones, ones)


def test_class_natural_sums_match_brute_force():
    labels = torch.tensor([1, 1, 3, 1, 3])
    mu, var = _rand(5, D, seed=80, low=-1, high=1), _rand(5, D, seed=81)
    counts, precision, weighted, var_sum, mu_sum, mu_sq_sum = class_natural_sums(labels, mu, var, 4)
    assert counts.tolist() == [0, 3, 0, 2]
    for c in range(4):
        rows = [i for i in range(5) if labels[i] == c]
        want_p = sum((1 / var[i] for i in rows), torch.zeros(D, dtype=torch.float64))
        want_w = sum((mu[i] / var[i] for i in rows), torch.zeros(D, dtype=torch.float64))
        want_v = sum((var[i] for i in rows), torch.zeros(D, dtype=torch.float64))
        np.testing.assert_allclose(precision[c].numpy(), want_p.numpy(), rtol=1e-13)
        np.testing.assert_allclose(weighted[c].numpy(), want_w.numpy(), rtol=1e-13)
        np.testing.assert_allclose(var_sum[c].numpy(), want_v.numpy(), rtol=1e-13)
        want_m = sum((mu[i] for i in rows), torch.zeros(D, dtype=torch.float64))
        want_m2 = sum((mu[i] ** 2 for i in rows), torch.zeros(D, dtype=torch.float64))
        np.testing.assert_allclose(mu_sum[c].numpy(), want_m.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(mu_sq_sum[c].numpy(), want_m2.numpy(), rtol=1e-13, atol=1e-15)
    counts, precision, weighted, *_ = class_natural_sums(labels, mu, None, 4)  # deterministic: means
    np.testing.assert_allclose((weighted[1] / precision[1]).numpy(), mu[[0, 1, 3]].mean(0).numpy(),
                               rtol=1e-13)


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    labels = torch.tensor([[0, 1, 1], [1, 2, 1]][rank])
    mu, var = _rand(3, D, seed=90 + rank, low=-1, high=1), _rand(3, D, seed=95 + rank)
    gdp = GlobalDistributionPrototypes(3, D)
    gdp.update_from_sums(class_natural_sums(labels, mu, var, 3, sync=True))
    torch.save(gdp.state_dict(), os.path.join(out_dir, f"gdp{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_all_reduced_sums_give_identical_gdp_equal_to_the_union():
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the children need no fresh torch import (seconds); the workers run tiny single-thread ops
        spawn_with_deadline(_ddp_worker, (2, os.path.join(tmp, "init"), tmp), timeout=60, start_method="fork")
        states = [torch.load(os.path.join(tmp, f"gdp{r}.pt")) for r in range(2)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
    labels = torch.tensor([0, 1, 1, 1, 2, 1])
    mu = torch.cat([_rand(3, D, seed=90 + r, low=-1, high=1) for r in range(2)])
    var = torch.cat([_rand(3, D, seed=95 + r) for r in range(2)])
    gdp = GlobalDistributionPrototypes(3, D)
    gdp.load_state_dict(states[0])
    for c in range(3):
        want_mu, want_var = _brute_local_prototype(mu[labels == c].numpy(), var[labels == c].numpy())
        np.testing.assert_allclose(gdp.mean[c].numpy(), want_mu, atol=1e-12)
        np.testing.assert_allclose(gdp.var[c].numpy(), want_var, rtol=1e-12)


def test_ema_prototypes_follow_eq16_and_initialise_on_first_sight():
    ema = EMAPrototypes(3, D, momentum=0.99)
    first, second = _rand(1, D, seed=100), _rand(1, D, seed=101)
    ema.update(torch.tensor([2]), first)
    np.testing.assert_allclose(ema.mean[2].numpy(), first[0].numpy())
    ema.update(torch.tensor([2]), second)
    np.testing.assert_allclose(ema.mean[2].numpy(), (0.99 * first[0] + 0.01 * second[0]).numpy(), rtol=1e-12)
    assert ema.initialized.tolist() == [False, False, True] and ema.var is None
    with pytest.raises(ValueError, match="ema_momentum"):
        EMAPrototypes(3, D, momentum=1.0)


@pytest.mark.parametrize("scale", ["variance", "std"])
def test_virtual_negatives_have_mean_mu_and_eq10_spread(scale):
    mu = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], dtype=torch.float64)
    var = torch.tensor([[0.04, 0.25, 1.0], [0.5, 0.01, 0.09]], dtype=torch.float64)
    beta, n = 0.8, 20000
    z = virtual_negatives(mu, var, n, beta, scale=scale, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, n, 3)
    std = beta * (var if scale == "variance" else var.sqrt())
    # sampling error: mean within 5 standard errors, std within 5 % (n = 20000 -> se ~ 0.5 %)
    assert ((z.mean(1) - mu).abs() <= 5 * std / math.sqrt(n)).all()
    np.testing.assert_allclose(z.std(1).numpy(), std.numpy(), rtol=0.05)
    with pytest.raises(ValueError, match="scale"):
        virtual_negatives(mu, var, 2, 1.0, scale="var")


def test_contrastive_weight_eq12():
    assert contrastive_weight(0.0) == 1.0
    assert contrastive_weight(0.5, lambda0=2.0) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert contrastive_weight(1.0, alpha=-3.0) == pytest.approx(math.exp(-3.0))
    with pytest.raises(ValueError, match="progress"):
        contrastive_weight(1.5)


def test_gdp_state_without_pixel_statistics_loads():
    """A checkpoint written before `count`/`var_sum` existed loads (they start empty); the Eq. 9 state
    it has is restored exactly."""
    gdp = GlobalDistributionPrototypes(3, D)
    gdp.update_from_sums(class_natural_sums(torch.tensor([0, 2, 2]), _rand(3, D, seed=1), _rand(3, D, seed=2), 3))
    old = {k: v for k, v in gdp.state_dict().items() if k not in ("count", "var_sum", "mu_sum", "mu_sq_sum")}
    restored = GlobalDistributionPrototypes(3, D)
    restored.load_state_dict(old)
    assert torch.equal(restored.mean, gdp.mean) and torch.equal(restored.var, gdp.var)
    assert restored.count.sum() == 0 and restored.var_sum.sum() == 0 and restored.mu_sq_sum.sum() == 0

