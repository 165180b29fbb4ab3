"""Where a training step's time goes, per method: cProfile over a few `Trainer.train_step`s, reported
as the cumulative seconds per step of the parts a PRCL step adds to a ClassMix step.

    python benchmarks/step_profile.py --methods classmix,prcl --steps 10 --threads 1

Parts (cumulative, so a part includes what it calls): the whole step; the teacher's pseudo-labels; the
student forward; the representation and σ² heads' forwards; the contrast (`ContrastiveTerm.forward`:
sampling, GDP update, VNs, InfoNCE); backward; the optimiser step; the teacher EMA; the gradient
diagnostics (every `train.diagnostics_every` steps). Under cProfile every Python call costs extra, so
the parts are comparable with each other, not with `throughput.py`'s seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile

import torch

from prcl.config import load_config
from prcl.engine.trainer import Trainer

PARTS = {  # label: (file suffix, function name) as pstats records them
    "step": ("engine/trainer.py", "train_step"),
    "teacher pseudo-labels": ("methods/pseudo_labels.py", "teacher_pseudo_labels"),
    "mixing": ("data/mixing.py", "mix_strong_view"),
    "model forward (all)": ("models/deeplab.py", "forward"),
    "σ² head forward": ("models/deeplab.py", "forward@ProbabilityHead"),
    "contrast (ContrastiveTerm)": ("methods/contrastive_term.py", "forward"),
    "backward": ("engine/nonfinite.py", "guarded_backward"),
    "optimiser step": ("torch/optim/sgd.py", "step"),
    "teacher EMA": ("engine/ema.py", "update"),
    "gradient diagnostics": ("engine/trainer.py", "_diagnose"),
}


def profile(method: str, steps: int, warmup: int, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"method.name={method}", f"output_dir={tmp}", "name=profile", "train.device=cpu",
                                 f"train.iterations={steps + warmup}", *overrides])
        trainer = Trainer(cfg)
        for it in range(warmup):
            trainer.train_step(it)
        prof = cProfile.Profile()
        prof.enable()
        for it in range(warmup, warmup + steps):
            trainer.train_step(it)
        prof.disable()
        trainer.lock.release()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = {}
    for label, (suffix, name) in PARTS.items():
        name, _, owner = name.partition("@")
        total = 0.0
        for (file, line, func), (_, _, _, cumulative, callers) in stats.items():
            if func == name and file.endswith(suffix) and (not owner or _defines(file, line, owner)):
                total += cumulative if not _recursive(callers, file, func) else 0.0
        out[label] = total / steps
    return out


def _defines(file: str, line: int, owner: str) -> bool:
    """Whether the function at `file:line` is a method of class `owner` (the nearest class above it)."""
    with open(file) as f:
        lines = f.readlines()[:line]
    for text in reversed(lines):
        if text.startswith("class "):
            return text.startswith(f"class {owner}")
    return False


def _recursive(callers: dict, file: str, func: str) -> bool:
    """Whether this entry is only reached from itself (nested module forwards): count the outermost."""
    return bool(callers) and all(c[0] == file and c[2] == func for c in callers)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="classmix,prcl")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    results = {m: profile(m, args.steps, args.warmup, args.overrides) for m in methods}
    print(f"threads={torch.get_num_threads()} steps={args.steps} overrides={' '.join(args.overrides)}")
    print("| part (s / step, cumulative) | " + " | ".join(methods) + " |")
    print("| --- |" + " --- |" * len(methods))
    for label in PARTS:
        print(f"| {label} | " + " | ".join(f"{results[m][label]:.3f}" for m in methods) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
