"""The pixel contrastive loss of PRCL (Eq. 15) and of its baselines, as one configurable module.

Switches (Tables 1, 5-8): `probabilistic` (PR: MLS similarity, Eq. 3; else cosine similarity of
deterministic mu), `prototype` ("local": batch prototypes as the release, "ema": Baseline+, Eq. 16,
"gdp": Eq. 9), `vn_enabled` (virtual negatives, Eq. 10) and `memory_bank_size` (Table 7).
Per step (Algorithm 1): gather valid pixels -> class statistics (all-reduced in DDP) -> update
the prototype state -> sample anchors/negatives (Sec. 3.5) -> InfoNCE over [positive prototype,
real negatives, VNs, bank entries] / tau, mean over a class's anchors, then over classes.

Decisions where the paper is silent (documented once, here):
- With normalisation (always for cosine; `mls_normalize` for MLS) mu is L2-normalised once per
  pixel and prototypes, GDP, VNs and the bank are built from the unit vectors (prototype means
  and VNs are re-normalised before use). The release averages raw mu and normalises the average.
- Classes without hard pixels get no anchors (the release skips them); a class whose anchors
  would have no valid negative at all is skipped too. Eq. 15's |C| counts the classes kept (the
  release divides by all classes with valid pixels, skipped ones included).
- VNs are drawn afresh for every anchor class (Algorithm 1, line 23) and shared by its anchors,
  which lets their MLS (variance 0) run as matmuls.
- Real negatives need another class present in the local batch; with VNs or a bank a class can
  still be contrasted when it is alone in the batch.
- The negative-class distribution softmax(sim(prototype_c, prototype_c') / tau) uses the same
  prototypes as the positive (GDP, local or EMA) and the same tau, as the release does.
- Memory bank: negatives *in addition* to the batch ones: per anchor, `memory_bank_negatives`
  uniform entries of every other class in the bank (like VNs, which are `vn_num` per other
  class); the batch is enqueued after the loss (MoCo style), so the bank holds past steps only.
  Each rank keeps its own bank (not synchronised).
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prcl import IGNORE_INDEX
from prcl.config import Config, ContrastiveConfig, check_section, contrastive_preset
from prcl.losses.memory_bank import ClassMemoryBank
from prcl.losses.pairwise import KeySet, info_nce
from prcl.losses.sampling import ContrastSample, sample_anchors_and_negatives
from prcl.probabilistic import (ClassSums, EMAPrototypes, GlobalDistributionPrototypes, class_natural_sums,
                                mutual_likelihood_score, virtual_negatives, vn_draw_variance)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _uniform_loss(keys: list[KeySet], num_classes: int) -> Tensor:
    """The loss at uniform logits, mean over anchor classes of log(valid keys): far below it the
    softmax is saturated, at it the contrast is flat."""
    counts = sum(ks.valid.sum(1) if ks.valid is not None else torch.full((num_classes,), ks.index.shape[-1],
                                                                           device=ks.index.device)
                 for ks in keys)
    return counts.double().log().mean()


class PixelContrastiveLoss(nn.Module):
    """Eq. 15 configured by a `ContrastiveConfig` (`prcl.config`; `contrastive_preset("baseline")`
    etc. give the Table 1 rows, `from_config` a run's): the cosine contrast of the Baseline and
    Baseline+ (`pr: false`, `CosineContrastiveLoss`) and PRCL's probabilistic one (`pr: true`,
    `PRCLContrastiveLoss`) share this one implementation; the two subclasses only name and check them. State (GDP, EMA prototypes, memory bank) are
    submodules with registered buffers, so `state_dict()` carries them and resuming restores them.

    forward(mu [B,D,H,W], var [B,D,H,W] (sigma^2 > 0) or None, labels [B,H,W] long (255 = ignore),
    valid [B,H,W] bool, probs [B,C,H,W] student softmax) -> (scalar loss, stats of python floats:
    loss, mean_var, proto_var, vn_spread, gdp_drift, anchors, classes, valid_pixels).
    Labels, valid and probs are at feature resolution; `valid` already holds the caller's rule
    (labeled pixels, unlabeled ones with teacher confidence >= delta_w); probs only select the
    anchors. Under DDP every rank must call forward every step (the class sums are all-reduced).
    Sampling uses `generator` (on the inputs' device) or torch's global RNG.
    Set `record_sample = True` to keep the last `ContrastSample` in `last_sample`.
    """

    def __init__(self, num_classes: int, dim: int, config: Optional[ContrastiveConfig] = None, *,
                 chunk_elements: Optional[int] = None) -> None:
        super().__init__()
        settings = config if config is not None else contrastive_preset("prcl")
        check_section(settings, "method.contrastive.")  # the config's own rules, stated once
        _require(num_classes >= 2, f"num_classes must be >= 2, got {num_classes}")
        _require(chunk_elements is None or chunk_elements >= 1,
                 f"chunk_elements must be None (per device default) or >= 1, got {chunk_elements}")
        self.config = copy.deepcopy(settings)
        self.num_classes, self.dim, self.temperature = num_classes, dim, float(settings.temperature)
        self.num_anchors, self.num_negatives = settings.num_anchors, settings.num_negatives
        self.strong_threshold, self.probabilistic = settings.strong_threshold, settings.pr
        self.prototype, self.prototype_var = settings.prototype, settings.prototype_var
        self.anchor_pixels = settings.anchor_pixels
        vn, bank, mls = settings.vn, settings.memory_bank, settings.mls
        self.vn_enabled, self.vn_num, self.vn_beta, self.vn_scale = vn.enabled, vn.num, vn.beta, vn.scale
        self.vn_source, self.vn_var = vn.source, vn.var
        self.memory_bank_enqueue, self.memory_bank_negatives = bank.enqueue, bank.negatives
        self.normalize = mls.normalize or not settings.pr
        self.mls_reduction, self.mls_include_const, self.mls_log_det = mls.reduction, mls.include_const, mls.log_det
        self.chunk_elements = chunk_elements
        # The GDP is kept whenever it is the positive or the source of VNs (Table 8 "+PR+VN" uses
        # local prototypes as positives and GDP-drawn VNs).
        self.gdp = (GlobalDistributionPrototypes(num_classes, dim, forgetting=settings.gdp_forgetting)
                    if settings.prototype == "gdp" or vn.enabled else None)
        self.ema = (EMAPrototypes(num_classes, dim, momentum=settings.ema_momentum, with_var=settings.pr)
                    if settings.prototype == "ema" else None)
        self.bank = ClassMemoryBank(num_classes, dim, bank.size, with_var=settings.pr) if bank.enabled else None
        self.record_sample = False
        self.last_sample: Optional[ContrastSample] = None
        self.last_local_mean: Optional[Tensor] = None

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int, **kwargs: object) -> "PixelContrastiveLoss":
        """The loss of a run: `cfg.method.contrastive` on representations of `cfg.model.rep_dim` dims
        (`PRCLContrastiveLoss` or `CosineContrastiveLoss` by `method.contrastive.pr`)."""
        settings = cfg.method.contrastive
        kind = cls if cls is not PixelContrastiveLoss else PRCLContrastiveLoss if settings.pr else CosineContrastiveLoss
        return kind(num_classes, cfg.model.rep_dim, settings, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, temperature={self.temperature}, "
                f"probabilistic={self.probabilistic}, prototype={self.prototype!r}, vn={self.vn_enabled}")

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, mu: Tensor, var: Optional[Tensor], labels: Tensor, valid: Tensor,
                      probs: Tensor) -> None:
        _require(mu.dim() == 4 and mu.shape[1] == self.dim,
                 f"mu must be [B, {self.dim}, H, W], got {tuple(mu.shape)}")
        b, _, h, w = mu.shape
        if self.probabilistic:
            _require(var is not None and var.shape == mu.shape,
                     f"var must be [B, D, H, W] like mu {tuple(mu.shape)} (probabilistic=True), got "
                     f"{None if var is None else tuple(var.shape)}")
        else:
            _require(var is None, "var must be None when probabilistic=False")
        _require(labels.shape == (b, h, w) and not labels.is_floating_point(),
                 f"labels must be an integer tensor [B, H, W] = {(b, h, w)} at feature resolution, got "
                 f"{tuple(labels.shape)} {labels.dtype}")
        _require(valid.shape == (b, h, w) and valid.dtype == torch.bool,
                 f"valid must be a bool tensor [B, H, W] = {(b, h, w)}, got {tuple(valid.shape)} "
                 f"{valid.dtype}")
        _require(probs.shape == (b, self.num_classes, h, w),
                 f"probs must be [B, C, H, W] = {(b, self.num_classes, h, w)}, got {tuple(probs.shape)}")

    # ------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def _prototypes(self, sums: ClassSums, dtype: torch.dtype):
        """Update the state and return the prototype table: mean [C, D] (unit vectors when
        normalising), var [C, D] or None, ok [C] bool, and the GDP drift of this step."""
        counts, precision, precision_mean = sums.counts, sums.precision, sums.precision_mean
        drift = precision.new_zeros(())
        present = counts > 0
        local_mean = precision_mean / precision.clamp(min=1e-300)
        # the variance a prototype carries in the MLS: of the class mean (Eq. 4), or of one pixel
        local_var = (sums.var_sum / counts.clamp(min=1)[:, None] if self.prototype_var == "predictive"
                     else precision.reciprocal())
        if self.gdp is not None:
            before, was = self.gdp.mean, self.gdp.initialized.clone()
            self.gdp.update_from_sums(sums)
            moved = present & was
            if moved.any():
                drift = (self.gdp.mean[moved] - before[moved]).norm(dim=1).mean()
        # [C, D] local prototypes of this step, NaN for absent classes (prototype trajectories, Fig. 8)
        self.last_local_mean = torch.where(present[:, None], local_mean, torch.full_like(local_mean, float("nan")))
        if self.prototype == "gdp":
            mean, var, ok = self.gdp.mean, self._gdp_var(), self.gdp.initialized
        elif self.ema is not None:
            ids = torch.nonzero(present).flatten()
            self.ema.update(ids, local_mean[ids], local_var[ids] if self.probabilistic else None)
            mean, var, ok = self.ema.mean, self.ema.var, self.ema.initialized
        else:
            mean, var, ok = local_mean, local_var, present
        mean = torch.where(ok[:, None], mean, torch.zeros_like(mean))
        if self.normalize:
            mean = F.normalize(mean, dim=1)
        var = torch.where(ok[:, None], var, torch.ones_like(var)).to(dtype) if self.probabilistic else None
        return mean.to(dtype), var, ok, drift

    def _gdp_var(self) -> Tensor:
        """[C, D] the GDP's variance in the MLS (`prototype_var`)."""
        return self.gdp.predictive_var if self.prototype_var == "predictive" else self.gdp.var

    def _class_logits(self, mean: Tensor, var: Optional[Tensor]) -> Tensor:
        """[C, C] similarity of the prototypes / tau: the negative-class distribution of Sec. 3.5."""
        if var is None:
            sim = mean @ mean.t()
        else:
            sim = mutual_likelihood_score(mean[:, None], var[:, None], mean[None], var[None],
                                          reduction=self.mls_reduction, normalize=False,
                                          include_const=self.mls_include_const, log_det=self.mls_log_det)
        return sim / self.temperature

    # ------------------------------------------------------------------ extra negatives
    def _virtual_negatives(self, anchor_classes: Tensor, dtype: torch.dtype,
                           generator: Optional[torch.Generator]):
        """Eq. 10 VNs of every class with a GDP, drawn per anchor class with the variance of `vn.source`:
        (raw [K, G*v, D] float64, classes [K, G*v], KeySet with the anchor's own class masked out and var 0
        (`vn.var=zero`) or the GDP variance of the VN's class (`vn.var=prototype`))."""
        assert self.gdp is not None
        have = torch.nonzero(self.gdp.initialized).flatten()  # [G]
        k, g, v = anchor_classes.numel(), have.numel(), self.vn_num
        raw = virtual_negatives(self.gdp.mean[have], vn_draw_variance(self.gdp, self.vn_source)[have], k * v, self.vn_beta,
                                scale=self.vn_scale, generator=generator)  # [G, K*v, D]
        raw = raw.view(g, k, v, self.dim).transpose(0, 1).reshape(k, g * v, self.dim)
        classes = have.repeat_interleave(v)[None].expand(k, g * v)
        table = F.normalize(raw, dim=2) if self.normalize else raw
        table = table.reshape(-1, self.dim).to(dtype)
        index = torch.arange(k * g * v, device=raw.device).view(k, 1, g * v)
        valid = classes != anchor_classes[:, None]
        if self.vn_var == "prototype":
            var = self._gdp_var()[classes.reshape(-1)].to(dtype)  # [K*G*v, D]
            return raw, classes, KeySet(table, var, index, valid)
        return raw, classes, KeySet(table, None, index, valid, points=True)

    def _has_negatives(self, sample: ContrastSample) -> Tensor:
        """[K] bool: the anchor class has at least one valid real, virtual or bank negative."""
        cols = torch.arange(self.num_classes, device=sample.anchor_classes.device)
        other = cols[None, :] != sample.anchor_classes[:, None]  # [K, C]
        ok = sample.negative_valid.clone()
        if self.vn_enabled and self.gdp is not None:
            ok |= (other & self.gdp.initialized[None]).any(1)
        if self.bank is not None:
            ok |= (other & (self.bank.filled > 0)[None]).any(1)
        return ok

    # ------------------------------------------------------------------ forward
    def forward(self, mu: Tensor, var: Optional[Tensor], labels: Tensor, valid: Tensor, probs: Tensor,
                *, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Dict[str, float]]:
        self._check_inputs(mu, var, labels, valid, probs)
        with torch.autocast(device_type=mu.device.type, enabled=False):
            return self._forward(mu, var, labels, valid, probs, generator)

    def _pixels(self, mu: Tensor, var: Optional[Tensor], labels: Tensor, valid: Tensor, probs: Tensor):
        """The valid-pixel table, row-major over (b, h, w): labels [P] (long), mu [P, D] (unit
        vectors when normalising; float32 at least), var [P, D] or None, student prob of the label [P]."""
        mask = valid & (labels != IGNORE_INDEX)
        pix_label = labels[mask].long()
        if pix_label.numel() and (int(pix_label.min()) < 0 or int(pix_label.max()) >= self.num_classes):
            low, high = int(pix_label.min()), int(pix_label.max())
            raise ValueError(f"labels of valid pixels must lie in [0, {self.num_classes}) or be "
                             f"{IGNORE_INDEX}; got values in [{low}, {high}]")
        dtype = torch.promote_types(mu.dtype, torch.float32)
        pix_mu = mu.permute(0, 2, 3, 1)[mask].to(dtype)
        pix_var = var.permute(0, 2, 3, 1)[mask].to(dtype) if var is not None else None
        if self.normalize:
            pix_mu = F.normalize(pix_mu, dim=1)
        safe_labels = labels.long().clamp(0, self.num_classes - 1)[:, None]
        pix_prob = probs.detach().gather(1, safe_labels).squeeze(1)[mask]
        return pix_label, pix_mu, pix_var, pix_prob

    def _anchor_candidates(self, pix_prob: Tensor) -> Tensor:
        """[P] bool: the pixels anchors are drawn from, hard ones (student prob of the label < δs, Sec. 3.5)
        or every valid pixel (`anchor_pixels=all`)."""
        if self.anchor_pixels == "all":
            return torch.ones_like(pix_prob, dtype=torch.bool)
        return pix_prob < self.strong_threshold

    def _forward(self, mu, var, labels, valid, probs, generator):
        pix_label, pix_mu, pix_var, pix_prob = self._pixels(mu, var, labels, valid, probs)
        sums = class_natural_sums(pix_label, pix_mu.detach(),
                                  None if pix_var is None else pix_var.detach(), self.num_classes)
        proto_mean, proto_var, proto_ok, drift = self._prototypes(sums, pix_mu.dtype)
        with torch.no_grad():
            sample = sample_anchors_and_negatives(
                pix_label, self._anchor_candidates(pix_prob), self._class_logits(proto_mean, proto_var),
                num_anchors=self.num_anchors, num_negatives=self.num_negatives, generator=generator)
            sample = sample.select(self._has_negatives(sample))
        k = sample.anchor_classes.numel()
        vn_spread, uniform = drift.new_zeros(()), drift.new_zeros(())
        if k == 0:  # a zero that is still part of the graph, so backward() works
            loss = mu.sum() * 0.0 + (var.sum() * 0.0 if var is not None else 0.0)
        else:
            keys, vn_spread = self._keys(sample, proto_mean, proto_var, pix_mu, pix_var, generator)
            uniform = _uniform_loss(keys, k)
            anchor_var = None if pix_var is None else pix_var[sample.anchor_index]
            loss = info_nce(pix_mu[sample.anchor_index], anchor_var, keys, temperature=self.temperature,
                            reduction=self.mls_reduction, include_const=self.mls_include_const,
                            log_det=self.mls_log_det, chunk_elements=self.chunk_elements).mean()
        if self.bank is not None:
            self.bank.enqueue(pix_label, pix_mu.detach(), None if pix_var is None else pix_var.detach(),
                              self.memory_bank_enqueue, generator)
        if self.record_sample:
            self.last_sample = sample
        return loss, self._stats(loss, k, pix_var, proto_var, proto_ok, vn_spread, drift, uniform, pix_label)

    @torch.no_grad()
    def _keys(self, sample: ContrastSample, proto_mean: Tensor, proto_var: Optional[Tensor],
              pix_mu: Tensor, pix_var: Optional[Tensor], generator: Optional[torch.Generator]):
        """Key groups of Eq. 15 (positive prototype, real negatives, VNs, bank entries), all detached;
        records the VN / bank draws in `sample`. Returns (keys, VN spread)."""
        k = sample.anchor_classes.numel()
        keys = [KeySet(proto_mean, proto_var, sample.anchor_classes.view(k, 1, 1)),
                KeySet(pix_mu.detach(), None if pix_var is None else pix_var.detach(), sample.negative_index,
                       sample.negative_valid[:, None].expand(k, self.num_negatives))]
        vn_spread = proto_mean.new_zeros((), dtype=torch.float64)
        if self.vn_enabled:
            sample.vn, sample.vn_classes, vn_keys = self._virtual_negatives(
                sample.anchor_classes, pix_mu.dtype, generator)
            vn_spread = self._vn_spread(vn_keys, sample.vn_classes)
            keys.append(vn_keys)
        if self.bank is not None:
            sample.bank_index, sample.bank_valid = self.bank.sample_index(
                sample.anchor_classes, self.num_anchors, self.memory_bank_negatives, generator)
            bank_mu, bank_var = self.bank.flat()
            keys.append(KeySet(bank_mu, bank_var, sample.bank_index, sample.bank_valid))
        return keys, vn_spread

    @torch.no_grad()
    def _vn_spread(self, vn_keys: KeySet, vn_classes: Tensor) -> Tensor:
        """Mean L2 distance of the VNs to their GDP mean, in the space the similarity sees, in units of the
        class's per-pixel std (the root of the summed empirical variance of its representations): about β
        for VNs drawn from that spread, → 0 for VNs that collapse onto the mean."""
        gdp_mean = self.gdp.mean.to(vn_keys.mu.dtype)
        if self.normalize:
            gdp_mean = F.normalize(gdp_mean, dim=1)
        distance = (vn_keys.mu.view(*vn_classes.shape, -1) - gdp_mean[vn_classes]).norm(dim=2)
        pixel_std = self.gdp.empirical_var.sum(1).sqrt().to(distance.dtype)[vn_classes]
        return (distance / pixel_std.clamp(min=1e-12)).mean().double()

    @torch.no_grad()
    def _stats(self, loss, k, pix_var, proto_var, proto_ok, vn_spread, drift, uniform, pix_label) -> Dict[str, float]:
        zero = drift.new_zeros(())
        mean_var = pix_var.double().mean() if pix_var is not None and pix_var.numel() else zero
        proto = proto_var[proto_ok].double().mean() if proto_var is not None and proto_ok.any() else zero
        values = torch.stack([loss.detach().double(), mean_var, proto, vn_spread.double(), drift.double(),
                              uniform.double()])
        names = ("loss", "mean_var", "proto_var", "vn_spread", "gdp_drift", "uniform_loss")
        stats = dict(zip(names, values.tolist()))
        stats.update(anchors=float(k * self.num_anchors), classes=float(k),
                     valid_pixels=float(pix_label.numel()))
        return stats


class PRCLContrastiveLoss(PixelContrastiveLoss):
    """PRCL's contrast (Eq. 15 with the MLS of Eq. 3 on probabilistic representations, `pr: true`);
    without a config, the `prcl` preset."""

    def __init__(self, num_classes: int, dim: int, config: Optional[ContrastiveConfig] = None, **kwargs) -> None:
        config = config if config is not None else contrastive_preset("prcl")
        _require(config.pr, "PRCLContrastiveLoss needs method.contrastive.pr=true; the cosine contrast of the "
                            "Baseline is CosineContrastiveLoss")
        super().__init__(num_classes, dim, config, **kwargs)


class CosineContrastiveLoss(PixelContrastiveLoss):
    """The Baseline's and Baseline+'s contrast (Table 1): Eq. 15 with the cosine similarity of deterministic
    μ (`pr: false`); without a config, the `baseline` preset."""

    def __init__(self, num_classes: int, dim: int, config: Optional[ContrastiveConfig] = None, **kwargs) -> None:
        config = config if config is not None else contrastive_preset("baseline")
        _require(not config.pr, "CosineContrastiveLoss needs method.contrastive.pr=false; the probabilistic "
                                "contrast is PRCLContrastiveLoss")
        super().__init__(num_classes, dim, config, **kwargs)
