"""The built-in procedural segmentation dataset: no download, deterministic from a seed.

`ensure_synthetic_dataset(root)` writes it in the PASCAL VOC layout, so it goes through the same
loader as VOC (`prcl.data.sources.load_split("synthetic", root, split_file)`). It is meant as a
real learning problem for semi-supervised methods: a class is told apart only by combining shape,
texture and colour, and classes come in look-alike pairs, so a model trained on few labels
confuses them and its pseudo-labels are noisy.

==  ==========  ===============  ==============  ============  ================================
id  name        shape            texture         hue (deg)     look-alike
==  ==========  ===============  ==============  ============  ================================
0   background  textured field (gradient, clouds, wood, bricks, grain) + distractors (any colour)
1   disc        ellipse          shaded          345-25 red    ring: same texture and colours
2   ring        annulus (hole)   shaded          5-45 orange   disc
3   tile        rectangle        checkerboard    180-230 cyan  crate: same shape and colours
4   crate       rectangle        stripes         200-250 blue  tile; cross: same texture
5   wedge       triangle         polka dots      60-115 lime   star: same texture and colours
6   star        5-point star     polka dots      90-150 green  wedge
7   cross       plus sign        stripes         240-310 violet  crate
==  ==========  ===============  ==============  ============  ================================

Per instance: hue (in its class's range), saturation, brightness, texture period/phase, scale,
rotation, aspect and a vertex jitter are random. Per image: 3-5 objects (uniform classes) and 1-3
distractors labeled background (blobs and bars with any texture, class textures included, or
class shapes with a texture no class has), painted in random order: later layers occlude earlier
ones and the mask keeps what is visible. Soft (blurred) object edges, an illumination gradient,
a colour cast, optional blur, pixel noise and JPEG compression (quality 90). Pixels within
`ignore_boundary` px of a label change are 255 ("ignore"), like VOC's void outline.

Layout under `root`: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG, VOC colours),
`ImageSets/Segmentation/{train,val}.txt`, `splits/<fraction>/{labeled,unlabeled}.txt` for each of
`prcl.data.generated.LABELED_FRACTIONS` (nested: every labeled subset contains the smaller ones), `splits/val.txt`,
and `meta.json` (written last: without it the directory counts as incomplete). `full` has
`labeled.txt` = all of train and **no** `unlabeled.txt` (supervised only).
"""

from __future__ import annotations

import colorsys
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from prcl import IGNORE_INDEX
from prcl.data.generated import (SPLIT_CODES, data_error, generated_dataset_dir, summed_over_jobs,
                                 write_nested_splits)
from prcl.data.palette import voc_colormap, voc_palette

GENERATOR_VERSION = 3  # bump whenever the files change: older datasets are then refused (3: + 1_64, 1_32)
_OWN_ENTRIES = {"JPEGImages", "SegmentationClass", "ImageSets", "splits", "meta.json"}
_PALETTE = voc_palette()
_SUPERSAMPLE = 4  # polygons are drawn at 4x and box-filtered down: anti-aliased alpha


@dataclass(frozen=True)
class ObjectClass:
    """How one foreground class is drawn: a shape, a texture and a hue range (degrees, may wrap)."""

    name: str
    shape: str
    texture: str
    hue: tuple[float, float]


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("disc", "ellipse", "shaded", (345.0, 385.0)),
    ObjectClass("ring", "ring", "shaded", (5.0, 45.0)),
    ObjectClass("tile", "rect", "checker", (180.0, 230.0)),
    ObjectClass("crate", "rect", "stripes", (200.0, 250.0)),
    ObjectClass("wedge", "triangle", "dots", (60.0, 115.0)),
    ObjectClass("star", "star", "dots", (90.0, 150.0)),
    ObjectClass("cross", "cross", "stripes", (240.0, 310.0)),
)
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c.name for c in OBJECT_CLASSES)
_CLASS_SHAPES = sorted({c.shape for c in OBJECT_CLASSES})
_CLASS_TEXTURES = sorted({c.texture for c in OBJECT_CLASSES})
_FIELD_TEXTURES = ["gradient", "clouds", "wood", "bricks", "grain"]  # no class wears these


# --------------------------------------------------------------------------- shapes
def _unit_polygons(shape: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons `[(vertices [K, 2], fill)]` of a shape in unit coordinates; fill 0 cuts a hole."""
    def circle(k: int, r: float = 1.0) -> np.ndarray:
        a = np.linspace(0, 2 * np.pi, k, endpoint=False)
        return r * np.stack([np.cos(a), np.sin(a)], 1)

    if shape == "ellipse":
        return [(circle(40), 1)]
    if shape == "ring":
        return [(circle(40), 1), (circle(40, rng.uniform(0.4, 0.65)), 0)]
    if shape == "rect":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)]
    if shape == "triangle":
        return [(circle(3), 1)]
    if shape == "star":
        spikes = circle(10) * np.where(np.arange(10) % 2, rng.uniform(0.4, 0.55), 1.0)[:, None]
        return [(spikes, 1)]
    if shape == "cross":
        w = rng.uniform(0.28, 0.42)
        x = np.array([w, 1, 1, w, w, -w, -w, -1, -1, -w, -w, w])
        y = np.array([w, w, -w, -w, -1, -1, -w, -w, w, w, 1, 1])
        return [(np.stack([x, y], 1), 1)]
    if shape == "blob":
        wobble = np.fft.irfft(np.r_[0, rng.normal(0, 1, 4) + 1j * rng.normal(0, 1, 4)], 24)
        return [(circle(24) * (1 + 0.4 * wobble / np.abs(wobble).max())[:, None], 1)]
    if shape == "bar":
        return [(np.array([[-1, -0.15], [1, -0.15], [1, 0.15], [-1, 0.15]]), 1)]
    raise ValueError(f"unknown synthetic shape {shape!r}")


def _render_alpha(shape: str, pose: dict, size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Anti-aliased coverage `[h, w]` in [0, 1] of a shape at `pose`, and its box (y0, x0, h, w).

    Shapes but the thin bar get the unit disc's area: `pose["scale"]` sizes every class alike.
    """
    polygons = _unit_polygons(shape, rng)
    x, y = polygons[0][0].T
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))  # shoelace
    norm = 1.0 if shape == "bar" else np.sqrt(np.pi / area)
    rot = np.array([[np.cos(pose["angle"]), -np.sin(pose["angle"])],
                    [np.sin(pose["angle"]), np.cos(pose["angle"])]])
    stretch = norm * pose["scale"] * np.array([pose["aspect"], 1 / pose["aspect"]])
    jitter = [rng.normal(0, 0.04, verts.shape) for verts, _ in polygons]  # per instance
    points = [((v + j) * stretch) @ rot.T + pose["centre"] for (v, _), j in zip(polygons, jitter)]
    lo = np.clip(np.floor(points[0].min(0)) - 4, 0, size - 1).astype(int)  # 4 px for the blur
    hi = np.clip(np.ceil(points[0].max(0)) + 4, lo + 1, size).astype(int)
    box = (int(lo[1]), int(lo[0]), int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    canvas = Image.new("L", (box[3] * _SUPERSAMPLE, box[2] * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, (_, fill) in zip(points, polygons):
        pts = (pts - lo) * _SUPERSAMPLE
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255 * fill)
    alpha = canvas.reduce(_SUPERSAMPLE)
    soft = rng.uniform(0.0, 1.0)  # ambiguous boundaries: a random edge blur
    if soft > 0.3:
        alpha = alpha.filter(ImageFilter.GaussianBlur(soft))
    return np.asarray(alpha, dtype=np.float32) / 255.0, box


# --------------------------------------------------------------------------- textures
def _clouds(shape: tuple, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth value noise `shape` in [0, 1]: a random `cells`x`cells` grid upsampled bicubically."""
    grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    out = np.asarray(grid.resize((shape[1], shape[0]), Image.BICUBIC))
    return np.clip((out - out.min()) / (np.ptp(out) + 1e-6), 0, 1)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, scale: float,
             rng: np.random.Generator) -> np.ndarray:
    """Pattern `[h, w]` in [0, 1] in the local pixel frame (u, v) of a layer of size `scale` px."""
    if kind == "shaded":  # smooth highlight gradient across the object
        phi = rng.uniform(0, 2 * np.pi)
        return np.clip(0.5 + 0.7 * (u * np.cos(phi) + v * np.sin(phi)) / scale, 0, 1)
    if kind == "checker":
        p = rng.uniform(5.0, 10.0)
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    if kind == "stripes":
        p = rng.uniform(4.0, 9.0)
        return ((u / p + rng.random()) % 1.0 < rng.uniform(0.35, 0.6)).astype(np.float32)
    if kind == "dots":
        p = rng.uniform(6.0, 10.0)
        du = (u / p + rng.random()) % 1.0 - 0.5
        dv = (v / p + rng.random()) % 1.0 - 0.5
        return (du**2 + dv**2 < rng.uniform(0.2, 0.36) ** 2).astype(np.float32)
    if kind == "gradient":
        return np.clip(0.5 + 0.5 * u / scale, 0, 1)
    if kind == "clouds":
        return _clouds(u.shape, rng, int(rng.integers(3, 9)))
    if kind == "wood":
        warp = _clouds(u.shape, rng, 4) * rng.uniform(4, 14)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u + warp) / rng.uniform(5, 14))
    if kind == "bricks":
        h, w = rng.uniform(5, 10), rng.uniform(10, 20)
        row = np.floor(v / h)
        return (((v / h) % 1 < 0.2) | (((u / w + 0.5 * row) % 1) < 0.1)).astype(np.float32)
    if kind == "grain":
        return rng.random(u.shape, dtype=np.float32)
    raise ValueError(f"unknown synthetic texture {kind!r}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h / 360.0) % 1.0, min(s, 1.0), min(v, 1.0)), np.float32)


def _paint(kind: str, colours: tuple, frame: tuple, scale: float, rng) -> np.ndarray:
    """RGB float32 `[h, w, 3]`: a texture pattern mixing two colours, in the frame (u, v)."""
    t = _texture(kind, *frame, scale, rng)[..., None]
    return colours[0] + (colours[1] - colours[0]) * t


def _local_frame(box: tuple, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in `box` rotated by `-angle` about `centre`: textures turn with objects."""
    y0, x0, h, w = box
    x = np.arange(x0, x0 + w, dtype=np.float32)[None, :] + (0.5 - centre[0])
    y = np.arange(y0, y0 + h, dtype=np.float32)[:, None] + (0.5 - centre[1])
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return x * c + y * s, y * c - x * s


# --------------------------------------------------------------------------- one image
def _random_pose(size: int, rng: np.random.Generator, lo: float, hi: float) -> dict:
    return {"centre": rng.uniform(0.1, 0.9, 2) * size, "angle": rng.uniform(0, 2 * np.pi),
            "scale": size * rng.uniform(lo, hi), "aspect": float(np.exp(rng.uniform(-0.3, 0.3)))}


def _layers(rng: np.random.Generator) -> list[tuple[int, str, str, Optional[tuple]]]:
    """(label, shape, texture, hue range) of every object and distractor, in painting order.

    Distractors (label 0) have a shape no class has, or a class shape with a texture no class
    has; their hue range is None (any colour).
    """
    layers = []
    for cls in rng.integers(1, len(CLASS_NAMES), int(rng.integers(3, 6))):
        spec = OBJECT_CLASSES[cls - 1]
        layers.append((int(cls), spec.shape, spec.texture, spec.hue))
    for _ in range(int(rng.integers(1, 4))):
        shape = str(rng.choice(_CLASS_SHAPES + ["blob", "blob", "bar", "bar"]))
        pool = _FIELD_TEXTURES if shape in _CLASS_SHAPES else _FIELD_TEXTURES + _CLASS_TEXTURES
        layers.append((0, shape, str(rng.choice(pool)), None))
    return [layers[i] for i in rng.permutation(len(layers))]


def _layer_colours(texture: str, hue: Optional[tuple], rng: np.random.Generator) -> tuple:
    """The two colours a layer's texture mixes: from the `hue` range, or any colour if None."""
    if hue is None:
        h, s, v = rng.uniform(0, 360), rng.uniform(0.05, 0.9), rng.uniform(0.25, 1.0)
    else:
        h, s, v = rng.uniform(*hue), rng.uniform(0.4, 0.95), rng.uniform(0.45, 1.0)
    if texture == "shaded":
        return _hsv(h, s, v * 0.55), _hsv(h + rng.uniform(-10, 10), s * 0.6, v * 1.35)
    return _hsv(h, s, v), _hsv(h + rng.uniform(-25, 25), s * rng.uniform(0.3, 0.9),
                               v * rng.uniform(0.3, 0.65))


def _grow(a: np.ndarray, op: Callable) -> np.ndarray:
    """3x3 neighbourhood max or min (`op` = np.maximum / np.minimum), edges replicated."""
    p = np.pad(a, 1, mode="edge")
    rows = op(op(p[:-2], p[1:-1]), p[2:])  # [H, W + 2]
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Boolean `[H, W]`: pixels with another label within Chebyshev distance `width`."""
    hi, lo = mask, mask
    for _ in range(width):
        hi, lo = _grow(hi, np.maximum), _grow(lo, np.minimum)
    return hi != lo


def render_sample(seed: int, split: str, index: int, image_size: int = 128,
                  ignore_boundary: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image `[H, W, 3]` uint8 and its mask `[H, W]` uint8 (class ids or 255).

    Depends only on `(seed, split, index)` through `numpy.random.default_rng`; JPEG compression
    is applied when the dataset is written, not here.
    """
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    size = image_size
    full = (0, 0, size, size)
    field = (_hsv(rng.uniform(0, 360), rng.uniform(0, 0.55), rng.uniform(0.2, 0.9)),
             _hsv(rng.uniform(0, 360), rng.uniform(0, 0.55), rng.uniform(0.2, 0.9)))
    frame = _local_frame(full, np.full(2, size / 2), rng.uniform(0, 2 * np.pi))
    image = _paint(str(rng.choice(_FIELD_TEXTURES)), field, frame, size / 2, rng)
    image *= (0.75 + 0.5 * _clouds((size, size), rng, 3))[..., None]  # uneven field
    mask = np.zeros((size, size), np.uint8)
    for label, shape, texture, hue in _layers(rng):
        pose = _random_pose(size, rng, *((0.11, 0.24) if label else (0.06, 0.16)))
        alpha, box = _render_alpha(shape, pose, size, rng)
        alpha = alpha[..., None]  # [h, w, 1]
        frame = _local_frame(box, pose["centre"], pose["angle"])
        layer = _paint(texture, _layer_colours(texture, hue, rng), frame, pose["scale"], rng)
        window = (slice(box[0], box[0] + box[2]), slice(box[1], box[1] + box[3]))
        image[window] += (layer - image[window]) * alpha  # later layers occlude earlier ones
        mask[window][alpha[..., 0] > 0.5] = label
    gx, _ = _local_frame(full, np.full(2, size / 2), rng.uniform(0, 2 * np.pi))
    image *= (1 + rng.uniform(-0.45, 0.45) * gx / size)[..., None]  # illumination gradient
    image *= rng.uniform(0.88, 1.12, 3).astype(np.float32)  # colour cast
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if rng.random() < 0.4:
        blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        image = np.asarray(blurred)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 8)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    mask[_ignore_band(mask, ignore_boundary)] = IGNORE_INDEX
    return image, mask


# --------------------------------------------------------------------------- writing
def _write_sample(job: tuple) -> np.ndarray:
    """Render and write one sample; returns its pixel counts per class, then of ignore `[C + 1]`."""
    out, seed, split, index, image_size, ignore_boundary = job
    image, mask = render_sample(seed, split, index, image_size, ignore_boundary)
    Image.fromarray(image).save(out / "JPEGImages" / f"{split}_{index:05d}.jpg", quality=90)
    png = Image.fromarray(mask)
    png.putpalette(_PALETTE)
    png.save(out / "SegmentationClass" / f"{split}_{index:05d}.png")
    counts = np.bincount(mask.ravel(), minlength=256)
    return np.r_[counts[: len(CLASS_NAMES)], counts[IGNORE_INDEX]]


def _write_lists(out: Path, seed: int, train: list[str], val: list[str]) -> dict:
    """VOC image sets and the nested splits of `write_nested_splits`."""
    for name, ids in (("train", train), ("val", val)):
        (out / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
        (out / f"ImageSets/Segmentation/{name}.txt").write_text("".join(f"{sid}\n" for sid in ids))
    return write_nested_splits(out, seed, train, val)


def generate_synthetic_dataset(
    root: Union[str, Path], *, seed: int = 0, num_train: int = 2000, num_val: int = 300,
    image_size: int = 128, ignore_boundary: int = 1, workers: int = 1, progress: bool = False,
) -> Path:
    """Write the dataset to `root`, replacing a synthetic dataset there; returns `root`.

    Everything is written to a sibling temporary directory, `meta.json` last, that is renamed to
    `root` at the end, so an interrupted run never leaves something that looks complete. The
    output does not depend on `workers` (processes that render).
    """
    if num_train < 1 or num_val < 1 or image_size < 16 or ignore_boundary < 0:
        raise ValueError("synthetic dataset needs num_train, num_val >= 1, image_size >= 16 and "
                         f"ignore_boundary >= 0; got {num_train}, {num_val}, {image_size}, "
                         f"{ignore_boundary}")
    with generated_dataset_dir(root, _OWN_ENTRIES, "a synthetic dataset") as tmp:
        for sub in ("JPEGImages", "SegmentationClass"):
            (tmp / sub).mkdir(parents=True)
        sizes = {"train": num_train, "val": num_val}
        jobs = [(tmp, seed, split, i, image_size, ignore_boundary) for split, n in sizes.items() for i in range(n)]
        pixels = summed_over_jobs(_write_sample, jobs, workers, progress)
        ids = {split: [f"{split}_{i:05d}" for i in range(n)] for split, n in sizes.items()}
        meta = {
            "generator": "prcl.data.synthetic", "version": GENERATOR_VERSION,
            "params": {"seed": seed, "num_train": num_train, "num_val": num_val,
                       "image_size": image_size, "ignore_boundary": ignore_boundary},
            "class_names": list(CLASS_NAMES), "ignore_index": IGNORE_INDEX,
            "colors": voc_colormap(len(CLASS_NAMES)).tolist(),
            "counts": {**sizes, **_write_lists(tmp, seed, ids["train"], ids["val"])},
            "pixel_fraction": dict(zip(CLASS_NAMES + ("ignore",),
                                       np.round(pixels / pixels.sum(), 5).tolist())),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Path(root).absolute()


def ensure_synthetic_dataset(root: Union[str, Path], **kwargs) -> Path:
    """Generate the dataset at `root` unless a complete one with the same parameters is there.

    `kwargs` are those of `generate_synthetic_dataset`. A directory without `meta.json` counts as
    an interrupted generation and is regenerated; one made with other parameters or by another
    generator version is an error (nothing is deleted).
    """
    call = inspect.signature(generate_synthetic_dataset).bind(root, **kwargs)  # unknown: TypeError
    call.apply_defaults()
    path = Path(root) / "meta.json"
    if not path.is_file():
        return generate_synthetic_dataset(*call.args, **call.kwargs)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise data_error(f"{path} is not valid JSON ({err}); delete {root} to regenerate") from err
    expected = {k: v for k, v in call.arguments.items() if k not in ("root", "workers", "progress")}
    expected["version"] = GENERATOR_VERSION
    found = {"version": meta.get("version"), **meta.get("params", {})}
    if found != expected:
        diff = ", ".join(f"{k}={found.get(k)!r} (wanted {v!r})"
                         for k, v in expected.items() if found.get(k) != v)
        raise data_error(
            f"the synthetic dataset in {root} was generated with different settings: {diff}. "
            f"Delete {root} to regenerate it, or pick another root directory."
        )
    return Path(root).absolute()


def require_current_version(root: Union[str, Path]) -> None:
    """Refuse a synthetic dataset at `root` written by another generator version (any parameters).

    Images change between versions, so results on an old copy are not comparable with the
    documented ones; the fix is to delete it (it is regenerated on first use).
    """
    path = Path(root) / "meta.json"
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, json.JSONDecodeError) as err:
        raise data_error(f"cannot read {path} ({err}); delete {root} to regenerate it") from err
    if version != GENERATOR_VERSION:
        raise data_error(
            f"the synthetic dataset in {root} was written by generator version {version}, this prcl "
            f"writes version {GENERATOR_VERSION}; delete {root} to regenerate it (about a minute)")

