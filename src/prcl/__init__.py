"""prcl: semi-supervised semantic segmentation with Probabilistic Representation Contrastive Learning."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value that marks pixels without a label (VOC boundaries, crop padding, Cityscapes void)."""
