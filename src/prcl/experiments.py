"""The paper's experiment matrix: which config file reproduces which table cell, and its number.

`PAPER_CELLS` holds Tables 1-3 and 5-8 of the journal paper as data (row, labeled images, mIoU,
config path under `configs/`). Several ablation cells are the same experiment (Table 5 "w/ PR",
Table 6 "PR w/o US" and Table 8 "PR" at 92 labels are one run), so they share one config.
`list_configs` joins these cells with the YAML files found on disk; `prcl configs list` prints it.
Table 4 (embedding metrics) is computed from trained runs by the analysis tools, not trained.

`REFERENCE_CELLS` are not the paper's: numbers other methods' authors publish (UniMatch's and UniMatch
V2's READMEs), each beside the config under `configs/unimatch/` or `configs/unimatch_v2/` that follows
their recipe. They are targets to compare a run with; none has been run here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from prcl.config import ConfigError, load_config
from prcl.config.cli import add_config_commands

VOC_CLASSIC = (92, 183, 366, 732, 1464)
VOC_BLENDER = (662, 1323, 2646, 5291)
CITYSCAPES = (186, 372, 744, 1488)
ABLATION = (92, 183, 366, 732)


@dataclass(frozen=True)
class PaperCell:
    """One number of the paper and the config (path relative to the configs root) that trains it."""

    table: int
    row: str  # the paper's row label
    labels: int  # labeled images (the column)
    miou: float  # the paper's mIoU (%)
    config: str


# (table, row, config template with {n}, label counts, the paper's mIoU per count), in paper order.
_TABLES: tuple[tuple[int, str, str, Sequence[int], Sequence[float]], ...] = (
    (1, "Supervised", "voc/classic/{n}/supervised.yaml", VOC_CLASSIC, (52.38, 55.32, 65.92, 71.59, 72.90)),
    (1, "MT", "voc/classic/{n}/mean_teacher.yaml", VOC_CLASSIC, (46.84, 61.35, 66.86, 71.93, 74.00)),
    (1, "ClassMix", "voc/classic/{n}/classmix.yaml", VOC_CLASSIC, (63.83, 67.20, 71.23, 73.98, 76.91)),
    (1, "Baseline", "voc/classic/{n}/baseline.yaml", VOC_CLASSIC, (66.91, 69.73, 72.01, 74.99, 76.85)),
    (1, "Baseline+", "voc/classic/{n}/baseline_plus.yaml", VOC_CLASSIC, (68.27, 70.32, 73.97, 75.61, 77.21)),
    (1, "PRCL", "voc/classic/{n}/prcl.yaml", VOC_CLASSIC, (70.23, 72.20, 75.17, 76.24, 78.29)),
    (2, "PRCL", "voc/blender/{n}/prcl.yaml", VOC_BLENDER, (77.87, 79.09, 79.85, 80.11)),
    (3, "Supervised", "cityscapes/{n}/supervised.yaml", CITYSCAPES, (62.04, 65.71, 69.48, 70.06)),
    (3, "MT", "cityscapes/{n}/mean_teacher.yaml", CITYSCAPES, (67.06, 68.43, 70.05, 70.64)),
    (3, "ClassMix", "cityscapes/{n}/classmix.yaml", CITYSCAPES, (67.98, 69.58, 72.21, 72.82)),
    (3, "PRCL", "cityscapes/{n}/prcl.yaml", CITYSCAPES, (73.38, 77.08, 77.89, 79.95)),
    (5, "w/o PR", "ablations/{n}/baseline.yaml", ABLATION, (66.91, 69.73, 72.01, 74.99)),
    (5, "w/ PR", "ablations/{n}/pr.yaml", ABLATION, (68.49, 71.79, 74.36, 76.00)),
    (6, "Vanilla w/o US", "ablations/{n}/baseline.yaml", ABLATION, (66.91, 69.73, 72.01, 74.99)),
    (6, "Vanilla w/ US", "ablations/{n}/baseline_plus.yaml", ABLATION, (68.27, 70.32, 73.97, 75.61)),
    (6, "PR w/o US", "ablations/{n}/pr.yaml", ABLATION, (68.49, 71.79, 74.36, 76.00)),
    (6, "PR w/ US", "ablations/{n}/pr_gdp.yaml", ABLATION, (69.52, 72.20, 75.17, 76.24)),
    (7, "w/o strategy", "ablations/{n}/pr_gdp.yaml", (92,), (66.89,)),
    (7, "MB size=30000", "ablations/{n}/pr_gdp_mb30000.yaml", (92,), (66.05,)),
    (7, "MB size=65536", "ablations/{n}/pr_gdp_mb65536.yaml", (92,), (67.11,)),
    (7, "VN beta=0.7", "ablations/{n}/prcl_beta0.7.yaml", (92,), (66.95,)),
    (7, "VN beta=0.8", "ablations/{n}/prcl_beta0.8.yaml", (92,), (68.01,)),
    (7, "VN beta=0.9", "ablations/{n}/prcl_beta0.9.yaml", (92,), (66.04,)),
    (7, "VN beta=1.0", "ablations/{n}/prcl.yaml", (92,), (66.23,)),
    (7, "VN beta=1.1", "ablations/{n}/prcl_beta1.1.yaml", (92,), (67.98,)),
    (7, "VN beta=1.2", "ablations/{n}/prcl_beta1.2.yaml", (92,), (67.06,)),
    (8, "baseline", "ablations/{n}/baseline.yaml", (92,), (66.91,)),
    (8, "PR", "ablations/{n}/pr.yaml", (92,), (68.49,)),
    (8, "PR+GDP", "ablations/{n}/pr_gdp.yaml", (92,), (69.52,)),
    (8, "PR+VN", "ablations/{n}/pr_vn.yaml", (92,), (69.07,)),
    (8, "PR+GDP+VN", "ablations/{n}/prcl.yaml", (92,), (70.23,)),
)

PAPER_CELLS: tuple[PaperCell, ...] = tuple(
    PaperCell(table, row, n, miou, template.format(n=n))
    for table, row, template, counts, mious in _TABLES
    for n, miou in zip(counts, mious)
)
PAPER_TABLES = tuple(sorted({c.table for c in PAPER_CELLS}))


@dataclass(frozen=True)
class ReferenceCell:
    """A number published by another method's authors, and the config here that follows their recipe."""

    source: str  # where the number is published
    row: str
    labels: int
    miou: float
    config: str


UNIMATCH_README = "UniMatch README (ResNet-101)"
# github.com/LiheYoung/UniMatch README: VOC classic (crop 321) and Cityscapes (crop 801, output stride 16,
# τ = 0); the README publishes no FixMatch numbers, so the fixmatch/unimatch_prcl configs have none.
UNIMATCH_V2_README = "UniMatch V2 README (DINOv2-B)"
# github.com/LiheYoung/UniMatch-V2 README: VOC classic (crop 518) and Cityscapes (crop 798), DINOv2-B with
# the DPT head; no numbers with PRCL's contrast exist (unimatch_v2_prcl is new here).
_REFERENCES: tuple[tuple[str, str, str, Sequence[int], Sequence[float]], ...] = (
    (UNIMATCH_README, "UniMatch", "unimatch/voc/classic/{n}/unimatch.yaml", VOC_CLASSIC, (75.2, 77.2, 78.8, 79.9, 81.2)),
    (UNIMATCH_README, "UniMatch", "unimatch/cityscapes/{n}/unimatch.yaml", CITYSCAPES, (76.6, 77.9, 79.2, 79.5)),
    (UNIMATCH_V2_README, "UniMatch V2", "unimatch_v2/voc/classic/{n}/unimatch_v2.yaml", VOC_CLASSIC,
     (86.3, 87.9, 88.9, 90.0, 90.8)),
    (UNIMATCH_V2_README, "UniMatch V2", "unimatch_v2/cityscapes/{n}/unimatch_v2.yaml", CITYSCAPES,
     (83.6, 84.3, 84.5, 85.1)),
)
REFERENCE_CELLS: tuple[ReferenceCell, ...] = tuple(
    ReferenceCell(source, row, n, miou, template.format(n=n))
    for source, row, template, counts, mious in _REFERENCES
    for n, miou in zip(counts, mious)
)


@dataclass(frozen=True)
class ConfigEntry:
    """A config file under the configs root and the paper cell it reproduces (None: no cell)."""

    path: Path
    table: Optional[int]
    row: Optional[str]
    dataset: str
    labels: Optional[int]
    method: str
    iterations: int
    paper_miou: Optional[float]  # the paper's mIoU, or the reference's (then `reference` names its source)
    name: str  # the run directory name
    reference: Optional[str] = None  # source of a `REFERENCE_CELLS` number (not the PRCL paper)


def _config_files(root: Path) -> list[Path]:
    """Every YAML file under `root` except the building blocks in `root/base/`."""
    return sorted(p for p in root.rglob("*.yaml") if p.relative_to(root).parts[0] != "base")


def list_configs(root: Union[str, Path] = "configs", table: Optional[int] = None) -> list[ConfigEntry]:
    """One entry per (config file, paper cell) in paper order, then per (config, reference cell), then
    configs of no cell by path.

    Every listed file is loaded with `load_config`, so a broken config raises its `ConfigError`
    here. `table` keeps only that table's cells (and loads only their files).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"config folder {root} does not exist; run from the repository root or pass --root")
    order = {cell: i for i, cell in enumerate(PAPER_CELLS)}
    ref_order = {cell: i for i, cell in enumerate(REFERENCE_CELLS)}
    wanted = {c.config for c in PAPER_CELLS if c.table == table}
    entries: list[tuple[tuple, ConfigEntry]] = []
    for path in _config_files(root):
        rel = path.relative_to(root).as_posix()
        if table is not None and rel not in wanted:
            continue  # not loaded: listing one table stays fast
        cfg = load_config(path)
        cells: Iterable[Union[PaperCell, ReferenceCell, None]] = (
            [c for c in PAPER_CELLS if c.config == rel] + [c for c in REFERENCE_CELLS if c.config == rel] or [None])
        for cell in cells:
            ref = cell if isinstance(cell, ReferenceCell) else None
            entry = ConfigEntry(
                path, cell.table if isinstance(cell, PaperCell) else None, cell.row if cell else None,
                cfg.data.dataset, cell.labels if cell else None, cfg.method.name, cfg.train.iterations,
                cell.miou if cell else None, cfg.name, ref.source if ref else None,
            )
            key = (0, order[cell]) if isinstance(cell, PaperCell) else (1, ref_order[cell]) if ref else (2, rel)
            entries.append((key, entry))
    entries.sort(key=lambda item: item[0])
    return [e for _, e in entries if table is None or e.table == table]


def missing_cells(root: Union[str, Path] = "configs") -> list[PaperCell]:
    """Paper cells whose config file does not exist under `root`."""
    return [c for c in PAPER_CELLS if not (Path(root) / c.config).is_file()]


def format_table(entries: Sequence[ConfigEntry], root: Path) -> str:
    """A plain-text table: one line per entry; table `ref` = a reference number (`REFERENCE_CELLS`)."""
    header = ("table", "row", "labels", "reported", "dataset", "method", "iters", "config")
    rows = [header] + [
        (
            str(e.table) if e.table is not None else "ref" if e.reference else "-", e.row or "-",
            str(e.labels) if e.labels is not None else "-",
            f"{e.paper_miou:.2f}" if e.paper_miou is not None else "-",
            e.dataset, e.method, str(e.iterations), e.path.relative_to(root).as_posix(),
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 6}  # numbers
    return "\n".join(
        "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def run_list(args: argparse.Namespace) -> int:
    root = Path(args.root)
    entries = list_configs(root, args.table)
    print(format_table(entries, root))
    cells = [c for c in PAPER_CELLS if args.table is None or c.table == args.table]
    missing = [c for c in missing_cells(root) if c in cells]
    runs = len({e.path for e in entries if e.table is not None})
    print(f"\n{len(cells) - len(missing)} of {len(cells)} paper cells have a config ({runs} distinct runs)")
    if args.table is None and REFERENCE_CELLS:
        sources = ", ".join(dict.fromkeys(c.source for c in REFERENCE_CELLS))
        print(f"ref: numbers published by other methods' authors ({sources}) beside the config that follows "
              "their recipe; not the PRCL paper's, not run here")
    for c in missing:
        print(f"missing: table {c.table} '{c.row}' {c.labels} labels -> {root / c.config}")
    missing_refs = [c for c in REFERENCE_CELLS if args.table is None and not (root / c.config).is_file()]
    for c in missing_refs:
        print(f"missing: ref '{c.row}' {c.labels} labels ({c.source}) -> {root / c.config}")
    return 1 if missing or missing_refs else 0


def add_configs_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `configs list` (here) and `configs show | keys` (`prcl.config.cli`) to the `prcl` sub-command parsers."""
    configs = subparsers.add_parser("configs", help="list the shipped configs and the paper cells they reproduce; "
                                                    "show a resolved config; list every key")
    sub = configs.add_subparsers(dest="configs_command", metavar="{list,show,keys}")
    sub.required = True
    p = sub.add_parser("list", help="print every config with its table, row, label count and the paper's mIoU")
    p.add_argument("--root", default="configs", help="config folder (default: ./configs)")
    p.add_argument("--table", type=int, choices=PAPER_TABLES, help="only the cells of this table")
    p.set_defaults(func=run_list)
    add_config_commands(sub)
    return configs
