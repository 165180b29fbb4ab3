"""The paper's tables in miniature on the built-in synthetic dataset (CPU).

Each experiment is a list of `prcl train` overrides; every (experiment, seed) runs as its own
`python -m prcl train` process in `--runs/<name>-s<seed>/`, several at a time (`--jobs`, one thread
each). Finished runs (with `summary.json`) are skipped, so the script resumes where it stopped, and
the markdown table is rewritten after every run, so it fills in as results arrive.

    python benchmarks/paper_tables.py --tables 1 4 8 7 tau sigma --fractions 1_64 1_16 --seeds 0 1 2 --tau-seeds 0
    python benchmarks/paper_tables.py --tables 15 --fractions 1_64 1_16 --seeds 0 1 2   # FixMatch / UniMatch V1, V2 (+PRCL)
    python benchmarks/paper_tables.py --tables 27 27r --fractions 1_64 --iterations 400   # the recipes carried by rules
    python benchmarks/paper_tables.py --tables gap --fractions 1_16 --seeds 0 --iterations 2400 \
        --runs benchmarks/runs_gap --out benchmarks/results/dataset_gap.md --title "..."
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from prcl.analysis.collect import SIGMA_AUROCS
from prcl.config import Config
from prcl.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Experiment:
    table: str
    row: str
    fraction: str
    overrides: list[str] = field(default_factory=list)
    seeds: Optional[list[int]] = None  # None: the --seeds of the command

    @property
    def name(self) -> str:
        """From the settings, not the table: a run that serves several tables is trained once."""
        short = [o.replace("method.contrastive.", "").replace("method.name=", "").replace("memory_bank.", "mb.")
                 for o in self.overrides]
        return "-".join(short + [self.fraction]).replace("=", "_")


TITLES = {"1": "Table 1 — methods", "4": "Table 4 — representation quality (prcl analyze)",
          "8": "Table 8 — PRCL components", "7": "Table 7 — extra negatives: none / memory bank / VN",
          "tau": "Temperature sweep (chose the default τ)", "sigma": "σ² head learning rate",
          "gap": "Dataset property: supervised, few vs all labels",
          "15": "Issues #15, #21 — FixMatch, UniMatch, UniMatch V2 and PRCL's contrast on them",
          "13": "Issue #13 — the probabilistic contrast: forms and options (gradient diagnostics)",
          "19": "Issue #19 — σ² options and pseudo-label noise (reliability diagnostics)",
          "19r": "Issue #19 — class-dependent pseudo-label noise: flips to the teacher's second choice",
          "lambda": "Issue #19 — the contrast's weight λc0, judged on both benchmarks",
          "19a": "Issue #27 — which part of PRCL is robust to class-dependent noise: Table 8's rows at p = 0 and 0.4",
          "27": "Issue #27 — each rule that carries an authors' recipe into the miniature, measured on its own",
          "27r": "Issue #27 — the methods with their authors' recipes carried by the rules"}
SPREAD_VNS = ["method.contrastive.vn.source=empirical", "method.contrastive.vn.scale=std"]
RELIABLE_PRCL = ["method.name=prcl", "model.prob_final_norm=false", "optim.prob_head_lr_scale=0.2", *SPREAD_VNS]
"""PRCL with the issue #19 options: σ² head without the final BatchNorm at lr·T ≈ the paper's, VNs drawn
from the class's empirical spread."""
SPREAD_VN_PRCL = ["method.name=prcl", *SPREAD_VNS]
"""PRCL with the issue #19 VN fix alone: VNs drawn from the class's empirical spread, the paper's σ² head."""
NOISE_ROWS = {"baseline": ["method.name=baseline"], "baseline_plus": ["method.name=baseline_plus"],
              "prcl": ["method.name=prcl"], "prcl, VN spread": SPREAD_VN_PRCL,
              "prcl, σ² free + VN spread": RELIABLE_PRCL}
NOISE_LEVELS = (0.0, 0.2, 0.4)
RUNNER_UP_NOISE_ROWS = ("baseline", "baseline_plus", "prcl")  # table 19r: its p = 0 runs are table 19's
RUNNER_UP_NOISE_LEVELS = (0.0, 0.4)  # p = 0.2 not run: the session's CPU time went to more seeds at 0.4
CONTRAST_VARIANTS = {  # Table "13": the candidates for PRCL's default, with the references they are judged by
    "classmix (no contrast)": ["method.name=classmix"],
    "baseline (cosine)": ["method.name=baseline"],
    "prcl, form=release": ["method.name=prcl", "method.contrastive.form=release"],  # the authors' τ = 100
    "prcl, form=release, τ=0.5 (the default before #13)": ["method.name=prcl", "method.contrastive.form=release",
                                                            "method.contrastive.temperature=0.5"],
    "prcl, form=paper": ["method.name=prcl", "method.contrastive.form=paper"],
    "prcl, form=predictive (the default)": ["method.name=prcl"],  # the Table 1 run
    "prcl, form=predictive, var_grad=head": ["method.name=prcl", "method.contrastive.var_grad=head"],
}
CONTRAST_VARIANT_SEEDS = {  # one seed each: rows that the screening rejected or that saturate/diverge
    "prcl, form=paper": [0],  # the literal form diverges (Lc overflows by iteration 7)
    "prcl, form=release": [0],  # τ = 100: inert
    "prcl, form=release, τ=0.5 (the default before #13)": [0],  # its 3 seeds: results/archive/paper_tables_release.md
    "prcl, form=predictive, var_grad=head": [0],
}
LAMBDA_ROWS = {  # table "lambda": ClassMix and the contrasts on it, at the default λc0 = 1; PRCL also at a lower one
    "supervised": ["method.name=supervised"], "classmix": ["method.name=classmix"],
    "baseline": ["method.name=baseline"], "prcl": ["method.name=prcl"],
    "prcl, λc0=0.25": ["method.name=prcl", "method.contrastive.lambda0=0.25"],
}
TABLE1_METHODS = ("supervised", "mean_teacher", "classmix", "baseline", "baseline_plus", "prcl")
TABLE15_METHODS = ("supervised", "classmix", "prcl", "fixmatch", "unimatch", "unimatch_prcl", "unimatch_v2",
                   "unimatch_v2_prcl")  # the first 3 = Table 1's runs
ABLATION_NOISE_ROWS = {  # table 19a: Table 8's rows (and Baseline+, memory without PR) under class-dependent noise
    "baseline": ["method.name=baseline"], "+PR": ["method.name=baseline", "method.contrastive.pr=true"],
    "+PR+GDP": ["method.name=prcl", "method.contrastive.vn.enabled=false"], "prcl": ["method.name=prcl"],
    "baseline_plus": ["method.name=baseline_plus"]}

# Issue #27: the rules that carry each authors' recipe into the miniature (400 iterations of a small model on the
# built-in set). Each is a scale-down rule or the authors' own setting, stated once here and in docs/reproduce.md;
# none is chosen by its val score.
AUTHORS_RUN_ITERATIONS = {  # the run each method's EMA decay was made for (VOC classic, fewest labels)
    **dict.fromkeys(("mean_teacher", "classmix", "baseline", "baseline_plus", "prcl"), 80_000),  # PRCL: 80k at 0.99
    **dict.fromkeys(("unimatch_v2", "unimatch_v2_prcl"), 39_300),  # V2: 60 epochs × ⌊10,490 / 16⌋ at 0.996
}
RECIPE_COLOR_JITTER = 0.8  # every recipe's: the PRCL release (rand > 0.2), UniMatch and UniMatch V2 (random() < 0.8)


def ema_horizon_rule(method: str) -> list[str]:
    """The teacher lags the same fraction of the run as in the authors' run (`method.ema_reference_iterations`)."""
    reference = AUTHORS_RUN_ITERATIONS.get(method) if METHODS[method].uses_teacher else None
    return [f"method.ema_reference_iterations={reference}"] if reference else []


def loss_scale_rule(method: str) -> list[str]:
    """Under SGD a loss scale is an lr scale: a method trained on s·L (FixMatch/UniMatch/V2: s = 1/2) gets the
    miniature's lr / s, so every method takes the same step on its supervised loss. (UniMatch V2's authors use
    AdamW, which ignores the scale; their lr is made for a DINOv2 ViT and cannot be carried to this CNN.)"""
    scale = METHODS[method].loss_scale
    if scale == 1.0:
        return []
    optim = Config().optim
    return [f"optim.lr={optim.lr / scale:g}", f"optim.prob_head_lr={optim.prob_head_lr / scale:g}"]


def color_jitter_rule(method: str) -> list[str]:
    """The recipes' colour-jitter probability on the strong views (the demo keeps 0.5)."""
    return [f"data.color_jitter={RECIPE_COLOR_JITTER}"] if METHODS[method].uses_unlabeled else []


RECIPE_RULES = {"EMA horizon": ema_horizon_rule, "lr ÷ loss scale": loss_scale_rule,
                "colour jitter 0.8": color_jitter_rule}
RULE_ROWS = {  # table 27: each rule on its own (the row without a rule is the plain method)
    "classmix": ("EMA horizon", "colour jitter 0.8"), "fixmatch": ("lr ÷ loss scale",),
    "unimatch": ("lr ÷ loss scale",),
    "unimatch_v2": ("EMA horizon", "lr ÷ loss scale", "colour jitter 0.8"),
}
PER_LEVEL_MASKS = ["model.complementary_mask=per_level"]  # UniMatch V2's masks before issue #27 (shared: its code)


WITHOUT_HORIZON = ", teacher EMA 0.99 (no horizon rule)"


def recipe_overrides(method: str) -> list[str]:
    """`method.name` and every rule of RECIPE_RULES that applies to it (table 27r)."""
    return [f"method.name={method}", *(o for rule in RECIPE_RULES.values() for o in rule(method))]


PUBLISHED_VOC92 = {  # mIoU at 92 VOC labels, each from its authors' paper (Kendall's τ of table 27r)
    "supervised": 52.38,  # PRCL paper, Table 1 (UniMatch's SupBaseline: 45.1)
    "classmix": 63.83,  # PRCL paper, Table 1
    "fixmatch": 63.9,  # UniMatch paper, Table 1 (its re-implementation)
    "prcl": 70.23,  # PRCL paper, Table 1
    "unimatch": 75.2,  # UniMatch README (ResNet-101)
    "unimatch_v2": 86.3,  # UniMatch V2 README (DINOv2-B)
}


def experiments(tables: list[str], fractions: list[str], temperatures: list[float],
                tau_seeds: list[int]) -> list[Experiment]:
    out: list[Experiment] = []
    for frac in fractions:
        if "gap" in tables:  # the dataset property of issue #2: how much room labels leave
            out.append(Experiment("gap", "supervised", frac, ["method.name=supervised"]))
            if frac == fractions[-1]:
                out.append(Experiment("gap", "supervised", "full", ["method.name=supervised"]))
        if "1" in tables:
            out += [Experiment("1", m, frac, [f"method.name={m}"]) for m in TABLE1_METHODS]
            if frac == fractions[0]:
                out.append(Experiment("1", "supervised", "full", ["method.name=supervised"]))
        if "15" in tables:  # same overrides as Table 1's rows, so those runs are shared
            out += [Experiment("15", m, frac, [f"method.name={m}"]) for m in TABLE15_METHODS]
        if "13" in tables:
            out += [Experiment("13", r, frac, o, CONTRAST_VARIANT_SEEDS.get(r)) for r, o in CONTRAST_VARIANTS.items()]
        if "lambda" in tables:  # the same run names as Table 1's rows, so those runs are shared
            out += [Experiment("lambda", r, frac, o) for r, o in LAMBDA_ROWS.items()
                    if frac == fractions[0] or "λc0" not in r]  # the lower weight at the first fraction only
        if "27" in tables:  # each rule on its own, beside its method as it was
            for method, rules in RULE_ROWS.items():
                plain = [f"method.name={method}"] + (PER_LEVEL_MASKS if method == "unimatch_v2" else [])
                out.append(Experiment("27", method + (", per-level masks (before)" if method == "unimatch_v2" else ""),
                                      frac, plain))
                if method == "unimatch_v2":
                    out.append(Experiment("27", f"{method}, shared masks (its code)", frac, [f"method.name={method}"]))
                out += [Experiment("27", f"{method}, {rule}", frac, plain + RECIPE_RULES[rule](method)) for rule in rules]
        if "27r" in tables:
            out += [Experiment("27r", m, frac, recipe_overrides(m)) for m in TABLE15_METHODS]
            out += [Experiment("27r", f"{m}{WITHOUT_HORIZON}", frac, [o for o in recipe_overrides(m)
                                                                     if not o.startswith("method.ema_reference")])
                    for m in ("classmix", "prcl")]  # the mean-teacher family, its teacher as in the default job
        if "4" in tables:  # representation quality of the Table 1 runs (prcl analyze)
            out += [Experiment("4", m, frac, [f"method.name={m}"]) for m in ("supervised", "baseline", "prcl")]
        if frac != fractions[0]:  # the ablations (Tables 8, 7, τ) run at the first fraction only
            continue
        if "19" in tables:  # pseudo-label noise p: the robustness claim head-on
            out += [Experiment("19", f"{row}, p={p:g}", frac, o + ([f"method.pseudo_label_noise={p}"] if p else []))
                    for p in NOISE_LEVELS for row, o in NOISE_ROWS.items()]
        if "19r" in tables:  # the same sweep with class-dependent noise (`pseudo_label_noise_kind=runner_up`)
            out += [Experiment("19r", f"{row}, p={p:g}", frac, NOISE_ROWS[row] + (
                        [f"method.pseudo_label_noise={p}", "method.pseudo_label_noise_kind=runner_up"] if p else []))
                    for p in RUNNER_UP_NOISE_LEVELS for row in RUNNER_UP_NOISE_ROWS]
        if "19a" in tables:  # which component carries PRCL's robustness (issue #27)
            out += [Experiment("19a", f"{row}, p={p:g}", frac, o + (
                        [f"method.pseudo_label_noise={p}", "method.pseudo_label_noise_kind=runner_up"] if p else []))
                    for p in RUNNER_UP_NOISE_LEVELS for row, o in ABLATION_NOISE_ROWS.items()]
        if "8" in tables:
            rows = {
                "baseline": ["method.name=baseline"],
                "+PR": ["method.name=baseline", "method.contrastive.pr=true"],
                "+PR+GDP": ["method.name=prcl", "method.contrastive.vn.enabled=false"],
                "+PR+VN": ["method.name=prcl", "method.contrastive.prototype=local"],
                "+PR+GDP+VN": ["method.name=prcl"],
            }
            out += [Experiment("8", r, frac, o) for r, o in rows.items()]
        if "7" in tables:
            rows = {
                "none": ["method.name=prcl", "method.contrastive.vn.enabled=false"],
                "memory bank 30000": ["method.name=prcl", "method.contrastive.vn.enabled=false",
                                      "method.contrastive.memory_bank.enabled=true",
                                      "method.contrastive.memory_bank.size=30000"],
                "VN": ["method.name=prcl"],
            }
            out += [Experiment("7", r, frac, o) for r, o in rows.items()]
        if "sigma" in tables:  # does the σ² head learn at this budget? (the paper soft-freezes it)
            out += [Experiment("sigma", f"prob_head_lr={lr:g}", frac, ["method.name=prcl"] + (
                [] if lr == Config().optim.prob_head_lr else [f"optim.prob_head_lr={lr}"]), tau_seeds)
                for lr in (Config().optim.prob_head_lr, Config().optim.lr)]
        if "tau" in tables:
            default = Config().method.contrastive.temperature  # that row is the plain prcl run
            out += [Experiment("tau", f"tau={t:g}", frac, ["method.name=prcl"] + (
                [] if t == default else [f"method.contrastive.temperature={t}"]), tau_seeds) for t in temperatures]
    return out


def run_one(exp: Experiment, seed: int, args: argparse.Namespace, analyze: bool) -> Path:
    run = args.runs / f"{exp.name}-s{seed}"
    if not (run / "summary.json").is_file():
        train_one(exp, run, seed, args)
    if analyze and not (run / "analysis" / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "prcl", "analyze", str(run), "--out", str(run / "analysis"), "--num-images", "2"]
        with open(args.runs / f"{run.name}.analyze.log", "w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=ONE_THREAD).returncode:
                raise RuntimeError(f"prcl analyze {run} failed; see {f.name}")
    return run


def train_one(exp: Experiment, run: Path, seed: int, args: argparse.Namespace) -> None:
    split = f"splits/{exp.fraction}"
    overrides = [
        *exp.overrides, f"seed={seed}", f"output_dir={args.runs}", f"name={run.name}", f"data.root={args.data}",
        f"data.labeled_split={split}/labeled.txt", "train.threads=1", "data.num_workers=0",
        *(["data.dataset=folder", "data.val_split=splits/val.txt"] if args.dataset == "photos" else []),
        f"train.iterations={args.iterations}", f"train.eval_every={args.iterations}",
        *(["data.unlabeled_split=null"] if exp.fraction == "full" else [f"data.unlabeled_split={split}/unlabeled.txt"]),
        *args.extra,
    ]
    cmd = [sys.executable, "-m", "prcl", "train", *overrides, "--overwrite"]
    log = args.runs / f"{run.name}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{run.name} failed (exit {proc.returncode}); see {log}")


def method_state_bytes(run: Path) -> int:
    """Bytes of the method's state (prototypes, GDP, memory bank) in the run's last checkpoint."""
    path = run / "checkpoints" / "last.pt"
    return _state_bytes(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _state_bytes(path: str, mtime_ns: int) -> int:  # cached: the table is rewritten after every run
    state = torch.load(path, map_location="cpu", weights_only=True)
    return sum(t.numel() * t.element_size() for t in state["method"].values() if torch.is_tensor(t))


def _fmt(values: list[float], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}{unit} (1 seed)"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}{unit}"


def representation_table(exps: list[Experiment], seeds: list[int], args: argparse.Namespace) -> list[str]:
    """From `prcl analyze` of each run: Silhouette (higher = better separated) and Davies-Bouldin (lower =
    better) of the val representations (student μ, or the fused feature for methods without a head), the
    mIoU, and how well σ² flags wrong pseudo-labels (AUROC; 0.5 = not at all; Fig. 7's claim is > 0.5), over all
    labeled pixels, over those with confidence ≥ δw (the ones the contrastive loss uses), and within each
    ground-truth class (mean; 0.5 when σ² only tells background from objects)."""
    lines = [f"## {TITLES[exps[0].table]}", "", "| row | labels | feature | Silhouette ↑ | Davies–Bouldin ↓ | "
             "mIoU (%) | σ² wrong / correct | " + " | ".join(f"AUROC σ² flags wrong, {v}" for v in SIGMA_AUROCS.values())
             + " | runs |", "| --- " * (8 + len(SIGMA_AUROCS)) + "|"]
    for e in exps:
        row_seeds = e.seeds or seeds
        cols: dict[str, list[float]] = {k: [] for k in ("sil", "dbi", "miou", "ratio_wrong_to_correct", *SIGMA_AUROCS)}
        feature = "–"
        for s in row_seeds:
            path = args.runs / f"{e.name}-s{s}" / "analysis" / "metrics.json"
            if path.is_file():
                run = json.loads(path.read_text())["runs"][0]
                rep, unc = run["representation"], run.get("uncertainty") or {}
                cols["sil"].append(rep["silhouette"])
                cols["dbi"].append(rep["davies_bouldin"])
                cols["miou"].append(run["miou"])
                for key in ("ratio_wrong_to_correct", *SIGMA_AUROCS):
                    if unc.get(key) is not None:
                        cols[key].append(unc[key])
                feature = f"{rep['feature']} ({rep['dim']}-d)"
        uncertainty = " | ".join(_fmt(cols[k], 1, 3) for k in ("ratio_wrong_to_correct", *SIGMA_AUROCS))
        lines.append(f"| {e.row} | {e.fraction} | {feature} | {_fmt(cols['sil'], 1, 3)} | {_fmt(cols['dbi'], 1, 3)} | "
                     f"{_fmt(cols['miou'])} | {uncertainty} | {len(cols['sil'])}/{len(row_seeds)} |")
    return lines + [""]


def _gradient_summary(run: Path) -> Optional[dict[str, float]]:
    """From a run's train_log.jsonl: over the gradient diagnostics of the first half of training (where
    λc(t) still matters), the mean of the contrastive term's trunk gradient through μ with λc divided out
    (the cosine Baseline has only that path), the μ share of the term's trunk gradient, and the term's
    gradient relative to the supervised term's; at the end, the mean σ² and Lc / log(keys)."""
    path = run / "train_log.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines()]
    diag = [r for r in records if "grad/contrastive" in r and r.get("contrastive/lambda")]
    if not diag:
        return None
    first = [r for r in diag if r["iteration"] <= records[-1]["iteration"] / 2] or diag[:1]
    mu = [r.get("grad/contrastive.mu", r["grad/contrastive"]) / r["contrastive/lambda"] for r in first]
    share = [r.get("grad/contrastive.mu", r["grad/contrastive"]) / max(
        r.get("grad/contrastive.mu", r["grad/contrastive"]) + r.get("grad/contrastive.var", 0.0), 1e-30) for r in first]
    rel = [r["grad/contrastive"] / r["grad/sup"] for r in first if r.get("grad/sup")]
    last = [r for r in records if "contrastive/loss" in r][-1]
    return {"mu": statistics.mean(mu), "share": statistics.mean(share), "rel": statistics.mean(rel),
            "var": last.get("contrastive/mean_var", 0.0),
            "sat": last["contrastive/loss"] / last["contrastive/uniform_loss"] if last.get("contrastive/uniform_loss") else 0.0}


def gradient_table(exps: list[Experiment], seeds: list[int], args: argparse.Namespace) -> list[str]:
    """mIoU and the gradient diagnostics of each row (`_gradient_summary`), the μ gradient relative to the
    row named "baseline (cosine)" of the same seeds."""
    lines = [f"## {TITLES[exps[0].table]}", "", "Gradients: mean over the diagnostics (every 100 iterations) of the "
             "first half of training. μ vs Baseline: the contrastive trunk gradient through μ with λc(t) divided "
             "out, relative to the cosine Baseline's (the issue's target band: 0.5–2×). μ share: of the contrastive "
             "term's trunk gradient. Lc / log(keys): 1 = flat (uniform logits), 0 = saturated.", "",
             "| row | labels | mIoU (%) | μ vs Baseline | μ share | ‖∂Lc‖ / ‖∂Ls‖ at the trunk | mean σ² (end) "
             "| Lc / log(keys) (end) | runs |", "| --- " * 9 + "|"]
    summaries = {(e.row, s): _gradient_summary(args.runs / f"{e.name}-s{s}") for e in exps for s in (e.seeds or seeds)}
    for e in exps:
        row_seeds = e.seeds or seeds
        mious, cols = [], {k: [] for k in ("ratio", "share", "rel", "var", "sat")}
        for s in row_seeds:
            run = args.runs / f"{e.name}-s{s}"
            if (run / "summary.json").is_file():
                mious.append(json.loads((run / "summary.json").read_text())["miou"])
            g, base = summaries[(e.row, s)], summaries.get(("baseline (cosine)", s))
            if g is not None:
                for k in ("share", "rel", "var", "sat"):
                    cols[k].append(g[k])
                if base is not None:
                    cols["ratio"].append(g["mu"] / base["mu"])
        has_var = e.row.startswith("prcl")
        lines.append(f"| {e.row} | {e.fraction} | {_fmt(mious)} | {_fmt(cols['ratio'], 1, 2)} | "
                     f"{_fmt(cols['share'], 100, 0, '%')} | {_fmt(cols['rel'], 1, 3)} | "
                     f"{_fmt(cols['var'], 1, 3) if has_var else '–'} | {_fmt(cols['sat'], 1, 2)} | "
                     f"{len(mious)}/{len(row_seeds)} |")
    return lines + [""]


RELIABILITY_COLUMNS = {  # train_log key -> column: the second half of training, mean over diagnostics and seeds
    "reliability/confident/wrong_fraction": "wrong pseudo-labels (confident)",
    "reliability/confident/auroc_within_class": "AUROC σ² flags wrong, within class (confident)",
    "reliability/anchors/auroc_within_class": "same, anchors",
    "reliability/confident/var_wrong": "σ² wrong",
    "reliability/confident/var_right": "σ² right",
    "reliability/anchors/grad_wrong": "∂Lc/∂σ² wrong anchors",
    "reliability/anchors/grad_right": "∂Lc/∂σ² right anchors",
    "contrastive/vn_spread": "VN spread (per-pixel std; min over the run)",
}


def _reliability_summary(run: Path) -> dict[str, float]:
    """Means of RELIABILITY_COLUMNS over the diagnostics of the second half of training (the VN spread: its min)."""
    path = run / "train_log.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    late = [r for r in records if "grad/sup" in r and r["iteration"] > records[-1]["iteration"] / 2]
    out = {k: statistics.mean(r[k] for r in late if k in r) for k in RELIABILITY_COLUMNS
           if k != "contrastive/vn_spread" and any(k in r for r in late)}
    spread = [r["contrastive/vn_spread"] for r in records if "contrastive/vn_spread" in r]
    if any(spread):  # 0 throughout: a run without VNs
        out["contrastive/vn_spread"] = min(spread)
    return out


def reliability_table(exps: list[Experiment], seeds: list[int], args: argparse.Namespace) -> list[str]:
    lines = [f"## {TITLES[exps[0].table]}", "", "Reliability diagnostics (`train_log.jsonl`, `prcl.engine.reliability`): "
             "mean over the diagnostics of the second half of training and over seeds; ∂Lc/∂σ² < 0 means the "
             "contrast raises σ² there.", "",
             "| row | labels | mIoU (%) | " + " | ".join(RELIABILITY_COLUMNS.values()) + " | runs |",
             "| --- " * (4 + len(RELIABILITY_COLUMNS)) + "|"]
    for e in exps:
        row_seeds = e.seeds or seeds
        mious, cols = [], {k: [] for k in RELIABILITY_COLUMNS}
        for s in row_seeds:
            run = args.runs / f"{e.name}-s{s}"
            if (run / "summary.json").is_file():
                mious.append(json.loads((run / "summary.json").read_text())["miou"])
                for k, v in _reliability_summary(run).items():
                    cols[k].append(v)
        lines.append(f"| {e.row} | {e.fraction} | {_fmt(mious)} | "
                     + " | ".join(_fmt(cols[k], 1, 3) for k in RELIABILITY_COLUMNS) + f" | {len(mious)}/{len(row_seeds)} |")
    return lines + [""]


def _seed_mious(e: Experiment, seeds: list[int], args: argparse.Namespace) -> list[float]:
    runs = (args.runs / f"{e.name}-s{s}" / "summary.json" for s in (e.seeds or seeds))
    return [json.loads(p.read_text())["miou"] for p in runs if p.is_file()]


def noise_summary(exps: list[Experiment], seeds: list[int], args: argparse.Namespace) -> list[str]:
    """Table 19's robustness reading: mIoU against the noise level p, one line per method, and the drop from
    p = 0; also drawn as `<out>.png` (mean ± sample std over seeds)."""
    by_row: dict[str, dict[float, list[float]]] = {}
    for e in exps:
        row, level = e.row.rsplit(", p=", 1)
        by_row.setdefault(row, {})[float(level)] = [100 * m for m in _seed_mious(e, seeds, args)]
    levels = sorted({p for r in by_row.values() for p in r})
    lines = ["### mIoU against pseudo-label noise p", "",
             "| method | " + " | ".join(f"p = {p:g}" for p in levels) + f" | drop at p = {levels[-1]:g} |",
             "| --- " * (len(levels) + 2) + "|"]
    for row, cells in by_row.items():
        means = {p: statistics.mean(v) for p, v in cells.items() if v}
        drop = f"{means[levels[-1]] - means[levels[0]]:+.2f}" if levels[0] in means and levels[-1] in means else "–"
        lines.append(f"| {row} | " + " | ".join(_fmt(cells.get(p, []), 1) for p in levels) + f" | {drop} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (row, cells) in enumerate(by_row.items()):
        ps = [p for p in levels if cells.get(p)]
        if ps:
            means = [statistics.mean(cells[p]) for p in ps]
            errs = [statistics.stdev(cells[p]) if len(cells[p]) > 1 else 0.0 for p in ps]
            ax.errorbar([p + 0.004 * (i - 1.5) for p in ps], means, yerr=errs, marker="o", capsize=3, label=row)
    ax.set(xlabel="pseudo-label noise p (fraction of confident labels flipped)", ylabel="val mIoU (%)",
           xticks=levels)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return lines + ["", f"![mIoU against p]({args.out.with_suffix('.png').name})", ""]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-a of two score lists over the same items: (concordant − discordant pairs) / all pairs."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    sign = [(a[i] - a[j]) * (b[i] - b[j]) for i, j in pairs]
    return (sum(x > 0 for x in sign) - sum(x < 0 for x in sign)) / len(pairs)


def ranking_summary(exps: list[Experiment], seeds: list[int], args: argparse.Namespace) -> list[str]:
    """The miniature's order of the methods that have a published VOC-92 number, against that number
    (PUBLISHED_VOC92): Kendall's τ over all of them and over the strong baselines (FixMatch, UniMatch, V2);
    again with the rows that keep the mean-teacher family's EMA (WITHOUT_HORIZON) in place of theirs."""
    rows = {e.row: 100 * statistics.mean(v) for e in exps if (v := _seed_mious(e, seeds, args))}
    means = {m: rows[m] for m in PUBLISHED_VOC92 if m in rows}
    if len(means) < 2:
        return []
    lines = ["### The miniature's ranking against the published one (VOC classic, 92 labels)", "",
             "| method | miniature (mean) | published VOC-92 |", "| --- | --- | --- |"]
    lines += [f"| {m} | {means[m]:.2f} | {PUBLISHED_VOC92[m]:.2f} |" for m in sorted(means, key=means.get)]
    variants = {"every rule": means,
                "the mean-teacher family without the horizon rule": {
                    m: rows.get(f"{m}{WITHOUT_HORIZON}", v) for m, v in means.items()}}
    lines.append("")
    for label, scores in variants.items():
        methods = list(scores)
        tau = kendall_tau([scores[m] for m in methods], [PUBLISHED_VOC92[m] for m in methods])
        strong = [m for m in ("fixmatch", "unimatch", "unimatch_v2") if m in scores]
        tau_strong = kendall_tau([scores[m] for m in strong], [PUBLISHED_VOC92[m] for m in strong]) \
            if len(strong) > 1 else float("nan")
        lines.append(f"- {label}: Kendall's τ over {len(methods)} methods **{tau:+.2f}**, over the strong baselines "
                     f"({', '.join(strong)}) **{tau_strong:+.2f}** (1 = the published order)")
    return lines + [""]


def _shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def write_table(exps: list[Experiment], seeds: list[int], args: argparse.Namespace, command: str) -> None:
    lines = [f"# {args.title}", "",
             f"Command: `{command}`", "",
             f"Each run: {args.iterations} iterations, one CPU thread, demo model and data settings "
             f"(see `configs/demo.yaml`); mIoU of the teacher (or student) on the 300 val images at the end; "
             f"mean ± sample std over seeds {seeds}. Runs in `{_shown(args.runs)}`. Labels: 1_64 = 31, 1_16 = 125, "
             "full = 2000 labeled images (the rest of the 2000-image pool unlabeled)."
             + (" Tables 8, 7 and the τ sweep at the first fraction only." if len(args.fractions) > 1 else ""), ""]
    notes = args.out.with_suffix(".notes.md")  # hand-written reading of the numbers, kept across rewrites
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    for table in dict.fromkeys(e.table for e in exps):
        if table in ("4", "sigma"):
            lines += representation_table([x for x in exps if x.table == table], seeds, args)
            continue
        if table == "13":
            lines += gradient_table([x for x in exps if x.table == table], seeds, args)
            continue
        if table in ("19", "19r", "19a", "lambda"):
            lines += reliability_table([x for x in exps if x.table == table], seeds, args)
            if table != "lambda":  # the noise tables also read mIoU against p
                lines += noise_summary([x for x in exps if x.table == table], seeds, args)
            continue
        lines += [f"## {TITLES[table]}", "", "| row | labels | mIoU (%) | student / teacher (%) | runs | s / iteration "
                  "| method state |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for e in (x for x in exps if x.table == table):
            mious, by_model, secs, state = [], {}, [], None
            row_seeds = e.seeds or seeds
            for s in row_seeds:
                run = args.runs / f"{e.name}-s{s}"
                if (run / "summary.json").is_file():
                    summ = json.loads((run / "summary.json").read_text())
                    mious.append(summ["miou"])
                    for model, miou in summ.get("miou_by_model", {}).items():
                        by_model.setdefault(model, []).append(miou)
                    secs.append(summ["wall_seconds"] / summ["iterations"])
                    state = method_state_bytes(run)
            sec = f"{statistics.mean(secs):.3f}" if secs else "–"
            mem = "–" if state is None else f"{state / 1024:.1f} KiB"
            both = (f"{_fmt(by_model['student'])} / {_fmt(by_model['teacher'])}" if "teacher" in by_model else "–")
            lines.append(f"| {e.row} | {e.fraction} | {_fmt(mious)} | {both} | {len(mious)}/{len(row_seeds)} | {sec} "
                         f"| {mem} |")
        lines.append("")
        if table == "27r":
            lines += ranking_summary([x for x in exps if x.table == table], seeds, args)
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
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.dataset == "photos":  # the second benchmark (`prcl data photos`), generated once
        if not (args.data / "meta.json").is_file():
            from prcl.data.photos import generate_photo_dataset

            generate_photo_dataset(args.data)
    else:
        from prcl.data.synthetic import ensure_synthetic_dataset

        ensure_synthetic_dataset(args.data, workers=args.jobs)  # once, before parallel runs race to do it
    exps = experiments(args.tables, args.fractions, args.temperatures, args.tau_seeds)
    runs: dict[tuple[str, int], Experiment] = {}  # a run shared by tables is trained once
    for s in args.seeds:  # seed-major: every row gets a first seed early
        for e in exps:
            if s in (e.seeds or args.seeds) and (
                    args.only is None or any(fnmatch.fnmatch(e.name, pat) or fnmatch.fnmatch(f"{e.name}-s{s}", pat)
                                             for pat in args.only)):
                runs.setdefault((e.name, s), e)
    jobs = [(e, s) for (_, s), e in runs.items()]
    write_table(exps, args.seeds, args, command)
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        analyzed = {e.name for e in exps if e.table in ("4", "sigma")}
        futures = {pool.submit(run_one, e, s, args, e.name in analyzed): (e, s) for e, s in jobs}
        for fut in as_completed(futures):
            e, s = futures[fut]
            try:
                fut.result()
                print(f"[{time.time() - t0:7.0f}s] done {e.name} seed {s}", flush=True)
            except Exception as err:  # keep the other runs going; the table shows what finished
                print(f"[{time.time() - t0:7.0f}s] FAILED {e.name} seed {s}: {err}", flush=True)
            write_table(exps, args.seeds, args, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
