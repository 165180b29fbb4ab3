"""Losses of the PRCL toolkit: the pixel contrastive loss (Eq. 15) and its building blocks."""

from prcl.losses.contrastive import CosineContrastiveLoss, PixelContrastiveLoss, PRCLContrastiveLoss
from prcl.losses.memory_bank import ClassMemoryBank
from prcl.losses.pairwise import KeySet, info_nce, pairwise_similarity
from prcl.losses.sampling import ContrastSample, sample_anchors_and_negatives

__all__ = [
    "ClassMemoryBank",
    "ContrastSample",
    "CosineContrastiveLoss",
    "KeySet",
    "PRCLContrastiveLoss",
    "PixelContrastiveLoss",
    "info_nce",
    "pairwise_similarity",
    "sample_anchors_and_negatives",
]
