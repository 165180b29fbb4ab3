"""The paper's tables in miniature on the built-in synthetic dataset (CPU).

The tables are data (`paper_catalogue.py`: each row a list of `prcl train` overrides); every (row, seed) is its
own `python -m prcl train` process in `--runs/<name>-s<seed>/`, run by `prcl compare`'s runner several at a
time (`--jobs`, one thread each). A finished run (with `summary.json`) is reused when its saved config is the
one asked for, else trained again (the reason is printed first); an interrupted one is resumed; so the script
continues where it stopped. The markdown (`paper_sections.py`) is rewritten after every run, so it fills in as
results arrive; `--only NONE` trains nothing and rewrites it from the runs there.

    python benchmarks/paper_tables.py --tables 1 4 8 7 tau sigma --fractions 1_64 1_16 --seeds 0 1 2 --tau-seeds 0
    python benchmarks/paper_tables.py --tables 15 --fractions 1_64 1_16 --seeds 0 1 2   # FixMatch / UniMatch V1, V2 (+PRCL)
    python benchmarks/paper_tables.py --tables 27 27r --fractions 1_64 --iterations 400   # the recipes carried by rules
    python benchmarks/paper_tables.py --tables gap --fractions 1_16 --seeds 0 --iterations 2400 \
        --runs benchmarks/runs_gap --out benchmarks/results/dataset_gap.md --title "..."

`--tables` takes a table's id (as above) or its name (`methods`, `strong_baselines`, `recipes`, ...; the
catalogue lists them).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import subprocess
import sys
from pathlib import Path

from paper_catalogue import Experiment, PaperTable, catalogue, experiments, select
from paper_sections import SECTIONS, Context

from prcl.compare.runner import Runner
from prcl.compare.runs import PlannedRun, RunSpec, describe_plan, plan_run
from prcl.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_overrides(exp: Experiment, seed: int, args: argparse.Namespace) -> list[str]:
    """The row's overrides and the harness's: seed, data, label split, one thread, the iteration budget."""
    split = f"splits/{exp.fraction}"
    return [
        *exp.overrides, f"seed={seed}", f"data.root={args.data}", f"data.labeled_split={split}/labeled.txt",
        "train.threads=1", "data.num_workers=0",
        *(["data.dataset=folder", "data.val_split=splits/val.txt"] if args.dataset == "photos" else []),
        f"train.iterations={args.iterations}", f"train.eval_every={args.iterations}",
        *(["data.unlabeled_split=null"] if exp.fraction == "full" else [f"data.unlabeled_split={split}/unlabeled.txt"]),
        *args.extra,
    ]


def run_specs(exps: list[Experiment], args: argparse.Namespace) -> list[RunSpec]:
    """One spec per (run name, seed) that --only selects, seed-major (every row gets a first seed early); a run
    shared by tables is trained once. Configs are resolved here: a bad override stops the script at once."""
    jobs: dict[tuple[str, int], Experiment] = {}
    for s in args.seeds:
        for e in exps:
            if s in (e.seeds or args.seeds) and (
                    args.only is None or any(fnmatch.fnmatch(e.name, pat) or fnmatch.fnmatch(f"{e.name}-s{s}", pat)
                                             for pat in args.only)):
                jobs.setdefault((e.name, s), e)
    return [RunSpec.create(f"{e.name}-s{s}", args.runs, train_overrides(e, s, args), log=args.runs / f"{e.name}-s{s}.log")
            for (_, s), e in jobs.items()]


def analyzer(names: set[str]):
    """`after_run` for the runner: `prcl analyze` (representation quality) of the runs named, once each."""

    def analyze(run: PlannedRun) -> None:
        out = run.spec.run_dir / "analysis"
        if run.spec.name not in names or (out / "metrics.json").is_file():
            return
        cmd = [sys.executable, "-m", "prcl", "analyze", str(run.spec.run_dir), "--out", str(out), "--num-images", "2"]
        with open(run.spec.output_dir / f"{run.spec.name}.analyze.log", "w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ONE_THREAD).returncode:
                raise RuntimeError(f"prcl analyze {run.spec.run_dir} failed; see {f.name}")

    return analyze


def _shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


READING = ("<!-- reading: written by hand; benchmarks/paper_tables.py keeps it when it rewrites the tables -->", "<!-- /reading -->")


def kept_reading(path: Path) -> str:
    """The hand-written reading of the numbers in the file being rewritten (between the `READING` markers),
    so it has one home, the results file itself; empty markers for a new file."""
    text = path.read_text() if path.is_file() else ""
    start, end = text.find(READING[0]), text.find(READING[1])
    return text[start:end + len(READING[1])] if 0 <= start < end else "\n".join(READING)


def write_table(tables: list[PaperTable], exps: list[Experiment], args: argparse.Namespace, command: str) -> None:
    lines = [f"# {args.title}", "",
             f"Command: `{command}`", "",
             f"Each run: {args.iterations} iterations, one CPU thread, demo model and data settings "
             f"(see `configs/demo.yaml`); mIoU of the teacher (or student) on the 300 val images at the end; "
             f"mean ± sample std over seeds {args.seeds}. Runs in `{_shown(args.runs)}`. Labels: 1_64 = 31, 1_16 = 125, "
             "full = 2000 labeled images (the rest of the 2000-image pool unlabeled)."
             + (" Tables 8, 7 and the τ sweep at the first fraction only." if len(args.fractions) > 1 else ""), ""]
    lines += [kept_reading(args.out), ""]
    by_id = {t.id: t for t in tables}
    ctx = Context(args.runs, args.out, args.seeds, {t.id: t.title for t in tables})
    for table in dict.fromkeys(e.table for e in exps):
        rows = [x for x in exps if x.table == table]
        for section in by_id[table].sections:
            lines += SECTIONS[section](rows, ctx)
    args.out.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["1", "4", "8", "7", "tau"])
    p.add_argument("--fractions", nargs="+", default=["1_64", "1_16"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tau-seeds", nargs="+", type=int, default=[0], help="seeds of the temperature sweep")
    p.add_argument("--temperatures", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--dataset", choices=("synthetic", "photos"), default="synthetic",
                   help="photos: the wheel-photograph benchmark of `prcl data photos` (a folder dataset) at --data")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthetic")
    p.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs")
    p.add_argument("--title", default="The paper's tables in miniature (built-in synthetic dataset, CPU)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_tables.md")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="train only the runs whose name (prcl-1_64) or run directory (prcl-1_64-s0) matches one of "
                        "these globs; the tables still list every row, from the runs already in --runs")
    p.add_argument("extra", nargs="*", help="extra overrides for every run")
    args = p.parse_args()
    command = "python benchmarks/paper_tables.py " + shlex.join(sys.argv[1:])
    tables = select(args.tables, catalogue(args.temperatures, args.tau_seeds))
    exps = experiments(tables, args.fractions)
    try:
        specs = run_specs(exps, args)
    except ConfigError as err:
        print(f"paper_tables.py: error: {err}", file=sys.stderr)
        return 2
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.dataset == "photos":  # the second benchmark (`prcl data photos`), generated once
        if not (args.data / "meta.json").is_file():
            from prcl.data.photos import generate_photo_dataset

            generate_photo_dataset(args.data)
    else:
        from prcl.data.synthetic import ensure_synthetic_dataset

        ensure_synthetic_dataset(args.data, workers=args.jobs)  # once, before parallel runs race to do it
    planned = [plan_run(spec) for spec in specs]
    print("\n".join(describe_plan(planned)), flush=True)
    write_table(tables, exps, args, command)
    analyzed = {f"{e.name}-s{s}" for t in tables if t.analyze for e in exps if e.table == t.id
                for s in (e.seeds or args.seeds)}
    runner = Runner(args.jobs, threads=1, after_run=analyzer(analyzed),
                    on_outcome=lambda _: write_table(tables, exps, args, command))
    outcomes = runner.run(planned)
    return 1 if any(not o.ok for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
