"""What a `method.name` and a `method.contrastive.form` set: the defaults of other `method.*` keys.

A name's preset is applied under the YAML files and overrides (`prcl.config.loading.load_config`), so a key
given explicitly wins; that is how the ablations of Tables 5-8 are configured. Adding a method: one row of
`METHOD_PRESETS` here and a `@register("name")` class in `prcl.methods` (which refuses a name without a row).
"""

from __future__ import annotations

from dataclasses import dataclass

NO_CONTRAST = {"enabled": False}
COSINE_BATCH_CONTRAST = {"enabled": True, "pr": False, "prototype": "local", "vn": {"enabled": False}}  # Baseline
COSINE_EMA_CONTRAST = {"enabled": True, "pr": False, "prototype": "ema", "vn": {"enabled": False}}  # Baseline+ (Eq. 16)
PRCL_CONTRAST = {"enabled": True, "pr": True, "prototype": "gdp", "vn": {"enabled": True}}  # PR + GDP + VN
UNIMATCH_RECIPE = {"mix": "cutmix_unimatch", "unsup_threshold": 0.95,  # UniMatch's VOC recipe (CVPR 2023)
                   "unsup_pixels": "confident"}  # the FixMatch family's loss counts the confident pixels only
UNIMATCH_V2_RECIPE = {**UNIMATCH_RECIPE, "ema_decay": 0.996}  # UniMatch V2 (arXiv 2410.10777): + an EMA teacher


@dataclass(frozen=True)
class MethodPreset:
    """settings: the defaults of `method.*` keys the name sets (nested sections as dicts);
    pseudo_labels: whether the method learns from unlabeled images through pseudo-labels (false: it sees
    labeled images only, so mixing, the contrast and pseudo-label noise are refused with it)."""

    settings: dict
    pseudo_labels: bool = True


METHOD_PRESETS: dict[str, MethodPreset] = {  # the single table of methods (Table 1 rows, then the strong baselines)
    "supervised": MethodPreset({"mix": "none", "contrastive": NO_CONTRAST}, pseudo_labels=False),
    "mean_teacher": MethodPreset({"mix": "none", "contrastive": NO_CONTRAST}),
    "classmix": MethodPreset({"mix": "classmix", "contrastive": NO_CONTRAST}),
    "baseline": MethodPreset({"mix": "classmix", "contrastive": COSINE_BATCH_CONTRAST}),
    "baseline_plus": MethodPreset({"mix": "classmix", "contrastive": COSINE_EMA_CONTRAST}),
    "prcl": MethodPreset({"mix": "classmix", "contrastive": PRCL_CONTRAST}),
    "fixmatch": MethodPreset({**UNIMATCH_RECIPE, "contrastive": NO_CONTRAST}),
    "unimatch": MethodPreset({**UNIMATCH_RECIPE, "contrastive": NO_CONTRAST}),
    "unimatch_prcl": MethodPreset({**UNIMATCH_RECIPE, "contrastive": PRCL_CONTRAST}),
    "unimatch_v2": MethodPreset({**UNIMATCH_V2_RECIPE, "contrastive": NO_CONTRAST}),
    "unimatch_v2_prcl": MethodPreset({**UNIMATCH_V2_RECIPE, "contrastive": PRCL_CONTRAST}),
}
WITHOUT_PSEUDO_LABELS: tuple[str, ...] = tuple(name for name, p in METHOD_PRESETS.items() if not p.pseudo_labels)
"""Methods that see labeled images only: no mixing, no contrastive term (derived from `METHOD_PRESETS`)."""

# How the probabilistic contrast is scaled and what each key's variance is (issue #13). A form sets the
# defaults of these keys; keys given explicitly override them.
# - `paper`: Eq. 3, 4, 15 literally (raw μ, MLS summed over dims, posterior prototype variance, VNs as
#   points). The log-variance term alone then hands the positive prototype, whose variance shrinks like
#   1/pixels, a lead of ~D/2·log 2, and training diverges (Lc overflows within 10 iterations; results in
#   benchmarks/results/contrastive_gradients.md and paper_tables.md).
# - `release`: the authors' code (unit μ, MLS averaged over dims, τ = 100). At τ = 100 the loss is inert; with
#   the journal's τ = 0.5 (`temperature=0.5`, this project's default before issue #13) averaging still scales
#   the μ term by 1/D: μ gets ~1-7% of the Baseline's gradient and 80-94% of the contrast reaches the trunk
#   through σ².
# - `predictive` (the default; not in the paper): unit μ, the distance term summed over dims (a cosine's
#   scale at σ² ≈ 0.5), the log-variance term averaged, and every key compared with the variance of one
#   pixel of its class (the GDP's mean σ² for the positive and the VNs), so no key wins by its variance.
CONTRASTIVE_FORMS: dict[str, dict] = {
    "paper": {"temperature": 0.5, "mls": {"normalize": False, "reduction": "sum", "include_const": True,
                                          "log_det": "same"},
              "prototype_var": "posterior", "vn": {"var": "zero"}, "var_grad": "trunk"},
    "release": {"temperature": 100.0, "mls": {"normalize": True, "reduction": "mean", "include_const": False,
                                            "log_det": "same"},
                "prototype_var": "posterior", "vn": {"var": "zero"}, "var_grad": "trunk"},
    "predictive": {"temperature": 0.5, "mls": {"normalize": True, "reduction": "sum", "include_const": False,
                                               "log_det": "mean"},
                   "prototype_var": "predictive", "vn": {"var": "prototype"}, "var_grad": "trunk"},
}
PRESET_KEYS = ("method.name", "method.contrastive.form")
"""Keys whose value selects presets: they only take effect in `load_config`, not on a built config."""
