"""The sections of `paper_tables.py`'s markdown, one function per kind of table (`SECTIONS`, named by each
catalogue table's `sections`): mIoU and cost per row, representation quality, gradient and reliability
diagnostics, mIoU against pseudo-label noise (with its curve), and the ranking against published numbers.
Numbers come from the runs' files through `prcl.compare`'s reading and formatting (mean ± sample std)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from paper_catalogue import PUBLISHED_VOC92, WITHOUT_HORIZON, Experiment
from paper_diagnostics import (RELIABILITY_COLUMNS, gradient_summary, method_state_bytes, read_analysis,
                               reliability_summary)

from prcl.analysis.collect import SIGMA_AUROCS
from prcl.compare.plot import errorbar_plot
from prcl.compare.report import markdown_table
from prcl.compare.runs import read_summary
from prcl.compare.stats import format_mean_std as _fmt


@dataclass
class Context:
    """Where a report reads its runs (`runs/<experiment>-s<seed>`) and writes (`out`, and `out`.png)."""

    runs: Path
    out: Path
    seeds: list[int]
    titles: dict[str, str]  # table id -> title

    def run(self, e: Experiment, seed: int) -> Path:
        return self.runs / f"{e.name}-s{seed}"

    def row_seeds(self, e: Experiment) -> list[int]:
        return e.seeds or self.seeds

    def mious(self, e: Experiment) -> list[float]:
        """The finished runs' mIoU (fractions) over the row's seeds."""
        summaries = (read_summary(self.run(e, s)) for s in self.row_seeds(e))
        return [summ["miou"] for summ in summaries if summ is not None]


def methods_table(exps: list[Experiment], ctx: Context) -> list[str]:
    """mIoU, both models' mIoU where there is a teacher, seconds per iteration and the method state's size."""
    rows = []
    for e in exps:
        mious, by_model, secs, state = [], {}, [], None
        for s in ctx.row_seeds(e):
            summ = read_summary(ctx.run(e, s))
            if summ is not None:
                mious.append(summ["miou"])
                for model, miou in summ.get("miou_by_model", {}).items():
                    by_model.setdefault(model, []).append(miou)
                secs.append(summ["wall_seconds"] / summ["iterations"])
                state = method_state_bytes(ctx.run(e, s))
        sec = f"{statistics.mean(secs):.3f}" if secs else "–"
        mem = "–" if state is None else f"{state / 1024:.1f} KiB"
        both = f"{_fmt(by_model['student'])} / {_fmt(by_model['teacher'])}" if "teacher" in by_model else "–"
        rows.append([e.row, e.fraction, _fmt(mious), both, f"{len(mious)}/{len(ctx.row_seeds(e))}", sec, mem])
    header = ["row", "labels", "mIoU (%)", "student / teacher (%)", "runs", "s / iteration", "method state"]
    return [f"## {ctx.titles[exps[0].table]}", "", *markdown_table(header, rows), ""]


def representation_table(exps: list[Experiment], ctx: Context) -> list[str]:
    """From `prcl analyze` of each run: Silhouette (higher = better separated) and Davies-Bouldin (lower =
    better) of the val representations (student μ, or the fused feature for methods without a head), the
    mIoU, and how well σ² flags wrong pseudo-labels (AUROC; 0.5 = not at all; Fig. 7's claim is > 0.5), over all
    labeled pixels, over those with confidence ≥ δw (the ones the contrastive loss uses), and within each
    ground-truth class (mean; 0.5 when σ² only tells background from objects)."""
    rows = []
    for e in exps:
        cols: dict[str, list[float]] = {k: [] for k in ("sil", "dbi", "miou", "ratio_wrong_to_correct", *SIGMA_AUROCS)}
        feature = "–"
        for s in ctx.row_seeds(e):
            run = read_analysis(ctx.run(e, s))
            if run is not None:
                rep, unc = run["representation"], run.get("uncertainty") or {}
                cols["sil"].append(rep["silhouette"])
                cols["dbi"].append(rep["davies_bouldin"])
                cols["miou"].append(run["miou"])
                for key in ("ratio_wrong_to_correct", *SIGMA_AUROCS):
                    if unc.get(key) is not None:
                        cols[key].append(unc[key])
                feature = f"{rep['feature']} ({rep['dim']}-d)"
        uncertainty = [_fmt(cols[k], 1, 3) for k in ("ratio_wrong_to_correct", *SIGMA_AUROCS)]
        rows.append([e.row, e.fraction, feature, _fmt(cols["sil"], 1, 3), _fmt(cols["dbi"], 1, 3), _fmt(cols["miou"]),
                     *uncertainty, f"{len(cols['sil'])}/{len(ctx.row_seeds(e))}"])
    header = ["row", "labels", "feature", "Silhouette ↑", "Davies–Bouldin ↓", "mIoU (%)", "σ² wrong / correct",
              *(f"AUROC σ² flags wrong, {v}" for v in SIGMA_AUROCS.values()), "runs"]
    return [f"## {ctx.titles[exps[0].table]}", "", *markdown_table(header, rows), ""]


def gradient_table(exps: list[Experiment], ctx: Context) -> list[str]:
    """mIoU and the gradient diagnostics of each row (`gradient_summary`), the μ gradient relative to the
    row named "baseline (cosine)" of the same seeds."""
    intro = ("Gradients: mean over the diagnostics (every 100 iterations) of the first half of training. μ vs "
             "Baseline: the contrastive trunk gradient through μ with λc(t) divided out, relative to the cosine "
             "Baseline's (the issue's target band: 0.5–2×). μ share: of the contrastive term's trunk gradient. "
             "Lc / log(keys): 1 = flat (uniform logits), 0 = saturated.")
    summaries = {(e.row, s): gradient_summary(ctx.run(e, s)) for e in exps for s in ctx.row_seeds(e)}
    rows = []
    for e in exps:
        cols: dict[str, list[float]] = {k: [] for k in ("ratio", "share", "rel", "var", "sat")}
        for s in ctx.row_seeds(e):
            g, base = summaries[(e.row, s)], summaries.get(("baseline (cosine)", s))
            if g is not None:
                for k in ("share", "rel", "var", "sat"):
                    cols[k].append(g[k])
                if base is not None:
                    cols["ratio"].append(g["mu"] / base["mu"])
        mious = ctx.mious(e)
        rows.append([e.row, e.fraction, _fmt(mious), _fmt(cols["ratio"], 1, 2), _fmt(cols["share"], 100, 0, "%"),
                     _fmt(cols["rel"], 1, 3), _fmt(cols["var"], 1, 3) if e.row.startswith("prcl") else "–",
                     _fmt(cols["sat"], 1, 2), f"{len(mious)}/{len(ctx.row_seeds(e))}"])
    header = ["row", "labels", "mIoU (%)", "μ vs Baseline", "μ share", "‖∂Lc‖ / ‖∂Ls‖ at the trunk", "mean σ² (end)",
              "Lc / log(keys) (end)", "runs"]
    return [f"## {ctx.titles[exps[0].table]}", "", intro, "", *markdown_table(header, rows), ""]


def reliability_table(exps: list[Experiment], ctx: Context) -> list[str]:
    """mIoU and `reliability_summary` of each row, mean over seeds."""
    intro = ("Reliability diagnostics (`train_log.jsonl`, `prcl.engine.reliability`): mean over the diagnostics of "
             "the second half of training and over seeds; ∂Lc/∂σ² < 0 means the contrast raises σ² there.")
    rows = []
    for e in exps:
        mious, cols = [], {k: [] for k in RELIABILITY_COLUMNS}
        for s in ctx.row_seeds(e):
            summ = read_summary(ctx.run(e, s))
            if summ is not None:
                mious.append(summ["miou"])
                for k, v in reliability_summary(ctx.run(e, s)).items():
                    cols[k].append(v)
        rows.append([e.row, e.fraction, _fmt(mious), *(_fmt(cols[k], 1, 3) for k in RELIABILITY_COLUMNS),
                     f"{len(mious)}/{len(ctx.row_seeds(e))}"])
    header = ["row", "labels", "mIoU (%)", *RELIABILITY_COLUMNS.values(), "runs"]
    return [f"## {ctx.titles[exps[0].table]}", "", intro, "", *markdown_table(header, rows), ""]


def noise_summary(exps: list[Experiment], ctx: Context) -> list[str]:
    """The robustness reading: mIoU against the noise level p, one line per method, and the drop from p = 0;
    also drawn as `<out>.png` (mean ± sample std over seeds)."""
    by_row: dict[str, dict[float, list[float]]] = {}
    for e in exps:
        row, level = e.row.rsplit(", p=", 1)
        by_row.setdefault(row, {})[float(level)] = [100 * m for m in ctx.mious(e)]
    levels = sorted({p for r in by_row.values() for p in r})
    rows = []
    for row, cells in by_row.items():
        means = {p: statistics.mean(v) for p, v in cells.items() if v}
        drop = f"{means[levels[-1]] - means[levels[0]]:+.2f}" if levels[0] in means and levels[-1] in means else "–"
        rows.append([row, *(_fmt(cells.get(p, []), 1) for p in levels), drop])
    header = ["method", *(f"p = {p:g}" for p in levels), f"drop at p = {levels[-1]:g}"]
    png = ctx.out.with_suffix(".png")
    errorbar_plot(by_row, png, "pseudo-label noise p (fraction of confident labels flipped)", "val mIoU (%)",
                  xticks=levels, jitter=0.004)
    return ["### mIoU against pseudo-label noise p", "", *markdown_table(header, rows), "",
            f"![mIoU against p]({png.name})", ""]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-a of two score lists over the same items: (concordant − discordant pairs) / all pairs."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    sign = [(a[i] - a[j]) * (b[i] - b[j]) for i, j in pairs]
    return (sum(x > 0 for x in sign) - sum(x < 0 for x in sign)) / len(pairs)


def ranking_summary(exps: list[Experiment], ctx: Context) -> list[str]:
    """The miniature's order of the methods that have a published VOC-92 number, against that number
    (PUBLISHED_VOC92): Kendall's τ over all of them and over the strong baselines (FixMatch, UniMatch, V2);
    again with the rows that keep the mean-teacher family's EMA (WITHOUT_HORIZON) in place of theirs."""
    rows = {e.row: 100 * statistics.mean(v) for e in exps if (v := ctx.mious(e))}
    means = {m: rows[m] for m in PUBLISHED_VOC92 if m in rows}
    if len(means) < 2:
        return []
    order = sorted(means, key=means.get)
    lines = ["### The miniature's ranking against the published one (VOC classic, 92 labels)", "",
             *markdown_table(["method", "miniature (mean)", "published VOC-92"],
                             [[m, f"{means[m]:.2f}", f"{PUBLISHED_VOC92[m]:.2f}"] for m in order]), ""]
    variants = {"every rule": means,
                "the mean-teacher family without the horizon rule": {
                    m: rows.get(f"{m}{WITHOUT_HORIZON}", v) for m, v in means.items()}}
    for label, scores in variants.items():
        methods = list(scores)
        tau = kendall_tau([scores[m] for m in methods], [PUBLISHED_VOC92[m] for m in methods])
        strong = [m for m in ("fixmatch", "unimatch", "unimatch_v2") if m in scores]
        tau_strong = kendall_tau([scores[m] for m in strong], [PUBLISHED_VOC92[m] for m in strong]) \
            if len(strong) > 1 else float("nan")
        lines.append(f"- {label}: Kendall's τ over {len(methods)} methods **{tau:+.2f}**, over the strong baselines "
                     f"({', '.join(strong)}) **{tau_strong:+.2f}** (1 = the published order)")
    return lines + [""]


Section = Callable[[list[Experiment], Context], list[str]]
SECTIONS: dict[str, Section] = {"methods": methods_table, "representation": representation_table,
                                "gradients": gradient_table, "reliability": reliability_table,
                                "noise": noise_summary, "ranking": ranking_summary}
