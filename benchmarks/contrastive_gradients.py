"""How strongly each contrastive variant reaches the network, and through which path (issue #13).

On a trained run's student (all heads) or on the freshly initialised model of its config, feeds
`--images` val images with their true masks through `ContrastiveTerm` (the term the trainer adds)
for each variant of `method.contrastive`, and reports per variant: the loss and its uniform value
log(keys), ‖∂Lc/∂μ‖ at the loss, and the gradient norm at the trunk (backbone + ASPP + decoder
projection) of the whole term and of its μ and σ² paths (`prcl.engine.diagnostics`). The μ ratio
is relative to the first variant (the cosine Baseline by default). λc(t) is taken at t = 0.

    python benchmarks/contrastive_gradients.py runs/demo --out benchmarks/results/contrastive_gradients.md
    python benchmarks/contrastive_gradients.py runs/demo --init     # the same at initialisation
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

import torch

from prcl.config import contrastive_preset, from_dict, parse_override
from prcl.data.loaders import build_val_dataset
from prcl.engine.checkpoint import load_checkpoint
from prcl.engine.diagnostics import gradient_norms
from prcl.methods.contrastive_term import ContrastiveTerm
from prcl.models import build_model

VARIANTS = {
    "baseline (cosine, local prototypes)": ["pr=false", "prototype=local", "vn.enabled=false"],
    "prcl, form=release (unit μ, mean over dims, posterior prototype σ², τ = 100)": ["form=release"],
    "prcl, form=release at τ = 0.5 (the default before issue #13)": ["form=release", "temperature=0.5"],
    "prcl, form=paper (raw μ, Eq. 3 summed)": ["form=paper"],
    "prcl, form=release at τ = 0.5 with the sum over dims": ["form=release", "temperature=0.5", "mls.reduction=sum"],
    "prcl, form=predictive": ["form=predictive"],
    "prcl, form=predictive, var_grad=head": ["form=predictive", "var_grad=head"],
}


def batch(cfg, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, val = build_val_dataset(cfg)
    items = [val[i] for i in range(n)]
    return torch.stack([x["image"] for x in items]), torch.stack([x["mask"] for x in items])


def measure(run: Path, variants: dict[str, list[str]], images: int, init: bool, seed: int) -> list[dict]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    rows = []
    for name, overrides in variants.items():
        cfg = from_dict(copy.deepcopy(state["config"]))
        cfg.model.pretrained = init  # initialisation: ImageNet backbone, fresh heads
        cfg.data.max_val_images = None
        saved = cfg.method.contrastive
        variant = dict(parse_override(o) for o in overrides)
        method = "baseline" if variant.get("pr") is False else "prcl"
        nested: dict = {}
        for key, value in variant.items():  # "vn.enabled" -> {"vn": {"enabled": ...}}
            *parents, leaf = key.split(".")
            d = nested
            for part in parents:
                d = d.setdefault(part, {})
            d[leaf] = value
        cfg.method.contrastive = contrastive_preset(method, num_anchors=saved.num_anchors,
                                                    num_negatives=saved.num_negatives, **nested)
        torch.manual_seed(seed)
        model = build_model(cfg, state["num_classes"])
        if not init:
            weights = {k: v for k, v in state["model"].items() if k in model.state_dict()}
            missing = set(model.state_dict()) - set(weights)
            if missing:
                raise SystemExit(f"{run} has no weights for {sorted(missing)[:3]}: use a prcl run (all heads)")
            model.load_state_dict(weights)
        model.eval()
        term = ContrastiveTerm(cfg, state["num_classes"])
        x, masks = batch(cfg, images)
        half = images // 2
        out = model(x)
        if not cfg.method.contrastive.pr:
            out.pop("var", None)
        out["mu"].retain_grad()
        step = term(out, masks[:half], masks[half:], torch.ones(masks[half:].shape), progress=0.0)
        norms = gradient_norms(step.terms, step.paths, model.trunk_parameters())
        (g_mu,) = torch.autograd.grad(step.terms["contrastive"], out["mu"], retain_graph=True)
        s = step.stats
        rows.append(dict(variant=name, loss=s["contrastive/loss"], uniform=s["contrastive/uniform_loss"],
                         mean_var=s["contrastive/mean_var"], proto_var=s["contrastive/proto_var"],
                         dmu=float(g_mu.norm()), trunk=norms["grad/contrastive"],
                         via_mu=norms.get("grad/contrastive.mu", norms["grad/contrastive"]),
                         via_var=norms.get("grad/contrastive.var", 0.0)))
    return rows


def table(rows: list[dict]) -> list[str]:
    ref = rows[0]["via_mu"]
    lines = ["| variant | Lc | log(keys) | mean σ² | prototype σ² | ‖∂Lc/∂μ‖ | ‖∂/∂trunk‖ | via μ | via σ² "
             "| μ share of trunk | via μ / first row |", "| --- " * 11 + "|"]
    for r in rows:
        share = r["via_mu"] / (r["via_mu"] + r["via_var"]) if r["via_mu"] + r["via_var"] else float("nan")
        lines.append(f"| {r['variant']} | {r['loss']:.3f} | {r['uniform']:.2f} | {r['mean_var']:.3f} | "
                     f"{r['proto_var']:.2e} | {r['dmu']:.2e} | {r['trunk']:.3e} | {r['via_mu']:.3e} | "
                     f"{r['via_var']:.3e} | {100 * share:.0f}% | {r['via_mu'] / ref:.2f}× |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory with checkpoints/last.pt (a prcl run: all heads)")
    p.add_argument("--images", type=int, default=16, help="val images (half as labeled, half as pseudo-labeled)")
    p.add_argument("--init", action="store_true", help="measure the freshly initialised model of the run's config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = measure(args.run, VARIANTS, args.images, args.init, args.seed)
    where = "at initialisation" if args.init else f"on {args.run}/checkpoints/last.pt"
    lines = [f"### {where}", "", f"`python benchmarks/contrastive_gradients.py {shlex.join(sys.argv[1:])}`", "",
             *table(rows), ""]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
