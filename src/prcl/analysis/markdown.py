"""`report.md` of `prcl analyze`: one page that states the numbers and embeds every figure."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prcl.analysis.collect import SIGMA_AUROCS

SECTIONS = (
    ("curves", "Training curves",
     "Losses, learning rate, λc(t) (Eq. 12), val mIoU, contrastive statistics (log scale) and the per-class "
     "IoU of the last evaluation, from `train_log.jsonl` and `metrics.jsonl`."),
    ("class_balance", "Class balance of the pseudo-labels",
     "Per class: the labeler's mean probability against the labeled share (a class below the dotted line in "
     "the second half of training is shrinking, and the run warned), the share of confident pseudo-labels "
     "against the labeled share (below its line a class is starved: `threshold=adaptive` lowers its threshold), "
     "and, where the unlabeled images have masks, the recall and precision of the confident pseudo-labels. See "
     "docs/class-balance.md for what to do about a shrinking class."),
    ("predictions", "Predictions (Figs. 4-5)",
     "Image | ground truth | prediction of the evaluated network (the teacher when the method has one)."),
    ("tsne", "Representations, t-SNE (Fig. 6)",
     "Pixel representations of val images (the student's, stride 4) coloured by ground-truth class; ★ = the "
     "prototypes of the checkpoint (GDP or EMA; class means of the sample for methods without). One t-SNE per "
     "run, shared with the virtual negatives below."),
    ("virtual_negatives", "Virtual negatives (Fig. 9)",
     "Virtual negatives (Eq. 10, ▲) drawn from the GDP of the last checkpoint (★) for two virtual radii β, "
     "embedded in the same t-SNE as the pixels (faded). The title gives their mean distance to the GDP mean "
     "in the space the loss sees."),
    ("probability_maps", "Probability maps (Fig. 7)",
     "Image | ground truth | pseudo-label | σ² of the student's probability head, averaged over the D dims and "
     "ℓ1-normalised over the image and scaled so its mean is 1 (red = large σ², i.e. low probability)."),
    ("prototype_trajectories", "Prototype trajectories (Fig. 8)",
     "Logged prototype positions over training, all kinds projected by one PCA; ○ first, ★ last position. "
     "'mean step' = mean L2 distance between consecutive logged positions of a class (D-dim space)."),
)


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _summary_table(runs: list[dict]) -> list[str]:
    lines = ["| run | method | iteration | mIoU (last) | mIoU (best) | feature | Silhouette ↑ | DBI ↓ |"
             " σ² wrong / correct | " + " | ".join(f"AUROC(σ² → wrong), {v}" for v in SIGMA_AUROCS.values()) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(SIGMA_AUROCS)]
    for m in runs:
        rep, unc = m["representation"], m.get("uncertainty") or {}
        lines.append(
            f"| {m['label']} | {m['method']} | {m['iteration']} | {_pct(m['miou'])} | {_pct(m['best_miou'])} | "
            f"{rep['feature']} | {_fmt(rep.get('silhouette'))} | {_fmt(rep.get('davies_bouldin'))} | "
            f"{_fmt(unc.get('ratio_wrong_to_correct'), '.2f')} | "
            + " | ".join(_fmt(unc.get(k)) for k in SIGMA_AUROCS) + " |")
    return lines


def _details(runs: list[dict]) -> list[str]:
    lines = []
    for m in runs:
        rep = m["representation"]
        lines.append(f"- **{m['label']}** ({m['run']}): Silhouette/DBI of the student's {rep['feature']} "
                     f"(D = {rep['dim']}{', L2-normalised' if rep['l2_normalized'] else ''}) on "
                     f"{rep.get('num_samples', 0)} stride-4 pixels of {rep['num_images']} val images, at most "
                     f"{rep['max_per_class']} per class (uniform, seeded), labels = ground truth downsampled "
                     "with nearest, 255 ignored.")
        if rep.get("note"):
            lines.append(f"  {rep['note']}.")
        unc = m.get("uncertainty")
        if unc:
            lines.append(f"  **σ² flags wrong pseudo-labels within a class: AUROC "
                         f"{_fmt(unc.get('auroc_var_detects_wrong_within_class'))}** (val, teacher predictions, mean "
                         "over ground-truth classes; 0.5 = no signal; the all-pixel AUROC below mostly measures "
                         "which class a pixel belongs to).")
            lines.append(f"  Mean σ² on wrongly pseudo-labeled pixels {_fmt(unc['mean_var_wrong'], '.4g')} vs "
                         f"correctly {_fmt(unc['mean_var_correct'], '.4g')} ({unc['pixels_wrong']} / "
                         f"{unc['pixels_correct']} pixels); AUROC of σ² as a detector of wrong pseudo-labels "
                         f"{_fmt(unc['auroc_var_detects_wrong'])}; among pixels with confidence ≥ δw (those "
                         f"the contrastive loss takes from unlabeled images) "
                         f"{_fmt(unc.get('auroc_var_detects_wrong_confident'))}; within each ground-truth class "
                         f"(mean) {_fmt(unc.get('auroc_var_detects_wrong_within_class'))}.")
        vn = m.get("virtual_negatives")
        if vn:
            spread = ", ".join(f"β = {b}: {d:.3g}" for b, d in vn["mean_distance_to_gdp"].items())
            lines.append(f"  Virtual negatives ({vn['scale']} scale): mean distance to their GDP mean {spread}.")
        if m.get("prototype_drift"):
            drift = ", ".join(f"{k}: {_fmt(v, '.3g')}" for k, v in m["prototype_drift"].items())
            lines.append(f"  Prototype drift (mean step between logged positions): {drift}.")
    return lines


def _class_balance_table(runs: list[dict]) -> list[str]:
    """Per run and class: labeled and confident shares (%), ratio, recall and precision; then the warnings."""
    lines = []
    for m in runs:
        balance = m.get("class_balance")
        if not balance:
            continue
        lines += [f"**{m['label']}**, class balance of the pseudo-labels at iteration {balance['iteration']}:", "",
                  "| class | labeled share (%) | mean probability (%) | ratio | shrinking | confident share (%) | "
                  "ratio | starved | recall | precision |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in balance["classes"].items():
            lines.append(f"| {name} | {_pct(row['labeled_share'])} | {_pct(row['mean_prediction'])} | "
                         f"{_fmt(row['prediction_ratio'], '.2f')} | {_yes(row['shrinking'])} | "
                         f"{_pct(row['confident_share'])} | {_fmt(row['ratio'], '.2f')} | {_yes(row['starved'])} | "
                         f"{_fmt(row['recall'], '.2f')} | {_fmt(row['precision'], '.2f')} |")
        lines += [""] + [f"- warning: {w}" for w in balance["warnings"]] + ([""] if balance["warnings"] else [])
    return lines


def _yes(flag: Optional[float]) -> str:
    return "n/a" if flag is None else "yes" if flag else "no"


def write_report(result: dict, path: Path) -> Path:
    """Write the markdown report of an `analyze_run` result; figures are linked by file name."""
    runs = result["runs"]
    lines = [f"# Analysis: {' vs '.join(m['label'] for m in runs)}", "",
             f"Written by `prcl analyze` (seed {result['seed']}). Numbers are also in `metrics.json`.", "",
             "## Summary (Table 4 and Fig. 7 numbers)", "", *_summary_table(runs), "", *_details(runs), "",
             *_class_balance_table(runs)]
    figures = {name: Path(p).name for name, p in result["figures"].items()}
    for key, title, caption in SECTIONS:
        names = sorted(n for n in figures if n == key or n.startswith(key + "_"))
        if not names:
            continue
        lines += [f"## {title}", "", caption, ""]
        for n in names:
            if n != key:  # a per-run figure of a comparison: `<key>_a` is the first run, `_b` the second
                lines += [f"*{runs['ab'.index(n[-1])]['label']}*", ""]
            lines += [f"![{n}]({figures[n]})", ""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    path.write_text("\n".join(lines))
    return path
