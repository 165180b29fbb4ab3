"""A benchmark of rare, thin foreground: crack- and vessel-like curves on cluttered photographs (issue #35).

Users with thin structures (vessels, cracks, wires, roads) see a few per cent of foreground pixels, each
structure one to three pixels wide, a low-contrast soft edge, and a background full of lines that are
not the structure. On such data a confidence threshold passes mostly background, and a semi-supervised
student can learn to under-segment the thin class. This generator makes data with those properties.

An image is, in drawing order:

1. a **ground**: a random square of a real photograph (below), its texture's contrast lowered to 35-75 %,
   with a colour cast and an uneven light;
   half the images blend a second photograph in through a soft blob (clutter);
2. **distractors**, all labeled `background`: straight mortar-like joints, sometimes a parallel grid,
   dark or light (8-30 % of the local level), as thin as the structures (1.5-4 px); smooth closed
   outlines of blobs; short, wide,
   blurred dark streaks; soft stains (dark or light patches whose edges are steps);
3. **structures** (class 1, `structure`): 0-5 branching random walks, their heading turning smoothly
   with a jagged jitter, 1.3-3 px wide with the width varying along the curve and tapering at the ends,
   darker than the local level of the ground by 30-60 % (varying along the curve), drawn 4× supersampled;
   the mask is where the stroke covers at least half a pixel;
4. a light blur of everything (soft, low-contrast edges), sensor noise and JPEG.

A structure differs from a distractor by its shape only: open, wiggly and branching, not straight,
closed or short and wide. Its width and colour overlap the distractors', and it is darker on average.
The ground's own dark lines (brick joints, grass blades, gaps between stones, roof edges) are background
as well.

==========  ==================================================================
ground      photograph (package, file)
==========  ==================================================================
brick       scikit-image: data/brick.png (its mortar joints: more distractors)
grass       scikit-image: data/grass.png (blades: thin clutter)
gravel      scikit-image: data/gravel.png
moon        scikit-image: data/moon.png (craters, dark spots)
temple      scikit-learn: datasets/images/china.jpg (roof lines, foliage)
==========  ==================================================================

Train and val images cut their grounds from disjoint parts of each photograph (val: the rightmost
`VAL_FRACTION` of columns). Layout: a folder dataset (`prcl.data.folder`) with `images/`, `masks/` (for
every image, the unlabeled ones too: only the diagnostics read those), `classes.yaml`, the nested
splits of `prcl.data.generated.write_nested_splits` and `meta.json`, written last; `meta.json` records
the foreground pixel fraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter  # scipy: a dependency of scikit-learn, which prcl requires

from prcl.data.generated import SPLIT_CODES, generator_meta, write_folder_dataset
from prcl.data.photos import load_photo

GENERATOR_VERSION = 2  # bump whenever the files change
VAL_FRACTION = 0.3
CLASS_NAMES: tuple[str, ...] = ("background", "structure")
CLASS_COLORS = ([0, 0, 0], [255, 64, 32])
GROUNDS: dict[str, tuple[str, str]] = {  # name -> (package, file under the package)
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "moon": ("skimage", "data/moon.png"),
    "temple": ("sklearn", "datasets/images/china.jpg"),
}
SUPERSAMPLE = 4  # strokes are drawn at 4× and averaged down: partial coverage at the edges


class Ground(NamedTuple):
    """The part of a photograph that one split may cut from, and the photograph's shorter side (the
    crop size is relative to it, so train and val crops have the same scale)."""
    part: np.ndarray  # [H, W', 3] uint8
    full_side: int


class Stroke(NamedTuple):
    """A polyline with a width and a value per point: `points [N, 2]` (x, y), `widths [N]`, `values [N]`."""
    points: np.ndarray
    widths: np.ndarray
    values: np.ndarray


def ground_part(photo: np.ndarray, split: str) -> Ground:
    """The columns of `photo` that `split` may cut from: val the rightmost VAL_FRACTION, train the rest."""
    cut = round(photo.shape[1] * (1 - VAL_FRACTION))
    return Ground(photo[:, cut:] if split == "val" else photo[:, :cut], min(photo.shape[:2]))


def _smooth_noise(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """`[n]` zero-mean, unit-scale noise that varies over about `window` samples."""
    kernel = np.hanning(window + 2)[1:-1]
    noise = np.convolve(rng.normal(size=n + window), kernel / np.sqrt((kernel ** 2).sum()), "same")
    return noise[window // 2:window // 2 + n]


def _cut(ground: Ground, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of 0.15-0.3 × the photograph's shorter side from its part, flipped, its texture's
    contrast lowered to 35-75 % and given a colour cast, resized to `[size, size, 3]` float32."""
    h, w = ground.part.shape[:2]
    side = min(h, w, max(8, int(ground.full_side * rng.uniform(0.15, 0.3))))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = np.asarray(Image.fromarray(ground.part[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR),
                       dtype=np.float32)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch.transpose(1, 0, 2)
    mean = patch.mean((0, 1))
    return (mean + (patch - mean) * rng.uniform(0.35, 0.75)) * rng.uniform(0.6, 1.1, 3)


def _blob_mask(size: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A star-convex polygon of radius `lo`-`hi` × size at a random centre, as `[size, size]` float {0, 1}."""
    cy, cx = rng.uniform(0, size, 2)
    r = size * rng.uniform(lo, hi)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(7, 13))))
    radii = r * rng.uniform(0.5, 1.0, angles.size)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)],
                                   fill=1)
    return np.asarray(canvas, dtype=np.float32)


def render_strokes(strokes: list[Stroke], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw `strokes` at SUPERSAMPLE× and average down: `(coverage, value)`, each `[size, size]` float in
    [0, 1]; coverage is the covered share of each pixel, value the mean of the covering strokes' values
    times that share (where strokes overlap, the later one wins)."""
    ss = SUPERSAMPLE
    cover, value = Image.new("L", (size * ss, size * ss), 0), Image.new("L", (size * ss, size * ss), 0)
    draw_cover, draw_value = ImageDraw.Draw(cover), ImageDraw.Draw(value)
    for stroke in strokes:
        pts = (stroke.points + 0.5) * ss  # pixel centres at half-integers of the fine grid
        for i in range(len(pts)):
            r, v = stroke.widths[i] * ss / 2, int(round(255 * stroke.values[i]))
            box = [pts[i, 0] - r, pts[i, 1] - r, pts[i, 0] + r, pts[i, 1] + r]
            draw_cover.ellipse(box, fill=255)
            draw_value.ellipse(box, fill=v)
            if i + 1 < len(pts):
                line = [tuple(pts[i]), tuple(pts[i + 1])]
                draw_cover.line(line, fill=255, width=max(1, int(round(2 * r))))
                draw_value.line(line, fill=v, width=max(1, int(round(2 * r))))

    def down(canvas: Image.Image) -> np.ndarray:
        return np.asarray(canvas, dtype=np.float32).reshape(size, ss, size, ss).mean((1, 3)) / 255

    return down(cover), down(value)


def random_walk(start: np.ndarray, heading: float, length: int, rng: np.random.Generator) -> np.ndarray:
    """`[length, 2]` points one pixel apart whose heading turns smoothly (a curve) plus a jagged jitter
    (a crack's zig-zag)."""
    turn = 0.06 * _smooth_noise(length, 12, rng) + rng.normal(0, 0.10, length)
    angles = heading + np.cumsum(turn)
    return start + np.cumsum(np.stack([np.cos(angles), np.sin(angles)], 1), 0)


def structure_tree(size: int, rng: np.random.Generator, scale: float) -> list[Stroke]:
    """One branching structure: a main walk of 50-170 px × scale from a random point, and up to two levels
    of branches, each thinner and shorter; width 1.1-3 px varying along each walk and tapering at its
    ends, value (how much darker than the local level) 0.3-0.6, also varying along it."""
    strokes: list[Stroke] = []
    todo = [(rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), int(rng.uniform(70, 210) * scale),
             rng.uniform(1.8, 3.0), rng.uniform(0.30, 0.60), 0)]
    while todo:
        start, heading, length, width, contrast, depth = todo.pop()
        if length < 6:
            continue
        points = random_walk(start, heading, length, rng)
        t = np.arange(length)
        taper = np.clip(np.minimum(t + 1, length - t) / 6, 0.55, 1.0)
        widths = np.clip(width * taper * (1 + 0.25 * _smooth_noise(length, 20, rng)), 1.3, 3.0)
        values = np.clip(contrast * (0.8 + 0.2 * _smooth_noise(length, 30, rng)), 0.12, 0.65)
        strokes.append(Stroke(points, widths, values))
        if depth < 2:
            for at in rng.integers(length // 6, max(length // 6 + 1, length * 5 // 6), rng.poisson(length / 50)):
                side = rng.choice([-1, 1])
                todo.append((points[at], heading + side * rng.uniform(0.4, 1.2), int(length * rng.uniform(0.25, 0.6)),
                             width * 0.75, contrast * rng.uniform(0.7, 1.0), depth + 1))
    return strokes


def distractor_strokes(size: int, rng: np.random.Generator) -> tuple[list[Stroke], list[Stroke]]:
    """Background look-alikes `(dark, light)`: straight joints across the image (sometimes a parallel grid,
    mostly near-horizontal or vertical like mortar), smooth closed blob outlines, short wide streaks."""
    dark: list[Stroke] = []
    light: list[Stroke] = []
    n = 2 * size
    for _ in range(int(rng.integers(0, 3))):  # joints
        angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.08) if rng.random() < 0.7 else rng.uniform(0, np.pi)
        normal = np.array([-np.sin(angle), np.cos(angle)])
        offsets = [rng.uniform(-0.4, 0.4) * size]
        if rng.random() < 0.3:
            gap = rng.uniform(0.12, 0.3) * size
            offsets += [offsets[0] + k * gap for k in (1, 2)]
        width, value = rng.uniform(1.5, 4.0), rng.uniform(0.08, 0.3)
        for off in offsets:
            centre = size / 2 + off * normal
            t = np.linspace(-n / 2, n / 2, 2)[:, None]
            (dark if rng.random() < 0.6 else light).append(
                Stroke(centre + t * [np.cos(angle), np.sin(angle)], np.full(2, width), np.full(2, value)))
    for _ in range(int(rng.integers(0, 2))):  # closed outlines: smooth, round
        cx, cy = rng.uniform(0, size, 2)
        r = size * rng.uniform(0.08, 0.25) * (1 + 0.15 * _smooth_noise(120, 40, rng))
        a = np.linspace(0, 2 * np.pi, 120)
        dark.append(Stroke(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1), np.full(120, rng.uniform(1.5, 3.0)),
                           np.full(120, rng.uniform(0.08, 0.3))))
    for _ in range(int(rng.integers(0, 4))):  # short wide streaks
        length = int(rng.uniform(6, 22) * size / 128) + 2
        points = random_walk(rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), length, rng)
        dark.append(Stroke(points, np.full(length, rng.uniform(4.0, 8.0)), np.full(length, rng.uniform(0.1, 0.35))))
    return dark, light


def _shade(image: np.ndarray, strokes: list[Stroke], sign: int, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """`image [S, S, 3]` darkened (sign -1) or lightened (+1) by the strokes' values × the local level
    of the image (a 4-px blur of it at 128 px), blurred by `blur` px (soft, low-contrast edges), and the
    strokes' coverage `[S, S]`."""
    size = image.shape[0]
    if not strokes:
        return image, np.zeros((size, size), np.float32)
    cover, value = render_strokes(strokes, size)
    local = gaussian_filter(image, (4 * size / 128, 4 * size / 128, 0))  # the local level, not the texture's
    return image + sign * gaussian_filter(value, blur)[..., None] * local, cover


def render_thin_sample(grounds: list[Ground], seed: int, split: str, index: int,
                       image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One image and mask `(image [S, S, 3] uint8, mask [S, S] uint8)`, deterministic in (seed, split,
    index); `grounds` are the photographs already cut to the split's part."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    size, scale = image_size, image_size / 128
    image = _cut(grounds[rng.integers(len(grounds))], size, rng)
    if rng.random() < 0.5:  # clutter: a second photograph through a soft blob
        blend = gaussian_filter(_blob_mask(size, rng, 0.2, 0.5), 3 * scale)[..., None]
        image = image * (1 - blend) + _cut(grounds[rng.integers(len(grounds))], size, rng) * blend
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    image = image * (1 + gx * (xx - 0.5) + gy * (yy - 0.5))[..., None]  # uneven light
    for _ in range(int(rng.integers(0, 3))):  # stains: soft patches, their edges steps
        stain = gaussian_filter(_blob_mask(size, rng, 0.06, 0.2), rng.uniform(0.5, 2.5) * scale)
        image = image * (1 + rng.choice([-1, 1]) * rng.uniform(0.08, 0.25) * stain)[..., None]
    dark, light = distractor_strokes(size, rng)
    trees = [s for _ in range(int(rng.choice(6, p=[0.04, 0.1, 0.2, 0.26, 0.24, 0.16]))) for s in
             structure_tree(size, rng, scale)]
    image, _ = _shade(image, dark, -1, rng.uniform(0.3, 0.6) * scale)
    image, _ = _shade(image, light, 1, rng.uniform(0.3, 0.6) * scale)
    image, cover = _shade(image, trees, -1, rng.uniform(0.3, 0.6) * scale)
    mask = (cover >= 0.5).astype(np.uint8)
    image = gaussian_filter(image, (rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), 0))
    image = image + rng.normal(0, rng.uniform(2, 6), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_thin_dataset(root: Union[str, Path], *, seed: int = 0, num_train: int = 640, num_val: int = 160,
                          image_size: int = 128, progress: bool = False) -> Path:
    """Write the benchmark to `root` (a new or earlier thin-structure directory); returns `root`.
    Written to a sibling temporary directory, `meta.json` last, then renamed."""
    meta = {**generator_meta("the thin-structure benchmark", "prcl.data.thin_structures", GENERATOR_VERSION,
                             seed=seed, num_train=num_train, num_val=num_val, image_size=image_size),
            "class_names": list(CLASS_NAMES), "grounds": {k: f"{p}:{f}" for k, (p, f) in GROUNDS.items()}}
    grounds = {split: [ground_part(load_photo(*src), split) for src in GROUNDS.values()] for split in ("train", "val")}
    return write_folder_dataset(
        root, what="the thin-structure benchmark",
        render=lambda split, i: render_thin_sample(grounds[split], seed, split, i, image_size),
        sizes={"train": num_train, "val": num_val}, seed=seed, class_names=CLASS_NAMES,
        colors=np.array(CLASS_COLORS), meta=meta, quality=90, progress=progress)
