"""The catalogue of `paper_tables.py`: the paper's tables and the project's studies as data.

A `PaperTable` has an id for `--tables` (the paper's table number or the study's short id, kept from the
commands recorded in `benchmarks/results/`), a name that says what it shows (also accepted by `--tables`),
a title, the report sections that write it, and rows: `Row(name, overrides)`, each trained at every label
fraction of the command (or only at the first / last one, or at a fixed one such as `full`). A run is named
by its settings, not its table (`Experiment.name`), so a run that serves several tables is trained once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from prcl.config import Config
from prcl.methods import METHODS

SUPERVISED = ("method.name=supervised",)
TABLE1_METHODS = ("supervised", "mean_teacher", "classmix", "baseline", "baseline_plus", "prcl")
STRONG_BASELINE_METHODS = ("supervised", "classmix", "prcl", "fixmatch", "unimatch", "unimatch_prcl", "unimatch_v2",
                           "unimatch_v2_prcl")  # the first 3 = Table 1's runs
SPREAD_VNS = ["method.contrastive.vn.source=empirical", "method.contrastive.vn.scale=std"]
RELIABLE_PRCL = ["method.name=prcl", "model.prob_final_norm=false", "optim.prob_head_lr_scale=0.2", *SPREAD_VNS]
"""PRCL with the σ² options of issue #19: σ² head without the final BatchNorm at lr·T ≈ the paper's, VNs drawn
from the class's empirical spread."""
SPREAD_VN_PRCL = ["method.name=prcl", *SPREAD_VNS]
"""PRCL with the VN fix of issue #19 alone: VNs drawn from the class's empirical spread, the paper's σ² head."""
NOISE_ROWS = {"baseline": ["method.name=baseline"], "baseline_plus": ["method.name=baseline_plus"],
              "prcl": ["method.name=prcl"], "prcl, VN spread": SPREAD_VN_PRCL,
              "prcl, σ² free + VN spread": RELIABLE_PRCL}
NOISE_LEVELS = (0.0, 0.2, 0.4)
RUNNER_UP_NOISE_ROWS = ("baseline", "baseline_plus", "prcl")  # their p = 0 runs are the uniform-noise table's
RUNNER_UP_NOISE_LEVELS = (0.0, 0.4)  # p = 0.2 not run: the session's CPU time went to more seeds at 0.4
RUNNER_UP = ["method.pseudo_label_noise_kind=runner_up"]
CONTRAST_VARIANTS = {  # the candidates for PRCL's default contrast, with the references they are judged by
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
    "prcl, form=paper": (0,),  # the literal form diverges (Lc overflows by iteration 7)
    "prcl, form=release": (0,),  # τ = 100: inert
    "prcl, form=release, τ=0.5 (the default before #13)": (0,),  # its 3 seeds: results/archive/paper_tables_release.md
    "prcl, form=predictive, var_grad=head": (0,),
}
LAMBDA_ROWS = {  # ClassMix and the contrasts on it at the default λc0 = 1; PRCL also at a lower one
    "supervised": ["method.name=supervised"], "classmix": ["method.name=classmix"],
    "baseline": ["method.name=baseline"], "prcl": ["method.name=prcl"],
    "prcl, λc0=0.25": ["method.name=prcl", "method.contrastive.lambda0=0.25"],
}
COMPONENT_ROWS = {  # Table 8: PRCL's components added one by one to the cosine Baseline
    "baseline": ["method.name=baseline"],
    "+PR": ["method.name=baseline", "method.contrastive.pr=true"],
    "+PR+GDP": ["method.name=prcl", "method.contrastive.vn.enabled=false"],
    "+PR+VN": ["method.name=prcl", "method.contrastive.prototype=local"],
    "+PR+GDP+VN": ["method.name=prcl"],
}
ABLATION_NOISE_ROWS = {  # Table 8's rows (and Baseline+, memory without PR) under class-dependent noise
    "baseline": ["method.name=baseline"], "+PR": ["method.name=baseline", "method.contrastive.pr=true"],
    "+PR+GDP": ["method.name=prcl", "method.contrastive.vn.enabled=false"], "prcl": ["method.name=prcl"],
    "baseline_plus": ["method.name=baseline_plus"]}
EXTRA_NEGATIVE_ROWS = {  # Table 7: no extra negatives, a memory bank, virtual negatives
    "none": ["method.name=prcl", "method.contrastive.vn.enabled=false"],
    "memory bank 30000": ["method.name=prcl", "method.contrastive.vn.enabled=false",
                          "method.contrastive.memory_bank.enabled=true", "method.contrastive.memory_bank.size=30000"],
    "VN": ["method.name=prcl"],
}

# The rules that carry each authors' recipe into the miniature (400 iterations of a small model on the built-in
# set). Each is a scale-down rule or the authors' own setting, stated once here and in docs/reproduce.md; none
# is chosen by its val score.
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
RULE_ROWS = {  # each rule on its own (the row without a rule is the plain method)
    "classmix": ("EMA horizon", "colour jitter 0.8"), "fixmatch": ("lr ÷ loss scale",),
    "unimatch": ("lr ÷ loss scale",),
    "unimatch_v2": ("EMA horizon", "lr ÷ loss scale", "colour jitter 0.8"),
}
PER_LEVEL_MASKS = ["model.complementary_mask=per_level"]  # UniMatch V2's masks before issue #27 (shared: its code)
WITHOUT_HORIZON = ", teacher EMA 0.99 (no horizon rule)"


def recipe_overrides(method: str) -> list[str]:
    """`method.name` and every rule of RECIPE_RULES that applies to it."""
    return [f"method.name={method}", *(o for rule in RECIPE_RULES.values() for o in rule(method))]


PUBLISHED_VOC92 = {  # mIoU at 92 VOC labels, each from its authors' paper (Kendall's τ of the recipes table)
    "supervised": 52.38,  # PRCL paper, Table 1 (UniMatch's SupBaseline: 45.1)
    "classmix": 63.83,  # PRCL paper, Table 1
    "fixmatch": 63.9,  # UniMatch paper, Table 1 (its re-implementation)
    "prcl": 70.23,  # PRCL paper, Table 1
    "unimatch": 75.2,  # UniMatch README (ResNet-101)
    "unimatch_v2": 86.3,  # UniMatch V2 README (DINOv2-B)
}


@dataclass(frozen=True)
class Row:
    """One row of a table: what it shows (its first column) and the `prcl train` overrides of its runs."""

    name: str
    overrides: Sequence[str]
    seeds: Optional[Sequence[int]] = None  # None: the command's --seeds
    at: str = "each"  # the command's label fractions it runs at: each | first | last
    fraction: Optional[str] = None  # a fixed label fraction (e.g. full) instead of the command's


@dataclass(frozen=True)
class PaperTable:
    id: str  # for --tables, as the recorded commands name it
    name: str  # what it shows, also accepted by --tables
    title: str
    rows: tuple[Row, ...]
    sections: tuple[str, ...] = ("methods",)  # the report sections that write it (paper_sections.SECTIONS)
    first_fraction_only: bool = False  # the ablations run at the command's first fraction only
    analyze: bool = False  # `prcl analyze` each run (representation quality)


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


def _rows(rows: dict[str, list[str]], **kwargs) -> tuple[Row, ...]:
    return tuple(Row(name, overrides, **kwargs) for name, overrides in rows.items())


def _method_rows(methods: Sequence[str]) -> tuple[Row, ...]:
    return tuple(Row(m, [f"method.name={m}"]) for m in methods)


def _noise_rows(rows: dict[str, list[str]], levels: Sequence[float], kind: Sequence[str] = ()) -> tuple[Row, ...]:
    """Each row at each pseudo-label noise level p (level-major); p = 0 is the row's plain run."""
    return tuple(Row(f"{row}, p={p:g}", overrides + ([f"method.pseudo_label_noise={p}", *kind] if p else []))
                 for p in levels for row, overrides in rows.items())


def _rule_rows() -> tuple[Row, ...]:
    """Each recipe rule on its own, beside its method as it was (UniMatch V2 also with its old masks)."""
    out = []
    for method, rules in RULE_ROWS.items():
        plain = [f"method.name={method}"] + (PER_LEVEL_MASKS if method == "unimatch_v2" else [])
        out.append(Row(method + (", per-level masks (before)" if method == "unimatch_v2" else ""), plain))
        if method == "unimatch_v2":
            out.append(Row(f"{method}, shared masks (its code)", [f"method.name={method}"]))
        out += [Row(f"{method}, {rule}", plain + RECIPE_RULES[rule](method)) for rule in rules]
    return tuple(out)


def _recipe_rows() -> tuple[Row, ...]:
    """Every method with its authors' recipe carried by the rules; the mean-teacher family also with the teacher
    of the default job (no horizon rule)."""
    rows = [Row(m, recipe_overrides(m)) for m in STRONG_BASELINE_METHODS]
    rows += [Row(f"{m}{WITHOUT_HORIZON}", [o for o in recipe_overrides(m) if not o.startswith("method.ema_reference")])
             for m in ("classmix", "prcl")]
    return tuple(rows)


def catalogue(temperatures: Sequence[float], tau_seeds: Sequence[int]) -> tuple[PaperTable, ...]:
    """Every table, in the order the report lists them (the ablations, at the first fraction only, last)."""
    default = Config()
    sigma_lrs = (default.optim.prob_head_lr, default.optim.lr)
    return (
        PaperTable("gap", "label_headroom", "Dataset property: supervised, few vs all labels",
                   (Row("supervised", SUPERVISED), Row("supervised", SUPERVISED, at="last", fraction="full"))),
        PaperTable("1", "methods", "Table 1 — methods",
                   _method_rows(TABLE1_METHODS) + (Row("supervised", SUPERVISED, at="first", fraction="full"),)),
        PaperTable("15", "strong_baselines", "Issues #15, #21 — FixMatch, UniMatch, UniMatch V2 and PRCL's contrast "
                   "on them", _method_rows(STRONG_BASELINE_METHODS)),
        PaperTable("13", "contrast_forms", "Issue #13 — the probabilistic contrast: forms and options (gradient "
                   "diagnostics)", tuple(Row(r, o, CONTRAST_VARIANT_SEEDS.get(r)) for r, o in CONTRAST_VARIANTS.items()),
                   ("gradients",)),
        PaperTable("lambda", "contrast_weight", "Issue #19 — the contrast's weight λc0, judged on both benchmarks",
                   tuple(Row(r, o, at="first" if "λc0" in r else "each") for r, o in LAMBDA_ROWS.items()),
                   ("reliability",)),
        PaperTable("27", "recipe_rules", "Issue #27 — each rule that carries an authors' recipe into the miniature, "
                   "measured on its own", _rule_rows()),
        PaperTable("27r", "recipes", "Issue #27 — the methods with their authors' recipes carried by the rules",
                   _recipe_rows(), ("methods", "ranking")),
        PaperTable("4", "representation", "Table 4 — representation quality (prcl analyze)",
                   _method_rows(("supervised", "baseline", "prcl")), ("representation",), analyze=True),
        PaperTable("19", "pseudo_label_noise", "Issue #19 — σ² options and pseudo-label noise (reliability "
                   "diagnostics)", _noise_rows(NOISE_ROWS, NOISE_LEVELS), ("reliability", "noise"), True),
        PaperTable("19r", "runner_up_noise", "Issue #19 — class-dependent pseudo-label noise: flips to the teacher's "
                   "second choice", _noise_rows({r: NOISE_ROWS[r] for r in RUNNER_UP_NOISE_ROWS},
                                                RUNNER_UP_NOISE_LEVELS, RUNNER_UP), ("reliability", "noise"), True),
        PaperTable("19a", "noise_ablation", "Issue #27 — which part of PRCL is robust to class-dependent noise: "
                   "Table 8's rows at p = 0 and 0.4", _noise_rows(ABLATION_NOISE_ROWS, RUNNER_UP_NOISE_LEVELS,
                                                                 RUNNER_UP), ("reliability", "noise"), True),
        PaperTable("8", "prcl_components", "Table 8 — PRCL components", _rows(COMPONENT_ROWS),
                   first_fraction_only=True),
        PaperTable("7", "extra_negatives", "Table 7 — extra negatives: none / memory bank / VN",
                   _rows(EXTRA_NEGATIVE_ROWS), first_fraction_only=True),
        PaperTable("sigma", "sigma_head_lr", "σ² head learning rate",  # does the σ² head learn at this budget?
                   tuple(Row(f"prob_head_lr={lr:g}", ["method.name=prcl"] + (
                       [] if lr == default.optim.prob_head_lr else [f"optim.prob_head_lr={lr}"]), list(tau_seeds))
                         for lr in sigma_lrs), ("representation",), True, analyze=True),
        PaperTable("tau", "temperature", "Temperature sweep (chose the default τ)",
                   tuple(Row(f"tau={t:g}", ["method.name=prcl"] + (
                       [] if t == default.method.contrastive.temperature else [f"method.contrastive.temperature={t}"]),
                             list(tau_seeds)) for t in temperatures), first_fraction_only=True),
    )


def select(tables: Sequence[str], every: Sequence[PaperTable]) -> list[PaperTable]:
    """The tables named in `tables` (by id or name), in catalogue order; an unknown one is an error."""
    known = {t.id: t for t in every} | {t.name: t for t in every}
    unknown = [t for t in tables if t not in known]
    if unknown:
        choices = ", ".join(f"{t.id} ({t.name})" for t in every)
        raise SystemExit(f"paper_tables.py: unknown table(s) {', '.join(unknown)}; choose among {choices}")
    chosen = {known[t].id for t in tables}
    return [t for t in every if t.id in chosen]


def experiments(tables: Sequence[PaperTable], fractions: Sequence[str]) -> list[Experiment]:
    """Every (table, row, fraction): fraction-major, the tables in catalogue order."""
    out: list[Experiment] = []
    for frac in fractions:
        ats = {"each"} | ({"first"} if frac == fractions[0] else set()) | ({"last"} if frac == fractions[-1] else set())
        for table in tables:
            if table.first_fraction_only and frac != fractions[0]:
                continue
            out += [Experiment(table.id, row.name, row.fraction or frac, list(row.overrides),
                               list(row.seeds) if row.seeds is not None else None)
                    for row in table.rows if row.at in ats]
    return out
