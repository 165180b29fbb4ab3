"""`prcl analyze RUN [RUN_B]`: figures and metrics of a trained run (the lead wires
`add_analyze_command` into `prcl.cli`)."""

from __future__ import annotations

import argparse


def _print_summary(result: dict) -> None:
    from prcl.analysis.collect import SIGMA_AUROCS  # late, like analyze_run: `prcl --help` stays light

    for m in result["runs"]:
        rep, unc = m["representation"], m.get("uncertainty")
        sil, dbi = rep.get("silhouette"), rep.get("davies_bouldin")
        quality = "n/a" if sil is None else f"Silhouette {sil:.4f}, DBI {dbi:.4f}"
        print(f"{m['label']} ({m['method']}): {quality} on {rep.get('num_samples', 0)} pixels ({rep['feature']})")
        if unc and unc["mean_var_wrong"] is not None and unc["mean_var_correct"] is not None:
            aurocs = "; ".join(f"{name} {'n/a' if unc.get(k) is None else format(unc[k], '.3f')}"
                               for k, name in SIGMA_AUROCS.items())
            print(f"  mean σ² on wrong pseudo-labels {unc['mean_var_wrong']:.4g} vs correct "
                  f"{unc['mean_var_correct']:.4g} (AUROC {aurocs})")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"report: {result['report']}")


def cmd_analyze(args: argparse.Namespace) -> int:
    from prcl.analysis.report import analyze_run

    result = analyze_run(
        args.run, args.out, args.other, num_images=args.num_images, max_per_class=args.max_per_class,
        seed=args.seed, checkpoint=args.checkpoint, max_images=args.max_images, device=args.device,
        tsne_per_class=args.tsne_per_class, vn_betas=args.vn_betas, vn_per_class=args.vn_per_class,
        overrides=args.override,
    )
    _print_summary(result)
    return 0


def add_analyze_command(subparsers) -> argparse.ArgumentParser:
    """Register `analyze` on the `prcl` sub-command parser."""
    p = subparsers.add_parser(
        "analyze", help="figures and metrics of a trained run (t-SNE, σ² maps, Silhouette/DBI, curves)",
        description="Write metrics.json, PNG figures and report.md for RUN (compared with RUN_B when given).")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("other", nargs="?", help="a second run to compare with")
    p.add_argument("--out", help="output folder (default: RUN/analysis)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint of a run")
    p.add_argument("--num-images", type=int, default=4, help="val images shown in the image figures")
    p.add_argument("--max-per-class", type=int, default=500, help="pixels per class scored for Silhouette/DBI")
    p.add_argument("--max-images", type=int, help="score only the first N val images (default: all)")
    p.add_argument("--tsne-per-class", type=int, default=200, help="pixels per class in the t-SNE plots")
    p.add_argument("--vn-betas", type=float, nargs=2, metavar="BETA", help="the two β of Fig. 9 (default: β, 10β)")
    p.add_argument("--vn-per-class", type=int, default=20, help="virtual negatives drawn per class for Fig. 9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the runs, e.g. data.root=/data/VOC2012 (repeatable)")
    p.set_defaults(func=cmd_analyze)
    return p
