"""Probabilistic representations (PRCL Sec. 3.2-3.4): the maths of Eq. 3, 4, 9, 10, 12 and 16.

Pure tensor functions (`mutual_likelihood_score`, `local_prototype`, `class_natural_sums`,
`virtual_negatives`, `contrastive_weight`) plus the two small state classes that carry prototypes
across iterations: `GlobalDistributionPrototypes` (Eq. 9, PRCL) and `EMAPrototypes` (Eq. 16,
Baseline+). A representation is a diagonal Gaussian N(mu, diag(var)); `var` is the variance sigma^2.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prcl.distributed import all_reduce_sum

VAR_EPS = 1e-8
"""Lower clamp for a variance (or a sum of two variances) before it is inverted or logged, so a
zero variance (virtual negatives carry var = 0) never produces inf/nan."""

LOG_2PI = math.log(2.0 * math.pi)


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def mutual_likelihood_score(
    mu_a: Tensor,
    var_a: Tensor,
    mu_b: Tensor,
    var_b: Tensor,
    *,
    reduction: str = "mean",
    normalize: bool = True,
    include_const: bool = False,
    log_det: str = "same",
) -> Tensor:
    """Mutual Likelihood Score, Eq. 3: log N(mu_a - mu_b; 0, diag(var_a + var_b)).

    Inputs broadcast over leading dims; the last dim is D; returns the broadcast leading shape.
    `normalize` L2-normalises mu_a and mu_b first (the authors' release). `reduction="sum"` is the
    paper's literal sum over the D dims; `"mean"` divides it by D (the release's form), which is
    only a rescaling of the temperature (MLS_mean / tau == MLS_sum / (D * tau)).
    `log_det="mean"` (not in the paper) divides only the log-variance term by D: the distance term
    keeps the scale of a cosine similarity while a variance difference between keys costs O(1), not
    O(D). `include_const` adds the -1/2 log(2 pi) per dim (on the log-variance term's scale); it
    cancels in a softmax. var_a + var_b is clamped to >= VAR_EPS.
    """
    _check_choice("reduction", reduction, ("mean", "sum"))
    _check_choice("log_det", log_det, ("same", "mean"))
    if normalize:
        mu_a, mu_b = F.normalize(mu_a, dim=-1), F.normalize(mu_b, dim=-1)
    var = (var_a + var_b).clamp(min=VAR_EPS)
    dim = var.shape[-1]
    distance = (mu_a - mu_b).square().div(var).sum(-1)
    log_det_sum = var.log().sum(-1) + (LOG_2PI * dim if include_const else 0.0)
    ds = 1.0 / dim if reduction == "mean" else 1.0
    ls = 1.0 / dim if (log_det == "mean" or reduction == "mean") else 1.0
    return -0.5 * (ds * distance + ls * log_det_sum)


def local_prototype(mu: Tensor, var: Tensor) -> Tuple[Tensor, Tensor]:
    """Local prototype, Eq. 4, over the first dim: 1/var_hat = sum 1/var, mu_hat = var_hat sum mu/var.

    mu, var: [N, ..., D] -> (mu_hat, var_hat): [..., D]. var is clamped to >= VAR_EPS.
    """
    if mu.shape != var.shape or mu.dim() < 2 or mu.shape[0] == 0:
        raise ValueError(f"local_prototype needs mu and var of the same shape [N>0, ..., D], got "
                         f"{tuple(mu.shape)} and {tuple(var.shape)}")
    precision = var.clamp(min=VAR_EPS).reciprocal()
    var_hat = precision.sum(0).reciprocal()
    return var_hat * (precision * mu).sum(0), var_hat


class ClassSums(NamedTuple):
    """Per-class sufficient statistics (float64): counts [C], sum 1/var [C, D], sum mu/var [C, D],
    sum var [C, D] (the arithmetic mean of the σ² seen is var_sum / count; zeros without var), and the
    plain sums of mu and mu² [C, D] (the empirical spread of the class's representations)."""

    counts: Tensor
    precision: Tensor
    precision_mean: Tensor
    var_sum: Tensor
    mu_sum: Tensor
    mu_sq_sum: Tensor


def class_natural_sums(
    labels: Tensor, mu: Tensor, var: Optional[Tensor], num_classes: int, *, sync: bool = True
) -> ClassSums:
    """Per-class sufficient statistics of Eq. 4 / Eq. 9 for the pixels `labels` [P] in [0, C).

    Returns float64 `ClassSums`. With var=None every pixel has precision 1 (plain means, the
    deterministic baseline). The sums are computed in the inputs' precision with a one-hot matmul
    (deterministic, unlike atomics) and then cast to float64. With `sync` and a running
    torch.distributed group they are all-reduced (summed) over ranks, so the prototypes built from
    them are identical on every rank (exact DDP, one collective).
    """
    if labels.dim() != 1 or mu.dim() != 2 or mu.shape[0] != labels.shape[0]:
        raise ValueError(f"class_natural_sums needs labels [P] and mu [P, D], got "
                         f"{tuple(labels.shape)} and {tuple(mu.shape)}")
    with torch.no_grad():
        onehot_t = F.one_hot(labels, num_classes).t().to(mu.dtype)  # [C, P]
        mu_sum, mu_sq_sum = onehot_t @ mu, onehot_t @ mu.square()
        if var is None:
            precision = onehot_t.sum(1, keepdim=True).expand(-1, mu.shape[1])
            weighted, var_sum = mu_sum, torch.zeros_like(precision)
        else:
            inv = var.clamp(min=VAR_EPS).reciprocal()  # [P, D]
            precision, weighted, var_sum = onehot_t @ inv, onehot_t @ (mu * inv), onehot_t @ var
        stats = torch.cat([onehot_t.sum(1, keepdim=True), precision, weighted, var_sum, mu_sum, mu_sq_sum], 1).double()
        if sync:
            all_reduce_sum(stats)
    counts, rest = stats[:, 0], stats[:, 1:].view(stats.shape[0], 5, mu.shape[1]).unbind(1)
    return ClassSums(counts, *rest)


def _check_update(name: str, num_classes: int, dim: int, class_ids: Tensor, *tensors: Tensor) -> None:
    if class_ids.dim() != 1 or any(t.shape != (class_ids.shape[0], dim) for t in tensors):
        raise ValueError(f"{name}: need class_ids [K] and tensors [K, {dim}], got "
                         f"{tuple(class_ids.shape)} and {[tuple(t.shape) for t in tensors]}")
    if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= num_classes):
        raise ValueError(f"{name}: class ids must lie in [0, {num_classes})")
    if class_ids.unique().numel() != class_ids.numel():
        raise ValueError(f"{name}: class ids must be unique; sum duplicates first (class_natural_sums)")


class GlobalDistributionPrototypes(nn.Module):
    """Global Distribution Prototypes (GDP), Eq. 9: one Gaussian N(mean_c, diag(var_c)) per class.

    State = natural parameters in float64 buffers (saved in state_dict / checkpoints):
    `precision` [C, D] = sum of 1/var of every representation seen, `precision_mean` [C, D] =
    sum of mu/var, and `initialized` [C]. Eq. 9 is then an addition, which makes a chain of updates
    equal the local prototype (Eq. 4) of the union of all batches (Eq. 6-7, Appendix A).
    The first observation of a class initialises it (sigma_0 -> inf in Appendix A, i.e. a zero
    prior precision); a class never seen has no GDP (`mean` 0, `var` inf, `initialized` False).
    DDP: update from sums all-reduced over ranks (`class_natural_sums(..., sync=True)`) and every
    rank holds the same state.

    `forgetting` (not in the paper; 1.0 = paper) scales the old natural parameters before each
    update: precision_t = forgetting * precision_{t-1} + local precision. With 1.0, var shrinks
    like 1/(all precision seen), the GDP becomes a long-run average and virtual negatives
    collapse onto its mean; forgetting < 1 keeps an effective window of ~1/(1 - forgetting) steps.
    """

    precision: Tensor
    precision_mean: Tensor
    count: Tensor
    initialized: Tensor

    def __init__(self, num_classes: int, dim: int, *, forgetting: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= forgetting <= 1.0:
            raise ValueError(f"forgetting must lie in [0, 1] (1 = paper), got {forgetting}")
        self.num_classes, self.dim, self.forgetting = num_classes, dim, float(forgetting)
        self.register_buffer("precision", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("precision_mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("var_sum", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("mu_sum", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("mu_sq_sum", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Checkpoints written before the pixel statistics existed (posterior-variance runs, which never
        # read them) load with none recorded, as if every update had come without counts.
        for name in ("count", "var_sum", "mu_sum", "mu_sq_sum"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update_natural(self, class_ids: Tensor, precision: Tensor, precision_mean: Tensor,
                       count: Optional[Tensor] = None, var_sum: Optional[Tensor] = None,
                       mu_sum: Optional[Tensor] = None, mu_sq_sum: Optional[Tensor] = None) -> None:
        """Eq. 9 in natural parameters for the classes `class_ids` [K] (unique):
        precision += local sum 1/var, precision_mean += local sum mu/var (after forgetting); with
        `count` [K] and `var_sum` [K, D] also the representations seen and their summed σ² (for
        `predictive_var`), with `mu_sum`/`mu_sq_sum` [K, D] their sums of mu and mu² (for
        `empirical_var`); neither is in the paper."""
        _check_update("update_natural", self.num_classes, self.dim, class_ids, precision, precision_mean)
        ids = class_ids.to(self.precision.device)
        f = self.forgetting
        self.precision[ids] = f * self.precision[ids] + precision.to(self.precision)
        self.precision_mean[ids] = f * self.precision_mean[ids] + precision_mean.to(self.precision)
        if count is not None and var_sum is not None:
            self.count[ids] = f * self.count[ids] + count.to(self.count)
            self.var_sum[ids] = f * self.var_sum[ids] + var_sum.to(self.var_sum)
        if mu_sum is not None and mu_sq_sum is not None:
            self.mu_sum[ids] = f * self.mu_sum[ids] + mu_sum.to(self.mu_sum)
            self.mu_sq_sum[ids] = f * self.mu_sq_sum[ids] + mu_sq_sum.to(self.mu_sq_sum)
        self.initialized[ids] = True

    def update(self, class_ids: Tensor, mu_local: Tensor, var_local: Tensor) -> None:
        """Eq. 9 from local prototypes (Eq. 4) mu_local, var_local [K, D] of the classes class_ids [K]."""
        _check_update("update", self.num_classes, self.dim, class_ids, mu_local, var_local)
        precision = var_local.double().clamp(min=VAR_EPS).reciprocal()
        self.update_natural(class_ids, precision, precision * mu_local.double())

    def update_from_sums(self, sums: ClassSums) -> Tensor:
        """Update every class with counts > 0 from `class_natural_sums` output; returns their ids."""
        ids = torch.nonzero(sums.counts > 0).flatten()
        self.update_natural(ids, sums.precision[ids], sums.precision_mean[ids], sums.counts[ids], sums.var_sum[ids],
                            sums.mu_sum[ids], sums.mu_sq_sum[ids])
        return ids

    @property
    def mean(self) -> Tensor:
        """[C, D] float64 GDP means (0 for classes not initialised)."""
        safe = torch.where(self.initialized[:, None], self.precision, torch.ones_like(self.precision))
        return torch.where(self.initialized[:, None], self.precision_mean / safe,
                           torch.zeros_like(self.precision))

    @property
    def var(self) -> Tensor:
        """[C, D] float64 GDP variances 1/precision (inf for classes not initialised)."""
        return self.precision.reciprocal()

    @property
    def predictive_var(self) -> Tensor:
        """[C, D] float64 variance of *one* representation of the class, the mean σ² seen (not in the
        paper; `var` is the variance of the class mean, which shrinks like 1/count). NaN for classes
        not initialised or updated without counts."""
        return self.var_sum / self.count[:, None]

    @property
    def empirical_var(self) -> Tensor:
        """[C, D] float64 spread of the class's representations around their plain mean, E[mu²] - E[mu]²
        over every pixel seen (not in the paper: where Fig. 10 draws VNs, unlike `var`, it does not shrink
        as pixels accumulate). NaN for classes not initialised or updated without counts."""
        mean = self.mu_sum / self.count[:, None]
        return (self.mu_sq_sum / self.count[:, None] - mean.square()).clamp(min=0.0)

    @property
    def nbytes(self) -> int:
        """Bytes of the state (the paper's '42 KB' for VOC)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, forgetting={self.forgetting}"


class EMAPrototypes(nn.Module):
    """Exponential-moving-average prototypes, Eq. 16 (Baseline+):
    rho(t) = momentum * rho(t-1) + (1 - momentum) * rho_l(t), momentum 0.99 in the paper.

    The first observation of a class initialises it to its local prototype (instead of decaying
    from zero). With `with_var` the variance of a probabilistic local prototype is averaged the
    same way. Buffers (float64): `mean` [C, D], `var` [C, D] (when with_var), `initialized` [C].
    """

    mean: Tensor
    initialized: Tensor

    def __init__(self, num_classes: int, dim: int, *, momentum: float = 0.99,
                 with_var: bool = False) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ema_momentum must lie in [0, 1), got {momentum}")
        self.num_classes, self.dim, self.momentum = num_classes, dim, float(momentum)
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(num_classes, dim, dtype=torch.float64)
                             if with_var else None)
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, class_ids: Tensor, mean_local: Tensor, var_local: Optional[Tensor] = None) -> None:
        """Eq. 16 for the classes class_ids [K] (unique) with local prototypes [K, D]."""
        tensors = (mean_local,) if var_local is None else (mean_local, var_local)
        _check_update("EMAPrototypes.update", self.num_classes, self.dim, class_ids, *tensors)
        ids = class_ids.to(self.mean.device)
        keep = self.initialized[ids].double()[:, None] * self.momentum  # 0 on first sight
        self.mean[ids] = keep * self.mean[ids] + (1 - keep) * mean_local.double()
        if self.var is not None and var_local is not None:
            self.var[ids] = keep * self.var[ids] + (1 - keep) * var_local.double()
        self.initialized[ids] = True


VN_SOURCES = ("posterior", "predictive", "empirical")


def vn_draw_variance(gdp: GlobalDistributionPrototypes, source: str) -> Tensor:
    """[C, D] the variance Eq. 10 draws VNs with (`method.contrastive.vn.source`): the GDP's posterior variance
    (the paper; it shrinks like 1/pixels, so VNs collapse onto the mean), the class's mean σ² (`predictive`) or
    the empirical spread of its representations (`empirical`); the last two are 0 where not recorded."""
    _check_choice("source", source, VN_SOURCES)
    if source == "posterior":
        return gdp.var
    return (gdp.predictive_var if source == "predictive" else gdp.empirical_var).nan_to_num(0.0)


def virtual_negatives(
    mu: Tensor,
    var: Tensor,
    num: int,
    beta: float,
    *,
    scale: str = "variance",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Virtual negatives, Eq. 10: z = mu + beta * eps * var with eps ~ N(0, I).

    mu, var: [C, D] (GDP means and variances) -> [C, num, D]. `scale="variance"` is the paper
    (the spread is var itself); `"std"` (not in the paper) uses sqrt(var), a true sample of
    N(mu, beta^2 var).
    """
    _check_choice("scale", scale, ("variance", "std"))
    if mu.shape != var.shape or mu.dim() != 2:
        raise ValueError(f"virtual_negatives needs mu and var [C, D], got {tuple(mu.shape)} "
                         f"and {tuple(var.shape)}")
    if num < 0 or beta < 0:
        raise ValueError(f"virtual_negatives needs num >= 0 and beta >= 0, got {num} and {beta}")
    eps = torch.randn(mu.shape[0], num, mu.shape[1], generator=generator, dtype=mu.dtype,
                      device=mu.device)
    spread = var if scale == "variance" else var.sqrt()
    return mu[:, None] + beta * eps * spread[:, None]


def contrastive_weight(progress: float, lambda0: float = 1.0, alpha: float = -5.0) -> float:
    """Eq. 12: lambda_c = lambda0 * exp(alpha * progress^2), progress = t / T_total in [0, 1]."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress (t / T_total) must lie in [0, 1], got {progress}")
    return lambda0 * math.exp(alpha * progress * progress)
