"""Dataset-headroom experiment (issue #2): the built-in generator with other object/distractor counts.

    python benchmarks/experiments/synthetic_layer_counts.py OUT MIN MAX [DMIN DMAX]
    python benchmarks/paper_tables.py --tables gap --fractions 1_16 --seeds 0 --data OUT --runs OUT-runs --out OUT.md

writes a variant of the built-in dataset to OUT in which every image has MIN..MAX labeled objects
and DMIN..DMAX distractors (the generator draws 3..5 and 1..3), then measures supervised 1/16 vs all labels.
Result in `benchmarks/results/dataset_gap.md`. Monkeypatches `prcl.data.synthetic._layers`, so it
follows that function: re-check it after a generator change.
"""

import json
import sys

import prcl.data.synthetic as synthetic


def main() -> None:
    out, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dlo, dhi = (int(a) for a in sys.argv[4:6]) if len(sys.argv) > 4 else (1, 3)

    def layers(rng):
        drawn = []
        for cls in rng.integers(1, len(synthetic.CLASS_NAMES), int(rng.integers(lo, hi + 1))):
            spec = synthetic.OBJECT_CLASSES[cls - 1]
            drawn.append((int(cls), spec.shape, spec.texture, spec.hue))
        for _ in range(int(rng.integers(dlo, dhi + 1))):  # distractors drawn as the generator draws them
            shape = str(rng.choice(synthetic._CLASS_SHAPES + ["blob", "blob", "bar", "bar"]))
            pool = synthetic._FIELD_TEXTURES + ([] if shape in synthetic._CLASS_SHAPES else synthetic._CLASS_TEXTURES)
            drawn.append((0, shape, str(rng.choice(pool)), None))
        return [drawn[i] for i in rng.permutation(len(drawn))]

    synthetic._layers = layers
    synthetic.generate_synthetic_dataset(out, workers=1)  # workers > 1 would re-import the unpatched module
    print(json.load(open(f"{out}/meta.json"))["pixel_fraction"])


if __name__ == "__main__":
    main()
