"""Input-size rules of patch encoders, shared by config validation and the models (no torch import).

A ViT cuts its input into p×p patches (DINOv2: p = 14), so its inputs must measure a multiple of p;
a CNN takes any size (multiple 1).
"""

from __future__ import annotations

import re


def patch_size(backbone: str) -> int:
    """The patch size of a timm ViT name (`vit_small_patch14_dinov2` -> 14); 1 for any other backbone."""
    m = re.match(r"vit_\w*?patch(\d+)", backbone)
    return int(m.group(1)) if m else 1


def nearest_multiples(size: int, multiple: int) -> str:
    """`"84 or 98"`: the valid sizes on either side of `size` (one when `size` is below `multiple`)."""
    low = size // multiple * multiple
    high = low + multiple
    return f"{low} or {high}" if low > 0 else f"{high}"
