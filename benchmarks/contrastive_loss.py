"""Time and memory of the contrastive loss (forward + backward) at the paper's shapes, on CPU.

Paper shapes: 21 classes, 256 anchors per class, 512 negatives per anchor, 4 VNs per class,
D = 256, batch 16 at 65x65 (crop 512 at stride 8). Every configuration runs in its own
subprocess so its peak RSS is its own: memory = max RSS over the steps minus RSS once the inputs
and the loss state exist (resource.getrusage; torch allocations are invisible to tracemalloc).
It includes the input gradients mu.grad and var.grad (71 MB each at paper shapes) and the
out-of-place memory-bank update. State sizes (GDP, EMA, memory bank) are analytic: the bytes of
their buffers. Wall time suffers when other processes share the cores; CPU time much less.

    python benchmarks/contrastive_loss.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CONFIGS = {
    "prcl": dict(method="prcl"),
    "prcl_no_vn": dict(method="prcl", vn={"enabled": False}),
    "prcl_release (PR, local)": dict(method="prcl", prototype="local", vn={"enabled": False}),
    "baseline": dict(method="baseline"),
    "baseline_plus": dict(method="baseline_plus"),
    "prcl + MB 30000": dict(method="prcl", vn={"enabled": False}, memory_bank={"enabled": True, "size": 30000}),
    "prcl + MB 65536": dict(method="prcl", vn={"enabled": False}, memory_bank={"enabled": True, "size": 65536}),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _inputs(args, torch):
    g = torch.Generator().manual_seed(0)
    b, d, h, w, c = args.batch, args.dim, args.size, args.size, args.classes
    mu = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    var = torch.sigmoid(torch.randn(b, d, h, w, generator=g) - 2).requires_grad_()
    blocks = torch.arange(b * 4).view(b, 2, 2) % c  # 4 class blocks per image, all classes present
    labels = blocks.repeat_interleave((h + 1) // 2, 1)[:, :h].repeat_interleave((w + 1) // 2, 2)[:, :, :w]
    valid = torch.rand(b, h, w, generator=g) < 0.85
    probs = torch.softmax(3 * torch.randn(b, c, h, w, generator=g), 1)
    return mu, var, labels.contiguous(), valid, probs


def run_one(name: str, args) -> dict:
    import torch

    from prcl.config import contrastive_preset
    from prcl.losses import PixelContrastiveLoss

    torch.set_num_threads(args.threads)
    cfg = dict(CONFIGS[name])
    settings = contrastive_preset(cfg.pop("method"), temperature=0.5, num_anchors=args.anchors,
                                  num_negatives=args.negatives, **cfg)
    loss_fn = PixelContrastiveLoss(args.classes, args.dim, settings, chunk_elements=args.chunk)
    mu, var, labels, valid, probs = _inputs(args, torch)
    var_in = var if loss_fn.probabilistic else None
    rss0 = _rss_mib()  # inputs and state exist; the peak below adds one step's working memory
    for _ in range(args.warmup):  # fills the GDP / bank, so timed steps see VNs and bank negatives
        loss_fn(mu, var_in, labels, valid, probs)[0].backward()
    times, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, stats = loss_fn(mu, var_in, labels, valid, probs)
        loss.backward()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    state = sum(b.numel() * b.element_size() for b in loss_fn.buffers())
    return dict(config=name, seconds_median=sorted(times)[len(times) // 2], seconds_min=min(times),
                cpu_seconds_min=min(cpu),
                peak_rss_delta_mib=_rss_mib() - rss0, state_bytes=state, anchors=stats["anchors"],
                classes=stats["classes"], loss=stats["loss"])


def gdp_bytes() -> dict:
    from prcl.probabilistic import GlobalDistributionPrototypes

    datasets = (("VOC", 21), ("Cityscapes", 19))
    return {name: GlobalDistributionPrototypes(c, 256).nbytes for name, c in datasets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=65)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--anchors", type=int, default=256)
    p.add_argument("--negatives", type=int, default=512)
    p.add_argument("--chunk", type=int, default=None, help="chunk_elements (default: per device)")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), help="subset of: " + ", ".join(CONFIGS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    passthrough = [f"--{k}={v}" for k, v in vars(args).items()
                   if k not in ("configs", "one") and v is not None]
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"threads={args.threads}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| config | fwd+bwd wall s (median) | wall s (min) | CPU s (min) | peak RSS delta MiB | "
          "state bytes | anchors |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--one", name],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['seconds_median']:.3f} | {r['seconds_min']:.3f} | {r['cpu_seconds_min']:.3f} | "
              f"{r['peak_rss_delta_mib']:.0f} | {r['state_bytes']:,} | {r['anchors']:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for name, nbytes in gdp_bytes().items():
        print(f"GDP state, {name} (D=256, float64 natural parameters + flags): {nbytes:,} bytes "
              f"({nbytes / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
