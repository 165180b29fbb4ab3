"""`prcl compare`: which method, and how many labels, on your data. Trains methods × label fractions ×
seeds (× any `--vary` key) as separate `prcl train` runs under `--out/runs/`, reuses and resumes what is
there, and writes `results.md`, `results.csv` and `miou_vs_labels.png` (see docs/compare.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from prcl.compare.matrix import Matrix, build_matrix, split_list
from prcl.compare.report import PLOT_FILE, cells, miou_table, write_plot, write_report
from prcl.compare.results import collect, write_csv
from prcl.compare.runner import Runner, command_line, failure_text, gpu_devices, threads_per_job
from prcl.compare.runs import PlannedRun, describe_plan, plan_run
from prcl.config import ConfigError

REPORT_FILE, CSV_FILE = "results.md", "results.csv"


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in split_list(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be integers separated by commas, e.g. 0,1,2") from None


def canonical_command(args: argparse.Namespace) -> str:
    """The command that asks for this comparison again (recorded in results.md)."""
    words = ["prcl", "compare", "--methods", args.methods, "--labels", args.labels, "--seeds", args.seeds,
             "--out", str(args.out)]
    words += ["-c", str(args.config)] if args.config else []
    words += [w for v in args.vary for w in ("--vary", v)]
    words += ["--reference", args.reference] if args.reference else []
    words += ["--split-seed", str(args.split_seed)] if args.split_seed else []
    return shlex.join(words + list(args.overrides))


def _dry_run(matrix: Matrix, planned: Sequence[PlannedRun], threads: int, args: argparse.Namespace) -> None:
    """The pending runs' commands, one line each, as a shell script (comments start with #)."""
    pending = [r for r in planned if r.pending]
    print(f"# {len(pending)} of {len(planned)} runs to do; each line is one run (any order, on any machine that sees "
          "these paths; for a multi-GPU run replace `python -m prcl` with `torchrun --nproc_per_node=N -m prcl`).")
    print(f"# Then collect: {canonical_command(args)} --collect-only")
    print(f"# Relative paths are relative to {Path.cwd()}")
    root = Path(matrix.runs[0].config.data.root)
    if matrix.runs[0].config.data.dataset == "synthetic" and not (root / "meta.json").is_file() and pending:
        print("# first, once (the built-in dataset):")
        print(shlex.join([sys.executable, "-m", "prcl", "data", "synth", "--out", str(root)]))
    for run in pending:
        print(command_line(run, threads))


def cmd_compare(args: argparse.Namespace) -> int:
    matrix = build_matrix(split_list(args.methods), split_list(args.labels), _seeds(args.seeds), args.vary,
                          args.overrides, args.config, args.out, args.reference, args.split_seed,
                          generate_data=not args.dry_run)
    planned = [plan_run(spec) for spec in matrix.runs]
    devices = gpu_devices(matrix.runs[0].config.train.device)
    jobs = args.jobs or max(1, len(devices))
    if args.dry_run:
        _dry_run(matrix, planned, threads_per_job(jobs), args)
        return 0
    print("compare: " + "\n".join(describe_plan(planned)), flush=True)
    failed: dict[str, str] = {}
    if not args.collect_only:
        if devices and jobs > len(devices):
            print(f"compare: one run per GPU, so {len(devices)} at a time (not {jobs})")
        for outcome in Runner(jobs, devices=devices).run(planned):
            if not outcome.ok:
                failed[outcome.run.spec.name] = "\n".join([failure_text(outcome), *outcome.tail])
    results = collect(matrix, failed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(matrix, results, args.out / CSV_FILE)
    report = write_report(matrix, results, args.out / REPORT_FILE, canonical_command(args), failed)
    write_plot(matrix, results, args.out / PLOT_FILE)
    print("\nmIoU (%), mean ± sample std over seeds:")
    print("\n".join(miou_table(matrix, cells(matrix, results))))
    print(f"\nresults: {report}, {args.out / CSV_FILE}, {args.out / PLOT_FILE}")
    for name, text in failed.items():
        print(f"\nFAILED {name}: " + text.replace("\n", "\n    "))
    unfinished = sum(r.summary is None for r in results) - len(failed)
    if unfinished:
        print(f"{unfinished} runs not finished yet; run the same command again to train them"
              + (" (without --collect-only)" if args.collect_only else ""))
    return 1 if failed else 0


def add_compare_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `compare` to the `prcl` sub-command parsers."""
    p = subparsers.add_parser(
        "compare", help="compare methods x label fractions x seeds on your data (tables, CSV, curve)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. supervised,classmix,prcl")
    p.add_argument("--labels", required=True, help="label fractions, e.g. 1_16,1_8 (full: every label)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2; use at least 3)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per GPU, else 1); on CPU each gets "
                                           "cores // jobs threads")
    p.add_argument("--out", type=Path, default=Path("compare"), help="folder for runs/, logs/, splits/ and the "
                                                                     "results (default ./compare)")
    p.add_argument("-c", "--config", type=Path, help="YAML config every run starts from")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="one more axis: any config key and its values (repeatable)")
    p.add_argument("--reference", help="the method the others are paired against (default: supervised if "
                                       "compared, else the first)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the label splits made for a dataset without nested splits (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the pending runs' command lines (for a cluster's scheduler) and stop")
    mode.add_argument("--collect-only", action="store_true",
                      help="train nothing: write the results from the runs finished so far")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. train.iterations=400")
    p.set_defaults(func=cmd_compare)
    return p
