"""Dataset-headroom experiment (issue #2), for the generator in this commit only.

python benchmarks/experiments/synthetic_looks_variant.py OUT NUM_CLASSES LOOKS_PER_CLASS DECOY_P MODE: a v4 variant (monkeypatched, workers=1).
MODE full = looks are (shape, texture, hue); th = looks are (texture, hue), shape random per instance."""
import sys, json
import numpy as np
import prcl.data.synthetic as s
out, c, l, decoy_p, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
if mode == "th":
    s.SHAPES = ("any",)
    s.HUES = tuple(np.arange(8) * 45.0)
s.OBJECT_NAMES = s.OBJECT_NAMES[:c]
s.LOOKS_PER_CLASS = l
s.CLASS_LOOKS, s.DECOY_LOOKS = s._look_table()
if mode == "th":
    s.CLASS_LOOKS = tuple(tuple(s.Look(x.shape, x.texture, (x.hue[0] + 5, x.hue[1] - 5)) for x in looks) for looks in s.CLASS_LOOKS)
s.CLASS_NAMES = ("background",) + s.OBJECT_NAMES
SH = ("ellipse", "ring", "rect", "triangle", "star", "cross", "hexagon", "crescent")
def _layers(rng):
    layers = []
    for cls in rng.integers(1, len(s.CLASS_NAMES), int(rng.integers(3, 6))):
        look = s.CLASS_LOOKS[cls - 1][int(rng.integers(s.LOOKS_PER_CLASS))]
        shape = str(rng.choice(SH)) if look.shape == "any" else look.shape
        layers.append((int(cls), shape, look.texture, look.hue))
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < decoy_p and len(s.DECOY_LOOKS):
            look = s.DECOY_LOOKS[int(rng.integers(len(s.DECOY_LOOKS)))]
            layers.append((0, look.shape, look.texture, look.hue))
        else:
            shape = str(rng.choice(list(SH) + ["blob", "blob", "bar", "bar"]))
            layers.append((0, shape, str(rng.choice(s._FIELD_TEXTURES)), None))
    return [layers[i] for i in rng.permutation(len(layers))]
s._layers = _layers
print(len(s.DECOY_LOOKS), "decoys")
s.generate_synthetic_dataset(out, workers=1)
print(json.load(open(out + "/meta.json"))["pixel_fraction"])
