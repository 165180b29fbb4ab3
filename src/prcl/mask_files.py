"""`prcl predict`'s files: for each image a palette PNG of its predicted mask and an overlay with a legend.

The prediction itself is `Segmenter.predict`, the one code path of the Python API and the CLI; the colours are
the checkpoint's classes' (`Segmenter.colors`: the dataset's class file, or VOC's for the built-in datasets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prcl.data.palette import class_colormap
from prcl.segmenter import Segmenter, as_rgb_image

SWATCH, GAP = 14, 6  # legend: colour square and spacing, px


def legend_strip(classes: Sequence[int], names: Sequence[str], colours: np.ndarray, width: int) -> Image.Image:
    """A white strip `width` px wide listing `classes` as colour swatch + name, wrapped into rows."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x, y, places = GAP, GAP, []
    for c in classes:
        name = names[c] if c < len(names) else f"class {c}"
        left, _, right, _ = measure.textbbox((0, 0), name, font=font)
        entry = SWATCH + GAP // 2 + right - left
        if x > GAP and x + entry > width - GAP:  # next row
            x, y = GAP, y + SWATCH + GAP
        places.append((x, y, c, name))
        x += entry + 2 * GAP
    strip = Image.new("RGB", (width, y + SWATCH + GAP), "white")
    draw = ImageDraw.Draw(strip)
    _, top, _, bottom = measure.textbbox((0, 0), "Ag", font=font)  # one baseline for every name
    for x, y, c, name in places:
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=tuple(int(v) for v in colours[c]),
                       outline=(128, 128, 128))
        draw.text((x + SWATCH + GAP // 2, y + (SWATCH - (bottom - top)) // 2 - top), name, fill=(0, 0, 0), font=font)
    return strip


def overlay_with_legend(image: Image.Image, mask: np.ndarray, names: Sequence[str],
                        colors: Optional[np.ndarray] = None) -> Image.Image:
    """image | image blended half and half with the mask's colours, above a legend of the classes in the mask."""
    colours = class_colormap(colors)  # [256, 3]
    rgb = np.asarray(image, dtype=np.float32)
    blend = (0.5 * rgb + 0.5 * colours[mask]).astype(np.uint8)
    pair = Image.fromarray(np.concatenate([np.asarray(image), blend], axis=1))
    legend = legend_strip(np.unique(mask).tolist(), names, colours, pair.width)
    overlay = Image.new("RGB", (pair.width, pair.height + legend.height), "white")
    overlay.paste(pair, (0, 0))
    overlay.paste(legend, (0, pair.height))
    return overlay


def predict_files(
    path: Path, images: Sequence[Path], out_dir: Path, device: Optional[str] = None, *, checkpoint: str = "best",
    mode: Optional[str] = None, crop: Optional[int] = None, stride: Optional[int] = None,
) -> list[Path]:
    """For each image write `<stem>.png` (palette mask in the classes' colours) and `<stem>_overlay.jpg`: image |
    blend, above a legend of the predicted classes. `path` is a run directory or a checkpoint file; `mode`,
    `crop`, `stride` as `Segmenter.load` (default: the run's evaluation settings)."""
    segmenter = Segmenter.load(path, device=device, checkpoint=checkpoint, mode=mode, crop=crop, stride=stride)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_path in images:
        image = as_rgb_image(image_path)
        mask = segmenter.predict(image)
        mask_path = out_dir / f"{Path(image_path).stem}.png"
        segmenter.colorize(mask).save(mask_path)
        overlay = overlay_with_legend(image, mask, segmenter.class_names, segmenter.colors)
        overlay.save(out_dir / f"{Path(image_path).stem}_overlay.jpg", quality=95)
        written.append(mask_path)
    return written
