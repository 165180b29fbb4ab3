"""Anchor and negative sampling of Sec. 3.5 (as the authors' release), vectorised over classes.

Works on the table of P valid pixels (their class labels [P]); returns indices into it, so a
test can feed the very same draws to an independent reference. Randomness comes from torch's
global RNG or an explicit `generator`, so the trainer's RNG-state capture makes runs repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class ContrastSample:
    """The random draws of one loss evaluation (indices into the valid-pixel table).

    anchor_classes [K]: classes with at least one hard pixel (student prob < strong threshold).
    anchor_index [K, A]: anchors, uniform with replacement among the class's hard pixels.
    negative_index [K, A, N]: real negatives; per slot a class drawn from softmax(sim / tau) over
        the *other* classes present, then a uniform valid pixel of it.
    negative_valid [K]: False where no other class is present (those slots are masked out).
    vn [K, V, D] and vn_classes [K, V]: virtual negatives (Eq. 10, before normalisation) shared by
        the anchors of a class, V = vn_num * (classes with a GDP - 1); None without VNs.
    bank_index [K, A, C*m] into the flattened memory bank, bank_valid [K, C*m]; None without a bank.
    """

    anchor_classes: Tensor
    anchor_index: Tensor
    negative_index: Tensor
    negative_valid: Tensor
    vn: Optional[Tensor] = None
    vn_classes: Optional[Tensor] = None
    bank_index: Optional[Tensor] = None
    bank_valid: Optional[Tensor] = None

    def select(self, keep: Tensor) -> "ContrastSample":
        """The anchor classes where keep [K] (bool) is True (before VNs / bank draws are added)."""
        return ContrastSample(self.anchor_classes[keep], self.anchor_index[keep],
                              self.negative_index[keep], self.negative_valid[keep])


def uniform_below(bound: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Independent uniform integers in [0, bound) elementwise (bound >= 1, any shape, long)."""
    draws = torch.randint(1 << 62, bound.shape, generator=generator, device=bound.device)
    return draws.remainder_(bound)  # modulo bias < bound / 2^62


def _class_slices(labels: Tensor, num_classes: int):
    """Pixels grouped by class: (order [P] (a stable sort by label), counts [C], offsets [C])."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    return order, counts, torch.cumsum(counts, 0) - counts


def sample_class_pixels(order: Tensor, counts: Tensor, offsets: Tensor, classes: Tensor,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """A uniform pixel of class classes[...] (any shape) from a `_class_slices` grouping."""
    flat = classes.reshape(-1)  # index_select: several times faster than advanced indexing on CPU
    pick = uniform_below(counts.index_select(0, flat).clamp_(min=1), generator)
    pos = (offsets.index_select(0, flat) + pick).clamp_(max=max(order.numel() - 1, 0))
    return order.index_select(0, pos).view(classes.shape)


def sample_classes(weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """`num` classes per row of `weights` [K, C] (>= 0, every row with a positive entry) -> [K, num].

    Inverse-CDF sampling in float64; a zero-weight class is never returned (searchsorted with
    right=True skips zero-width bins; a draw at the very top is clamped to the last allowed class).
    """
    cdf = torch.cumsum(weights.double(), 1)  # [K, C]
    u = torch.rand(weights.shape[0], num, generator=generator, dtype=torch.float64,
                   device=weights.device) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True)
    cols = torch.arange(weights.shape[1], device=weights.device)
    last = torch.where(weights > 0, cols, -1).amax(1, keepdim=True)
    return torch.minimum(picked, last)


def sample_anchors_and_negatives(
    labels: Tensor,
    hard: Tensor,
    class_logits: Tensor,
    *,
    num_anchors: int,
    num_negatives: int,
    generator: Optional[torch.Generator] = None,
) -> ContrastSample:
    """Sec. 3.5 sampling on the valid-pixel table: labels [P] in [0, C), hard [P] bool,
    class_logits [C, C] = similarity(prototype_c, prototype_c') / tau (row c: anchor class)."""
    num_classes = class_logits.shape[0]
    order, counts, offsets = _class_slices(labels, num_classes)
    hard_pixels = torch.nonzero(hard).flatten()
    h_order, h_counts, h_offsets = _class_slices(labels[hard_pixels], num_classes)
    h_order = hard_pixels[h_order]

    anchor_classes = torch.nonzero(h_counts > 0).flatten()  # [K]
    k = anchor_classes.numel()
    anchor_index = sample_class_pixels(h_order, h_counts, h_offsets,
                                       anchor_classes[:, None].expand(k, num_anchors), generator)

    # negative class per (anchor, slot): softmax over the other classes present in the batch
    cols = torch.arange(num_classes, device=labels.device)
    allowed = (counts > 0)[None, :] & (cols[None, :] != anchor_classes[:, None])  # [K, C]
    negative_valid = allowed.any(1)
    logits = class_logits[anchor_classes].masked_fill(~allowed, -torch.inf)
    weights = torch.softmax(logits.double(), 1).nan_to_num_(0.0)
    weights[~negative_valid] = (counts > 0).double()  # placeholder draws, masked out in the loss
    neg_classes = sample_classes(weights, num_anchors * num_negatives, generator)
    negative_index = sample_class_pixels(order, counts, offsets, neg_classes, generator)
    return ContrastSample(anchor_classes, anchor_index,
                          negative_index.view(k, num_anchors, num_negatives), negative_valid)
