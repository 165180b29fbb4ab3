"""Write the config file of every experiment of the paper (Tables 1-3 and 5-8) from one matrix, and the
configs of FixMatch / UniMatch / UniMatch + PRCL under UniMatch's recipe (`configs/unimatch/`) and of
UniMatch V2 / UniMatch V2 + PRCL under UniMatch V2's (`configs/unimatch_v2/`).

Each file only composes the building blocks in `configs/base/` with `_base_` and adds what is
particular to it: its run name, its split lists and, for Table 7, one switch (for UniMatch's recipe,
the iterations of its epochs). Usage:

    python configs/generate.py          # (re)write the files
    python configs/generate.py --check  # exit 1 if a committed file differs or is stale

(`prcl` must be importable: `pip install -e .`).

`tests/test_configs.py` checks that the committed files equal this script's output. Which paper
cell each file reproduces (and the paper's number) comes from `prcl.experiments.PAPER_CELLS`, the
published number beside a UniMatch-recipe config from `prcl.experiments.REFERENCE_CELLS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from prcl.experiments import ABLATION, CITYSCAPES, PAPER_CELLS, REFERENCE_CELLS, VOC_BLENDER, VOC_CLASSIC

HERE = Path(__file__).resolve().parent
TABLE1_METHODS = ("supervised", "mean_teacher", "classmix", "baseline", "baseline_plus", "prcl")
TABLE3_METHODS = ("supervised", "mean_teacher", "classmix", "prcl")
TABLE7_BETAS = (0.7, 0.8, 0.9, 1.1, 1.2)  # beta = 1.0 is ablations/92/prcl.yaml
TABLE7_BANK_SIZES = (30000, 65536)
UNIMATCH_METHODS = ("fixmatch", "unimatch", "unimatch_prcl")
UNIMATCH_V2_METHODS = ("unimatch_v2", "unimatch_v2_prcl")


@dataclass(frozen=True)
class Schedule:
    """Another method's recipe on one dataset: configs/<folder>/<dataset>/<labels>/<method>.yaml.

    Its authors train `epochs` passes over the unlabeled set at `unlabeled_batch` images per step:
    iterations = epochs × ⌊|U| / unlabeled_batch⌋, |U| = the pool minus the labeled images (VOC classic:
    the rest of the 10,582 train_aug images; Cityscapes: of the 2,975 train images). (Their 4-GPU
    DistributedSampler pads each rank's share, which adds at most one step per epoch.)"""

    source: str  # whose recipe
    folder: str
    dataset: str
    base: str  # under configs/base/
    splits: str
    counts: tuple[int, ...]
    pool: int
    epochs: int
    unlabeled_batch: int
    methods: tuple[str, ...]

    def iterations(self, labeled: int) -> int:
        return self.epochs * ((self.pool - labeled) // self.unlabeled_batch)


SCHEDULES = (  # UniMatch (CVPR 2023): 8 unlabeled images per step; UniMatch V2: 16 on VOC, 8 on Cityscapes
    Schedule("UniMatch", "unimatch", "voc/classic", "unimatch_voc_classic.yaml", "splits/voc/classic",
             VOC_CLASSIC, pool=10582, epochs=80, unlabeled_batch=8, methods=UNIMATCH_METHODS),
    Schedule("UniMatch", "unimatch", "cityscapes", "unimatch_cityscapes.yaml", "splits/cityscapes",
             CITYSCAPES, pool=2975, epochs=240, unlabeled_batch=8, methods=UNIMATCH_METHODS),
    Schedule("UniMatch V2", "unimatch_v2", "voc/classic", "unimatch_v2_voc_classic.yaml", "splits/voc/classic",
             VOC_CLASSIC, pool=10582, epochs=60, unlabeled_batch=16, methods=UNIMATCH_V2_METHODS),
    Schedule("UniMatch V2", "unimatch_v2", "cityscapes", "unimatch_v2_cityscapes.yaml", "splits/cityscapes",
             CITYSCAPES, pool=2975, epochs=180, unlabeled_batch=8, methods=UNIMATCH_V2_METHODS),
)


@dataclass(frozen=True)
class Experiment:
    """One config file: `configs/<path>`."""

    path: str
    bases: tuple[str, ...]  # relative to configs/base/
    split_dir: str  # folder of labeled.txt / unlabeled.txt, relative to the data root
    semi_supervised: bool = True
    overrides: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def experiments() -> list[Experiment]:
    out = [
        Experiment(f"voc/classic/{n}/{m}.yaml", ("voc_classic.yaml", f"method/{m}.yaml"),
                   f"splits/voc/classic/{n}", m != "supervised")
        for n in VOC_CLASSIC for m in TABLE1_METHODS
    ]
    out += [
        Experiment(f"voc/blender/{n}/prcl.yaml", ("voc_blender.yaml", "method/prcl.yaml"), f"splits/voc/blender/{n}")
        for n in VOC_BLENDER
    ]
    out += [
        Experiment(f"cityscapes/{n}/{m}.yaml", ("cityscapes.yaml", f"method/{m}.yaml"),
                   f"splits/cityscapes/{n}", m != "supervised")
        for n in CITYSCAPES for m in TABLE3_METHODS
    ]

    def ablation(n: int, name: str, method: str, overrides: Optional[dict] = None, notes=()) -> Experiment:
        return Experiment(f"ablations/{n}/{name}.yaml", ("voc_classic.yaml", "ablation.yaml", f"method/{method}.yaml"),
                          f"splits/voc/classic/{n}", overrides=overrides or {}, notes=tuple(notes))

    out += [ablation(n, v, v) for n in ABLATION for v in ("baseline", "baseline_plus", "pr", "pr_gdp")]
    out += [ablation(92, v, v) for v in ("pr_vn", "prcl")]
    out += [ablation(92, f"prcl_beta{b}", "prcl", {"method": {"contrastive": {"vn": {"beta": b}}}})
            for b in TABLE7_BETAS]
    out += [
        ablation(92, f"pr_gdp_mb{s}", "pr_gdp",
                 {"method": {"contrastive": {"memory_bank": {"enabled": True, "size": s}}}},
                 ["The paper lowers the batch size of its memory-bank runs to fit in GPU memory but does",
                  "not say to what; the ablation batch (8 + 8) is kept."])
        for s in TABLE7_BANK_SIZES
    ]
    for sch in SCHEDULES:
        for n in sch.counts:
            iters = sch.iterations(n)
            note = (f"{sch.source}'s recipe: {sch.epochs} epochs of the {sch.pool - n} unlabeled images at "
                    f"{sch.unlabeled_batch} per step = {iters} iterations.")
            out += [Experiment(f"{sch.folder}/{sch.dataset}/{n}/{m}.yaml", (sch.base, f"method/{m}.yaml"),
                               f"{sch.splits}/{n}", overrides={"train": {"iterations": iters}}, notes=(note,))
                    for m in sch.methods]
    return out


def _header(exp: Experiment) -> list[str]:
    cells = [c for c in PAPER_CELLS if c.config == exp.path]
    lines = [f"Table {c.table}, {c.row}, {c.labels} labels: the paper reports {c.miou:.2f} mIoU." for c in cells]
    lines += [f"{c.row}, {c.labels} labels: the {c.source} reports {c.miou:.1f} mIoU (not run here)."
              for c in REFERENCE_CELLS if c.config == exp.path]
    lines += list(exp.notes)
    lines += ["Generated by configs/generate.py: edit the generator or configs/base/, not this file."]
    return [f"# {line}" for line in lines]


def render(exp: Experiment) -> str:
    """The YAML text of one experiment's config file."""
    folder = (HERE / exp.path).parent
    bases = [Path(os.path.relpath(HERE / "base" / b, folder)).as_posix() for b in exp.bases]
    data = {"labeled_split": f"{exp.split_dir}/labeled.txt"}
    if exp.semi_supervised:
        data["unlabeled_split"] = f"{exp.split_dir}/unlabeled.txt"
    body = {"name": exp.path[: -len(".yaml")].replace("/", "-"), "data": data, **exp.overrides}
    lines = _header(exp) + [f"_base_: [{', '.join(bases)}]"]
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def render_all() -> dict[str, str]:
    """`{path relative to configs/: text}` for every generated file."""
    return {exp.path: render(exp) for exp in experiments()}


def stale_files(generated: dict[str, str]) -> list[str]:
    """Config files under the generated folders that the generator no longer writes."""
    folders = ("voc", "cityscapes", "ablations", *sorted({sch.folder for sch in SCHEDULES}))
    found = {p.relative_to(HERE).as_posix() for f in folders for p in (HERE / f).rglob("*.yaml")}
    return sorted(found - set(generated))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    generated = render_all()
    differ = [p for p, text in generated.items() if not (HERE / p).is_file() or (HERE / p).read_text() != text]
    stale = stale_files(generated)
    if args.check:
        for p in differ:
            print(f"differs from the generator: configs/{p}")
        for p in stale:
            print(f"not written by the generator (delete it?): configs/{p}")
        return 1 if differ or stale else 0
    for p in differ:
        (HERE / p).parent.mkdir(parents=True, exist_ok=True)
        (HERE / p).write_text(generated[p])
    print(f"{len(generated)} config files, {len(differ)} written")
    for p in stale:
        print(f"not written by the generator (delete it?): configs/{p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
