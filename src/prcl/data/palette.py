"""The PASCAL VOC colour map, used for every palette PNG this package reads or writes."""

from __future__ import annotations

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
