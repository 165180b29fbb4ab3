"""prcl: semi-supervised semantic segmentation with Probabilistic Representation Contrastive Learning.

The ground floor: constants every layer reads, and nothing else (predicting from Python: `prcl.segmenter`)."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value that marks pixels without a label (VOC boundaries, crop padding, Cityscapes void)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The RGB statistics images are normalised with (in [0, 1] units); a backbone trained with others converts."""
