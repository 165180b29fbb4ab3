"""`prcl data check | split | prepare | synth | photos | thin`: the dataset commands of the `prcl` CLI.

`add_data_commands(subparsers)` adds them to the top-level parser; each sets `func(args) -> int`.
Exit codes: 0 ok, 1 `data check` found problems (all listed), 2 a one-line error (bad arguments,
missing archives, unreadable split files).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Callable

from prcl.data.check import DEFAULT_WORKERS
from prcl.data.sources import SOURCES, generate_split, write_generated_split
from prcl.data.splits import SPLIT_FORMATS, SPLIT_METHODS


Command = Callable[[argparse.Namespace], int]


def _guarded(command: str, fn: Command) -> Command:
    """Turn data errors (and file-system errors) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, OSError) as err:  # DataError is a ValueError
            print(f"prcl data {command}: error: {err}", file=sys.stderr)
            return 2

    return run


def run_check(args: argparse.Namespace) -> int:
    from prcl.data.check import check_dataset

    report = check_dataset(args.dataset, args.root, args.split or (), workers=args.workers,
                           progress=not args.quiet)
    print(report.format(max_errors=args.max_errors))
    return 0 if report.ok else 1


def run_split(args: argparse.Namespace) -> int:
    split = generate_split(
        args.dataset, args.root, args.labeled, scheme=args.scheme, method=args.method,
        seed=args.seed, val_size=args.val_size, workers=args.workers, progress=not args.quiet,
    )
    written = write_generated_split(args.dataset, args.root, split, args.out, args.format)
    for note in split.notes:
        print(f"note: {note}")
    for role, path in written.items():
        print(f"{role:<10} {sum(1 for _ in path.open()):>7} entries -> {path}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from prcl.data.prepare import prepare_dataset

    result = prepare_dataset(args.dataset, args.archives, args.out, progress=not args.quiet)
    for archive, count in result.files.items():
        print(f"{archive}: {count} files in place under {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"next: prcl data check --dataset {args.dataset} --root {result.out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """`data synth` (the built-in dataset), `data photos` (the wheel-photograph benchmark) and `data thin`
    (the rare thin-structure benchmark)."""
    if args.data_command == "synth":
        from prcl.data.synthetic import generate_synthetic_dataset as generate
    elif args.data_command == "photos":
        from prcl.data.photos import generate_photo_dataset as generate
    else:
        from prcl.data.thin_structures import generate_thin_dataset as generate

    names = ("seed", "num_train", "num_val", "image_size", "workers")
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}  # else defaults
    root = generate(args.out, progress=True, **given)
    what = {"synth": "synthetic dataset", "photos": "photo benchmark", "thin": "thin-structure benchmark"}
    print(f"{what[args.data_command]} written to {root}")
    return 0


def _common(parser: argparse.ArgumentParser, datasets: Any = None) -> None:
    if datasets is not None:
        parser.add_argument("--dataset", required=True, choices=datasets)
        parser.add_argument("--root", required=True, type=Path, help="dataset root folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `data {check,split,prepare,synth,photos,thin}` to the `prcl` sub-command parsers."""
    data = subparsers.add_parser("data", help="prepare, check, split or synthesise datasets")
    sub = data.add_subparsers(dest="data_command", metavar="{check,split,prepare,synth,photos,thin}")
    sub.required = True

    check = sub.add_parser("check", help="validate a dataset root and its splits")
    _common(check, sorted(SOURCES))
    check.add_argument("--split", action="append", metavar="[ROLE=]FILE",
                       help="list file or standard split name to check (repeatable); the role is "
                            "the file stem unless given; roles containing 'unlabel' are checked "
                            "without masks")
    check.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    check.add_argument("--max-errors", type=int, default=30,
                       help="errors printed (all are counted)")
    check.set_defaults(func=_guarded("check", run_check))

    split = sub.add_parser("split", help="write labeled/unlabeled/val lists from a seed")
    _common(split, sorted(SOURCES))
    split.add_argument("--labeled", type=int, required=True, help="number of labeled images")
    split.add_argument("--scheme", help="where labeled/unlabeled images come from; voc: "
                                        "classic (default) | blender | train; cityscapes: train")
    split.add_argument("--method", choices=SPLIT_METHODS, default="random")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--val-size", type=int, default=0,
                       help="folder datasets: hold out N labeled images as val")
    split.add_argument("--format", choices=SPLIT_FORMATS, default="ids",
                       help="ids: one id/image per line (U2PL); pairs: `image mask` per line "
                            "(UniMatch)")
    split.add_argument("--out", type=Path, required=True,
                       help="folder for labeled.txt, unlabeled.txt, val.txt")
    split.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    split.set_defaults(func=_guarded("split", run_split))

    prepare = sub.add_parser("prepare", help="extract downloaded archives into the expected layout")
    prepare.add_argument("dataset", choices=["voc", "cityscapes"])
    prepare.add_argument("--archives", type=Path, required=True,
                         help="folder holding the downloaded archives")
    prepare.add_argument("--out", type=Path, required=True, help="dataset root to create")
    _common(prepare)
    prepare.set_defaults(func=_guarded("prepare", run_prepare))

    for name, text in (("synth", "write the built-in procedural dataset (VOC layout)"),
                       ("photos", "write the benchmark of real photographs from installed wheels (folder layout)"),
                       ("thin", "write the benchmark of rare thin structures on photographs (folder layout)")):
        gen = sub.add_parser(name, help=text)
        gen.add_argument("--out", type=Path, required=True)
        gen.add_argument("--seed", type=int)
        gen.add_argument("--num-train", type=int)
        gen.add_argument("--num-val", type=int)
        gen.add_argument("--image-size", type=int)
        if name == "synth":
            gen.add_argument("--workers", type=int)
        gen.set_defaults(func=_guarded(name, run_generate))
    return data
