"""The paper's experiment matrix in `configs/`: every file loads, is what the generator writes, covers
exactly the paper's cells with the paper's settings, and builds its model and data objects."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from fixtures_data import make_cityscapes, make_voc, voc_id
from prcl.config import ConfigError, load_config
from prcl.data.cli import add_data_commands
from prcl.data.loaders import build_train_data, build_val_dataset
from prcl.experiments import add_configs_commands, list_configs
from prcl.methods import build_method
from prcl.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NO_WEIGHTS = ["model.pretrained=false"]

# The cells of Tables 1-3 and 5-8 as printed in the paper (written out here, independently of
# `prcl.experiments`): {(table, row): label counts}.
CLASSIC, BLENDER = (92, 183, 366, 732, 1464), (662, 1323, 2646, 5291)
CITY, ABL = (186, 372, 744, 1488), (92, 183, 366, 732)
EXPECTED_ROWS = {
    **{(1, r): CLASSIC for r in ("Supervised", "MT", "ClassMix", "Baseline", "Baseline+", "PRCL")},
    (2, "PRCL"): BLENDER,
    **{(3, r): CITY for r in ("Supervised", "MT", "ClassMix", "PRCL")},
    **{(5, r): ABL for r in ("w/o PR", "w/ PR")},
    **{(6, r): ABL for r in ("Vanilla w/o US", "Vanilla w/ US", "PR w/o US", "PR w/ US")},
    **{(7, r): (92,) for r in ("w/o strategy", "MB size=30000", "MB size=65536", "VN beta=0.7", "VN beta=0.8",
                               "VN beta=0.9", "VN beta=1.0", "VN beta=1.1", "VN beta=1.2")},
    **{(8, r): (92,) for r in ("baseline", "PR", "PR+GDP", "PR+VN", "PR+GDP+VN")},
}
EXPECTED_CELLS = {(t, r, n) for (t, r), counts in EXPECTED_ROWS.items() for n in counts}

# What each row means: (method.name, pr, prototype, vn.enabled, memory bank size or None, vn.beta).
NO_CONTRAST = {"Supervised": "supervised", "MT": "mean_teacher", "ClassMix": "classmix"}
BASELINE = ("baseline", False, "local", False, None, 1.0)
BASELINE_PLUS = ("baseline_plus", False, "ema", False, None, 1.0)
PR = ("prcl", True, "local", False, None, 1.0)
PR_GDP = ("prcl", True, "gdp", False, None, 1.0)
PRCL = ("prcl", True, "gdp", True, None, 1.0)
ROW_SWITCHES = {
    "Baseline": BASELINE, "Baseline+": BASELINE_PLUS, "PRCL": PRCL,
    "w/o PR": BASELINE, "w/ PR": PR,
    "Vanilla w/o US": BASELINE, "Vanilla w/ US": BASELINE_PLUS, "PR w/o US": PR, "PR w/ US": PR_GDP,
    "w/o strategy": PR_GDP, "MB size=30000": PR_GDP[:4] + (30000, 1.0), "MB size=65536": PR_GDP[:4] + (65536, 1.0),
    **{f"VN beta={b}": PRCL[:5] + (b,) for b in (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)},
    "baseline": BASELINE, "PR": PR, "PR+GDP": PR_GDP, "PR+VN": ("prcl", True, "local", True, None, 1.0),
    "PR+GDP+VN": PRCL,
}
# (dataset, split folder, backbone, output stride, crop, batch, iterations, eval mode) per table.
TABLE_SETUP = {
    1: ("voc", "splits/voc/classic", "resnet101.tv_in1k", 16, 512, 16, 80000, "whole"),
    2: ("voc", "splits/voc/blender", "resnet101s.gluon_in1k", 8, 512, 16, 80000, "whole"),
    3: ("cityscapes", "splits/cityscapes", "resnet101s.gluon_in1k", 8, 768, 16, 160000, "sliding"),
    **{t: ("voc", "splits/voc/classic", "resnet101.tv_in1k", 16, 512, 8, 40000, "whole") for t in (5, 6, 7, 8)},
}


def all_config_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] != "base")


@pytest.fixture(scope="module")
def entries():
    return list_configs(CONFIGS)


@pytest.fixture(scope="module")
def loaded():
    """Every config file under configs/ (except base/), loaded once: {path: Config}."""
    return {path: load_config(path) for path in all_config_files()}


def load_generator():
    spec = importlib.util.spec_from_file_location("configs_generate", CONFIGS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_configs_are_the_generator_output():
    gen = load_generator()
    generated = gen.render_all()
    for rel, text in generated.items():
        assert (CONFIGS / rel).read_text() == text, f"configs/{rel} differs: run `python configs/generate.py`"
    assert gen.stale_files(generated) == []
    assert gen.main(["--check"]) == 0


def test_every_config_loads_and_has_its_own_run_name(loaded):
    names = {}
    for path, cfg in loaded.items():
        assert cfg.name not in names, f"{path} and {names.get(cfg.name)} share the run name {cfg.name}"
        names[cfg.name] = path
    assert len(names) == 121  # 75 paper runs + demo.yaml + 27 under UniMatch's recipe + 18 under UniMatch V2's
    v2 = loaded[CONFIGS / "unimatch_v2/cityscapes/186/unimatch_v2.yaml"]
    assert (v2.method.supervised_loss, v2.data.crop_size, v2.method.ema_decay) == ("ohem", 798, 0.996)
    assert v2.train.iterations == 180 * ((2975 - 186) // 8) and v2.model.decoder == "dpt"


def test_configs_list_covers_exactly_the_paper_cells(entries):
    cells = [(e.table, e.row, e.labels) for e in entries if e.table is not None]
    assert len(cells) == len(set(cells)) == 88
    assert set(cells) == EXPECTED_CELLS
    no_cell = [e.path.relative_to(CONFIGS).as_posix() for e in entries if e.table is None and e.reference is None]
    assert no_cell == ["demo.yaml"] + sorted(f"unimatch/{d}/{n}/{m}.yaml" for d, counts in UNIMATCH_SPLITS.items()
                                             for n in counts for m in ("fixmatch", "unimatch_prcl")) + sorted(
        f"unimatch_v2/{d}/{n}/unimatch_v2_prcl.yaml" for d, counts in UNIMATCH_SPLITS.items() for n in counts)
    miou = {(e.table, e.row, e.labels): e.paper_miou for e in entries}
    assert miou[(1, "PRCL", 92)] == 70.23 and miou[(2, "PRCL", 5291)] == 80.11
    assert miou[(3, "Supervised", 186)] == 62.04 and miou[(7, "MB size=65536", 92)] == 67.11


def test_each_cell_has_the_papers_settings(entries, loaded):
    for e in (e for e in entries if e.table is not None):
        cfg = loaded[e.path]
        dataset, split_root, backbone, stride, crop, batch, iters, eval_mode = TABLE_SETUP[e.table]
        d, m, c = cfg.data, cfg.model, cfg.method.contrastive
        where = f"{e.path} (table {e.table}, {e.row}, {e.labels})"
        assert (d.dataset, m.backbone, m.output_stride, d.crop_size) == (dataset, backbone, stride, crop), where
        assert (d.batch_size, d.unlabeled_batch_size, cfg.train.iterations) == (batch, batch, iters), where
        assert (cfg.eval.mode, d.val_split, m.pretrained, m.backbone_channels) == (eval_mode, "val", True, None), where
        assert d.labeled_split == f"{split_root}/{e.labels}/labeled.txt", where
        semi = e.row != "Supervised"
        assert d.unlabeled_split == (f"{split_root}/{e.labels}/unlabeled.txt" if semi else None), where
        assert (cfg.optim.lr, cfg.optim.prob_head_lr, cfg.optim.weight_decay) == (6.4e-3, 5e-5, 5e-4), where
        if e.row in NO_CONTRAST:
            assert cfg.method.name == NO_CONTRAST[e.row], where
            continue
        bank = c.memory_bank.size if c.memory_bank.enabled else None
        assert (cfg.method.name, c.pr, c.prototype, c.vn.enabled, bank, c.vn.beta) == ROW_SWITCHES[e.row], where


# UniMatch's recipe, written out from its repository (configs/pascal.yaml, cityscapes.yaml, unimatch.py):
# (crop, lr, head lr multiplier, τ, epochs, images in the pool, eval mode) per dataset; batch 8 + 8, SGD
# momentum 0.9 without Nesterov, weight decay 1e-4, deep-stem ResNet-101 at output stride 16.
UNIMATCH_SPLITS = {"voc/classic": CLASSIC, "cityscapes": CITY}
UNIMATCH_RECIPE = {"voc/classic": (321, 1e-3, 10.0, 0.95, 80, 10582, "whole"),
                   "cityscapes": (801, 5e-3, 1.0, 0.0, 240, 2975, "sliding")}
UNIMATCH_README = {("voc/classic", 92): 75.2, ("voc/classic", 183): 77.2, ("voc/classic", 366): 78.8,
                   ("voc/classic", 732): 79.9, ("voc/classic", 1464): 81.2, ("cityscapes", 186): 76.6,
                   ("cityscapes", 372): 77.9, ("cityscapes", 744): 79.2, ("cityscapes", 1488): 79.5}


def test_unimatch_recipe_configs(entries, loaded):
    refs = {e.path.relative_to(CONFIGS).as_posix(): e for e in entries if e.reference is not None}
    for (dataset, n), miou in UNIMATCH_README.items():
        for method in ("fixmatch", "unimatch", "unimatch_prcl"):
            rel = f"unimatch/{dataset}/{n}/{method}.yaml"
            cfg = loaded[CONFIGS / rel]
            crop, lr, head, tau, epochs, pool, eval_mode = UNIMATCH_RECIPE[dataset]
            d, o, m = cfg.data, cfg.optim, cfg.method
            assert (cfg.method.name, m.mix, m.unsup_threshold, m.contrastive.enabled) == (
                method, "cutmix_unimatch", tau, method == "unimatch_prcl"), rel
            assert (d.crop_size, d.batch_size, d.unlabeled_batch_size, d.color_jitter, d.blur) == (crop, 8, 8, 0.8, 0.5), rel
            assert (o.name, o.lr, o.head_lr_scale, o.momentum, o.nesterov, o.weight_decay) == (
                "sgd", lr, head, 0.9, False, 1e-4), rel
            assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.pretrained) == ("resnet101s.gluon_in1k", 16, True)
            assert cfg.train.iterations == epochs * ((pool - n) // 8), rel
            assert (cfg.eval.mode, d.labeled_split) == (eval_mode, f"splits/{dataset}/{n}/labeled.txt"), rel
            if eval_mode == "sliding":
                assert (cfg.eval.crop_size, cfg.eval.stride) == (801, None), rel
        ref = refs[f"unimatch/{dataset}/{n}/unimatch.yaml"]
        assert (ref.row, ref.labels, ref.paper_miou) == ("UniMatch", n, miou)
        assert f"reports {miou:.1f} mIoU (not run here)" in (CONFIGS / f"unimatch/{dataset}/{n}/unimatch.yaml").read_text()
    v2_refs = {k: e for k, e in refs.items() if k.startswith("unimatch_v2/")}
    assert len(refs) - len(v2_refs) == len(UNIMATCH_README)
    for (dataset, n), miou in UNIMATCH_V2_README.items():
        ref = v2_refs[f"unimatch_v2/{dataset}/{n}/unimatch_v2.yaml"]
        assert (ref.row, ref.labels, ref.paper_miou) == ("UniMatch V2", n, miou)
        for method in ("unimatch_v2", "unimatch_v2_prcl"):
            cfg = loaded[CONFIGS / f"unimatch_v2/{dataset}/{n}/{method}.yaml"]
            crop, batch, epochs, pool, sup = UNIMATCH_V2_RECIPE[dataset]
            d, o, m = cfg.data, cfg.optim, cfg.method
            assert (m.name, m.mix, m.unsup_threshold, m.ema_decay, m.supervised_loss) == (
                method, "cutmix_unimatch", 0.95, 0.996, sup)
            assert (d.crop_size, d.batch_size, d.unlabeled_batch_size) == (crop, batch, batch)
            assert (o.name, o.lr, o.head_lr_scale, o.weight_decay) == ("adamw", 5e-6, 40, 0.01)
            assert (cfg.model.backbone, cfg.model.decoder) == ("vit_base_patch14_dinov2", "dpt")
            assert cfg.train.iterations == epochs * ((pool - n) // batch)
    assert len(v2_refs) == len(UNIMATCH_V2_README)


UNIMATCH_V2_README = {("voc/classic", 92): 86.3, ("voc/classic", 183): 87.9, ("voc/classic", 366): 88.9,
                      ("voc/classic", 732): 90.0, ("voc/classic", 1464): 90.8, ("cityscapes", 186): 83.6,
                      ("cityscapes", 372): 84.3, ("cityscapes", 744): 84.5, ("cityscapes", 1488): 85.1}
UNIMATCH_V2_RECIPE = {"voc/classic": (518, 16, 60, 10582, "ce"), "cityscapes": (798, 8, 180, 2975, "ohem")}


def test_cityscapes_evaluates_by_sliding_window_of_768():
    cfg = load_config(CONFIGS / "cityscapes" / "186" / "prcl.yaml")
    assert (cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride) == ("sliding", 768, None)


def run_cli(add_commands, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prcl")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_configs_list_command_filters_by_table(capsys):
    assert run_cli(add_configs_commands, ["configs", "list", "--root", str(CONFIGS), "--table", "8"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("8 ")]
    assert [line.split()[-1] for line in lines] == [
        "ablations/92/baseline.yaml", "ablations/92/pr.yaml", "ablations/92/pr_gdp.yaml",
        "ablations/92/pr_vn.yaml", "ablations/92/prcl.yaml",
    ]
    assert "5 of 5 paper cells have a config (5 distinct runs)" in out


def test_configs_list_reports_missing_cells_and_bad_roots(tmp_path, capsys):
    shutil.copy(CONFIGS / "demo.yaml", tmp_path / "demo.yaml")
    assert run_cli(add_configs_commands, ["configs", "list", "--root", str(tmp_path), "--table", "2"]) == 1
    out = capsys.readouterr().out
    assert "0 of 4 paper cells have a config" in out
    assert f"missing: table 2 'PRCL' 662 labels -> {tmp_path / 'voc/blender/662/prcl.yaml'}" in out
    with pytest.raises(ConfigError, match="config folder .*nowhere does not exist"):
        list_configs(tmp_path / "nowhere")
    (tmp_path / "bad.yaml").write_text("train:\n  iteration: 5\n")
    with pytest.raises(ConfigError, match="did you mean 'train.iterations'"):
        list_configs(tmp_path)


def backbone_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.backbone.parameters())


@pytest.mark.parametrize("rel, classes, stem_convs, stride", [
    ("voc/classic/92/prcl.yaml", 21, 1, 16),
    ("voc/blender/662/prcl.yaml", 21, 3, 8),
    ("cityscapes/186/prcl.yaml", 19, 3, 8),
])
def test_representative_models_build(rel, classes, stem_convs, stride):
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / rel, NO_WEIGHTS)
    model = build_model(cfg, classes).eval()
    stem = model.backbone.conv1
    assert sum(isinstance(mod, torch.nn.Conv2d) for mod in stem.modules()) == stem_convs
    assert model.backbone.feature_info.reduction() == [4, stride]
    if stem_convs == 1:  # the plain backbone is torchvision's ResNet-101 without its classifier
        with torch.device("meta"):  # only the shapes are needed
            tv = torchvision.models.resnet101()
        without_fc = sum(p.numel() for name, p in tv.named_parameters() if not name.startswith("fc."))
        assert backbone_params(model) == without_fc
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["logits"].shape == (1, classes, 64, 64)
    assert out["fused"].shape == (1, 304, 16, 16)  # ASPP 256 + low-level 48 at stride 4
    assert out["mu"].shape == out["var"].shape == (1, 256, 16, 16)


# config -> the contrastive loss it must build: (probabilistic, prototype, VNs, VN beta, memory bank)
METHOD_VARIANTS = [
    ("voc/classic/92/baseline.yaml", (False, "local", False, 1.0, False)),
    ("voc/classic/92/baseline_plus.yaml", (False, "ema", False, 1.0, False)),
    ("voc/classic/92/prcl.yaml", (True, "gdp", True, 1.0, False)),
    ("ablations/92/pr.yaml", (True, "local", False, 1.0, False)),
    ("ablations/92/pr_gdp.yaml", (True, "gdp", False, 1.0, False)),
    ("ablations/92/pr_gdp_mb65536.yaml", (True, "gdp", False, 1.0, True)),
    ("ablations/92/prcl_beta0.8.yaml", (True, "gdp", True, 0.8, False)),
    ("ablations/92/pr_vn.yaml", (True, "local", True, 1.0, False)),  # GDP kept only as the VN source
]


@pytest.mark.parametrize("rel", ["voc/classic/92/supervised.yaml", "voc/classic/92/mean_teacher.yaml",
                                 "cityscapes/186/classmix.yaml"])
def test_methods_without_contrast_build(rel):
    cfg = load_config(CONFIGS / rel, NO_WEIGHTS)
    method = build_method(cfg, 21)
    assert method.name == cfg.method.name and getattr(method, "contrast", None) is None


@pytest.mark.parametrize("rel, expected", METHOD_VARIANTS)
def test_contrastive_variants_build_the_loss_they_name(rel, expected):
    cfg = load_config(CONFIGS / rel, NO_WEIGHTS)
    loss = build_method(cfg, 21).contrast.loss
    assert (loss.probabilistic, loss.prototype, loss.vn_enabled, loss.vn_beta, loss.bank is not None) == expected


def split_into(root: Path, out: str, *argv: str) -> None:
    """Run the documented `prcl data split ... --out <root>/<out>` command."""
    assert run_cli(add_data_commands, ["data", "split", "--root", str(root), "--out", str(root / out), "--quiet",
                                       *argv]) == 0


def test_voc_config_finds_its_split_files_and_val_set(tmp_path):
    train, val, aug = [voc_id(i) for i in range(6)], [voc_id(i) for i in range(6, 9)], [voc_id(i) for i in range(9, 12)]
    root = make_voc(tmp_path, train, val, aug_only=aug, with_aug=True)
    split_into(root, "splits/voc/classic/92", "--dataset", "voc", "--scheme", "classic", "--labeled", "2")
    cfg = load_config(CONFIGS / "voc/classic/92/prcl.yaml", [*NO_WEIGHTS, f"data.root={root}", "data.num_workers=0",
                                                              "data.batch_size=2", "data.unlabeled_batch_size=2"])
    info, val_set = build_val_dataset(cfg)
    assert info.num_classes == 21 and len(val_set) == len(val)
    sample = val_set[0]
    assert sample["image"].shape[-2:] == sample["mask"].shape[-2:] == (16, 24)
    data = build_train_data(cfg, with_unlabeled=True)
    assert len(data.labeled.dataset) == 2 and len(data.unlabeled.dataset) == len(train) + len(aug) - 2


def test_cityscapes_config_finds_its_split_files_and_val_set(tmp_path):
    frames = {"train": [("aachen", 0, i) for i in range(4)], "val": [("lindau", 0, i) for i in range(2)]}
    root = make_cityscapes(tmp_path, frames)
    split_into(root, "splits/cityscapes/186", "--dataset", "cityscapes", "--labeled", "1")
    cfg = load_config(CONFIGS / "cityscapes/186/prcl.yaml", [*NO_WEIGHTS, f"data.root={root}", "data.num_workers=0",
                                                              "data.batch_size=1", "data.unlabeled_batch_size=1"])
    info, val_set = build_val_dataset(cfg)
    assert info.num_classes == 19 and len(val_set) == 2
    mask = val_set[0]["mask"]
    assert set(mask.unique().tolist()) <= set(range(19)) | {255}  # labelIds were mapped to trainIds
    assert (mask == 255).any() and (mask < 19).any()
    data = build_train_data(cfg, with_unlabeled=True)
    assert len(data.labeled.dataset) == 1 and len(data.unlabeled.dataset) == 3
