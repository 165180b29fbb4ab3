"""Colour maps of index masks: the PASCAL VOC colour map (the built-in datasets, and every class a dataset gives
no colour) and a dataset's own class colours on top of it."""

from __future__ import annotations

from typing import Optional

import numpy as np


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """Return the standard VOC colour map as a `[num_colors, 3]` uint8 array.

    Index 255 is (224, 224, 192), the colour of VOC's "void" boundaries.
    """
    cmap = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def voc_palette() -> list[int]:
    """The colour map flattened for `PIL.Image.putpalette`."""
    return voc_colormap(256).reshape(-1).tolist()


def class_colormap(colors: Optional[np.ndarray] = None) -> np.ndarray:
    """`[256, 3]` uint8: a dataset's class colours (`[C, 3]`, e.g. from its `classes.yaml`) in rows 0..C-1 and
    the VOC colour map in the rows after them (255, the ignore label, keeps VOC's void colour); the VOC colour
    map itself when `colors` is None (the built-in datasets)."""
    cmap = voc_colormap(256)
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if len(colors) > 255:
            raise ValueError(f"{len(colors)} class colours given; at most 255 classes fit beside the ignore label")
        cmap[: len(colors)] = colors
    return cmap
