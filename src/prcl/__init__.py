"""prcl: semi-supervised semantic segmentation with Probabilistic Representation Contrastive Learning."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time `__getattr__` below imports it on first use
    from prcl.segmenter import Segmenter

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value that marks pixels without a label (VOC boundaries, crop padding, Cityscapes void)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The RGB statistics images are normalised with (in [0, 1] units); a backbone trained with others converts."""


def __getattr__(name: str):
    """`from prcl import Segmenter` without making `import prcl` load torch (PEP 562)."""
    if name == "Segmenter":
        from prcl.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'prcl' has no attribute {name!r}")
