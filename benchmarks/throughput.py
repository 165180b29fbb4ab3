"""Images/s and peak memory of one training iteration, per method, at a given model/crop/batch.

Runs the real `Trainer.train_step` (data loading included) on the built-in dataset after warm-up.
On CUDA the peak is `torch.cuda.max_memory_allocated`; on CPU the growth of the process's peak RSS
(coarse: it includes allocator caching). Images / s counts the labeled + unlabeled samples of a step
(unimatch's second strong view and feature-perturbation stream are more work on the same samples).

    python benchmarks/throughput.py --methods supervised,classmix,baseline,prcl --steps 5 \
        model.backbone=resnet18 data.crop_size=96 data.batch_size=8
    # paper setting on a GPU (needs ImageNet weights or model.pretrained=false):
    python benchmarks/throughput.py --device cuda --methods baseline,prcl model.backbone=resnet101 \
        model.backbone_channels=null model.output_stride=8 data.crop_size=512 data.batch_size=8 train.amp=bf16
    # FixMatch / UniMatch / UniMatch + PRCL at UniMatch's VOC setting (crop 321, 8 + 8), one method per line,
    # on the built-in data (the config's own dataset needs the VOC files):
    for m in fixmatch unimatch unimatch_prcl; do
      python benchmarks/throughput.py --device cuda --methods $m --config configs/unimatch/voc/classic/92/$m.yaml \
          data.dataset=synthetic data.root=data/synthetic data.labeled_split=splits/1_16/labeled.txt \
          data.unlabeled_split=splits/1_16/unlabeled.txt data.val_split=splits/val.txt model.pretrained=false
    done
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from prcl.config import load_config
from prcl.engine.trainer import Trainer


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, overrides: list[str], steps: int, warmup: int, device: str,
            config: Optional[Path] = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"method.name={method}", f"output_dir={tmp}", "name=bench", f"train.device={device}",
                                 "data.num_workers=2", f"train.iterations={steps + warmup}", *overrides])
        trainer = Trainer(cfg)
        for it in range(warmup):
            trainer.train_step(it)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss0 = peak_rss_mib()
        t0 = time.perf_counter()
        for it in range(warmup, warmup + steps):
            trainer.train_step(it)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / steps
    images = cfg.data.batch_size + ((cfg.data.unlabeled_batch_size or cfg.data.batch_size) if trainer.unlabeled is not None else 0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib() - rss0
    return {"method": method, "seconds_per_iteration": seconds, "images_per_second": images / seconds,
            "peak_memory_mib": peak, "memory_kind": "cuda max allocated" if device == "cuda" else "CPU peak RSS growth"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="supervised,classmix,baseline,prcl", help="comma-separated")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, help="append results as JSON lines here")
    p.add_argument("--config", type=Path, help="a YAML config to start from (default: the built-in demo's)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} overrides={' '.join(args.overrides)}")
    print("| method | s / iteration | images / s | peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    for m in args.methods.split(","):
        r = measure(m, args.overrides, args.steps, args.warmup, args.device, args.config)
        print(f"| {m} | {r['seconds_per_iteration']:.3f} | {r['images_per_second']:.1f} | {r['peak_memory_mib']:.0f} |",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**r, "device": args.device, "config": args.config and str(args.config),
                                    "overrides": args.overrides}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
