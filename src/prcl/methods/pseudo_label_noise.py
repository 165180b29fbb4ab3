"""`method.pseudo_label_noise`: the research option that tests PRCL's robustness claim head-on (issue #19).

The paper's claim (Sec. 1, Table 5) is that σ² makes the contrast robust to wrong pseudo-labels. To test
it with a known amount of wrongness, a seeded random fraction p of the confident unlabeled pseudo-labels
(teacher confidence ≥ δw, the pixels the contrast takes) is replaced by another class, right after the
teacher labels the weak view, so every term that uses the pseudo-labels (the CE of Eq. 14, the contrast
of Eq. 15) sees the same corrupted labels, in every method. The teacher's confidence is left as it was:
these are confidently wrong labels, the kind a thresholded pipeline cannot filter.

`method.pseudo_label_noise_kind` says which other class: `uniform` draws it uniformly (symmetric noise,
which an average over many pixels mostly cancels); `runner_up` takes the labeler's second choice at
that pixel (class-dependent noise: the confusions a real teacher makes, which pull a class's pixels
consistently towards one neighbour). Each iteration draws from its own generator, seeded by
(seed, iteration, process rank) (`noise_seed`), so the noise is the same on a resumed run, consumes none
of the training's random streams, and under DDP each process flips its own pixels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prcl import IGNORE_INDEX
from prcl.config import Config
from prcl.distributed import rank
from prcl.methods.pseudo_labels import PseudoLabels

RANK_STRIDE = 0x9E3779B9
"""⌊2³²/φ⌋, odd and below 2³²: rank r's seeds are r·RANK_STRIDE from rank 0's (`noise_seed`)."""


def noise_seed(seed: int, iteration: int, process_rank: int = 0) -> int:
    """The seed of one iteration's noise generator on one process. Rank 0 keeps the seed single-process runs
    had before the rank was added (seed·1000003 + iteration), so their noise, and the results that depend on
    it, are unchanged; rank r adds r·RANK_STRIDE, so the processes of a DDP run flip different pixels. torch's
    CPU generator reads only the seed's low 32 bits, so the offset must change those: with an odd stride below
    2³², the ranks of one iteration never share them."""
    return seed * 1_000_003 + iteration + process_rank * RANK_STRIDE


def corrupt_pseudo_labels(pseudo: torch.Tensor, confidence: torch.Tensor, fraction: float, threshold: float,
                          num_classes: int, generator: torch.Generator,
                          runner_up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`pseudo` `[B, H, W]` with each pixel of confidence ≥ `threshold` (not ignored) replaced, with
    probability `fraction`, by another class: `runner_up[pixel]` when given (`[B, H, W]`, the labeler's
    second choice), else a class drawn uniformly from the other `num_classes - 1`. Both kinds pick the
    same pixels for the same generator."""
    draw = torch.rand(pseudo.shape, generator=generator, device=generator.device).to(pseudo.device)
    offset = torch.randint(1, num_classes, pseudo.shape, generator=generator, device=generator.device)
    corrupt = (draw < fraction) & (confidence >= threshold) & (pseudo != IGNORE_INDEX)
    other = (pseudo + offset.to(pseudo.device)) % num_classes if runner_up is None else runner_up
    return torch.where(corrupt, other, pseudo)


class PseudoLabelNoise(nn.Module):
    """Applies `corrupt_pseudo_labels` with the config's fraction and kind (identity at 0, the default);
    returns the (possibly corrupted) pseudo-labels."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.fraction, self.num_classes = cfg.method.pseudo_label_noise, num_classes
        self.runner_up = cfg.method.pseudo_label_noise_kind == "runner_up"
        self.threshold = cfg.method.contrastive.weak_threshold
        self.seed, self.iterations = cfg.seed, cfg.train.iterations

    def forward(self, labels: PseudoLabels, progress: float) -> torch.Tensor:
        if self.fraction == 0:
            return labels.pseudo
        iteration = round(progress * self.iterations)
        generator = torch.Generator().manual_seed(noise_seed(self.seed, iteration, rank()))
        return corrupt_pseudo_labels(labels.pseudo, labels.confidence, self.fraction, self.threshold,
                                     self.num_classes, generator, labels.runner_up if self.runner_up else None)
