"""The `prcl` command line: train | eval | predict | data | configs | analyze | compare."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from prcl.analysis.cli import add_analyze_command
from prcl.analysis.errors import AnalysisError
from prcl.compare.cli import add_compare_command
from prcl.config import Config, ConfigError, load_config
from prcl.data.cli import add_data_commands
from prcl.experiments import add_configs_commands
from prcl.data.dataset import DataError
from prcl.engine.checkpoint import CheckpointError
from prcl.engine.run_dir import CONFIG_FILE, RunLockedError
from prcl.engine.nonfinite import NonFiniteLossError
from prcl.models.backbone import WeightsError

# Errors caused by the user's input or environment: printed as one line (PRCL_DEBUG=1 shows the traceback).
USER_ERRORS = (AnalysisError, ConfigError, DataError, CheckpointError, WeightsError, NonFiniteLossError, RunLockedError,
               FileExistsError, FileNotFoundError, PermissionError)


def _one_line(err: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker (whose text embeds the
    worker's traceback), just the original exception's message."""
    text = str(err)
    if "Original Traceback" in text:
        kind = type(err)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        text = text.rsplit(f"\n{name}: ", 1)[-1].strip()
    return text


def _free_run_name(cfg: Config) -> None:
    """The default demo run gets a fresh name (demo-2, demo-3, ...) instead of refusing to start."""
    base, n = cfg.name, 2
    while cfg.run_dir.exists() and any(cfg.run_dir.iterdir()):
        cfg.name = f"{base}-{n}"
        n += 1


def cmd_train(args: argparse.Namespace) -> int:
    from prcl.engine.trainer import train

    overrides = list(args.overrides)
    config_path = args.config
    if args.resume:
        run = Path(args.resume)
        config_path = run / CONFIG_FILE
        overrides += [f"output_dir={run.parent}", f"name={run.name}"]
    cfg = load_config(config_path, overrides)
    if not args.resume and not args.overwrite and args.config is None and not any(o.startswith("name=") for o in overrides):
        _free_run_name(cfg)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, one process speaks
    if main:
        print(f"run directory: {cfg.run_dir}  (method {cfg.method.name}, {cfg.train.iterations} iterations)")
    summary = train(cfg, resume=bool(args.resume), force=args.force, overwrite=args.overwrite)
    of = f" of the {summary['evaluated_model']}" if len(summary["miou_by_model"]) > 1 else ""
    if main:
        print(f"done: mIoU {100 * summary['miou']:.2f} (best {100 * summary['best_miou']:.2f}){of} in "
              f"{summary['wall_seconds']:.0f} s; results in {cfg.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from prcl.inference import evaluate_checkpoint, resolve_checkpoint

    ckpt = resolve_checkpoint(Path(args.run), args.checkpoint)
    result = evaluate_checkpoint(ckpt, mode=args.mode, crop=args.crop, stride=args.stride, overrides=args.overrides)
    width = max(len(n) for n in result["class_names"])
    for name, iou in zip(result["class_names"], result["per_class_iou"]):
        print(f"  {name:<{width}}  {'   n/a' if iou is None else f'{100 * iou:6.2f}'}")
    print(f"mIoU {100 * result['miou']:.2f} on {result['num_images']} images ({ckpt}, {result['mode']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from prcl.mask_files import predict_files

    for path in predict_files(Path(args.run), [Path(p) for p in args.images], Path(args.out),
                              checkpoint=args.checkpoint, mode=args.mode, crop=args.crop, stride=args.stride):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prcl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: the built-in demo on CPU)")
    p.add_argument("-c", "--config", help="YAML config (default: built-in demo config)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.iterations=200")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its checkpoints/last.pt")
    p.add_argument("--force", action="store_true", help="resume even if overrides change the experiment")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory of the same name")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run or checkpoint on its val split")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/data/VOC2012")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run")
    p.add_argument("--mode", choices=("whole", "center_crop", "sliding"), help="default: the run's eval.mode")
    p.add_argument("--crop", type=int, help="crop size for center_crop/sliding")
    p.add_argument("--stride", type=int, help="sliding-window stride (default 2/3 of crop)")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="write coloured masks for images")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="predictions")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run")
    p.add_argument("--mode", choices=("whole", "sliding"), help="default: the run's eval.mode (center_crop: whole)")
    p.add_argument("--crop", type=int, help="sliding-window size (default: the run's eval.crop_size)")
    p.add_argument("--stride", type=int, help="sliding-window stride (default: the run's eval.stride or 2/3 of crop)")
    p.set_defaults(func=cmd_predict)

    add_data_commands(sub)
    add_configs_commands(sub)
    add_analyze_command(sub)
    add_compare_command(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("PRCL_DEBUG"):
            raise
        print(f"prcl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
