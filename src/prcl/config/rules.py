"""The rules a config must satisfy before anything runs: each key's choices and range, and the
combinations that would be ignored or cannot work. Types are checked while loading (`loading.py`)."""

from __future__ import annotations

from typing import Any

from prcl.config.presets import CONTRASTIVE_FORMS, METHOD_PRESETS, WITHOUT_PSEUDO_LABELS
from prcl.config.schema import Config, ConfigError, ContrastiveConfig
from prcl.sizes import nearest_multiples, patch_size

CHOICES = {
    "data.dataset": ("synthetic", "voc", "cityscapes", "folder"),
    "model.decoder": ("deeplabv3plus", "dpt"),
    "model.prob_activation": ("sigmoid", "softplus", "exp"),
    "model.complementary_mask": ("shared", "per_level"),
    "model.output_stride": (8, 16),
    "optim.name": ("sgd", "adamw"),
    "method.name": tuple(METHOD_PRESETS),
    "method.mix": ("classmix", "cutmix", "cutmix_unimatch", "none"),
    "method.pseudo_label_noise_kind": ("uniform", "runner_up"),
    "method.supervised_loss": ("ce", "ohem"),
    "method.unsup_pixels": ("all", "confident"),
    "method.class_balance.threshold": ("fixed", "adaptive"),
    "method.class_balance.alignment": ("none", "distribution"),
    "method.class_balance.weighting": ("none", "class_balanced"),
    "method.contrastive.prototype": ("gdp", "local", "ema"),
    "method.contrastive.form": tuple(CONTRASTIVE_FORMS),
    "method.contrastive.vn.scale": ("variance", "std"),
    "method.contrastive.vn.var": ("zero", "prototype"),
    "method.contrastive.vn.source": ("posterior", "predictive", "empirical"),
    "method.contrastive.anchor_pixels": ("hard", "all"),
    "method.contrastive.prototype_var": ("posterior", "predictive"),
    "method.contrastive.var_grad": ("trunk", "head"),
    "method.contrastive.mls.reduction": ("mean", "sum"),
    "method.contrastive.mls.log_det": ("same", "mean"),
    "eval.mode": ("whole", "center_crop", "sliding"),
    "eval.model": ("auto", "student", "teacher"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.amp": ("none", "bf16", "fp16"),
}
POSITIVE = (
    "data.crop_size", "data.batch_size", "data.unlabeled_batch_size", "model.aspp_channels", "model.dpt_features",
    "model.rep_dim", "model.head_channels", "method.contrastive.temperature", "optim.head_lr_scale",
    "method.contrastive.num_anchors", "method.contrastive.num_negatives", "optim.lr",
    "train.iterations", "train.eval_every", "train.checkpoint_every", "train.log_every",
    "eval.crop_size", "eval.stride", "eval.batch_size", "method.contrastive.memory_bank.size",
    "method.ema_reference_iterations", "method.class_balance.max_weight",
    "method.contrastive.memory_bank.enqueue", "method.contrastive.memory_bank.negatives",
    "method.contrastive.vn.num",
)
UNIT_INTERVAL = (
    "method.contrastive.trunk_grad", "method.ema_decay", "method.unsup_threshold", "method.contrastive.weak_threshold",
    "method.contrastive.ema_momentum", "method.contrastive.gdp_forgetting", "data.color_jitter",
    "data.blur", "optim.momentum", "method.pseudo_label_noise", "method.ohem_threshold",
    "method.class_balance.starved_ratio", "method.class_balance.momentum", "method.unsup_rampup",
    "method.class_balance.shrink_ratio",
)
POSITIVE_UNIT_INTERVAL = ("method.contrastive.strong_threshold",)  # (0, 1]
NON_NEGATIVE = ("method.ohem_min_kept", "train.log_prototypes_every", "train.diagnostics_every", "optim.prob_head_lr",
                "optim.prob_head_lr_scale", "optim.weight_decay", "data.num_workers",
                "method.contrastive.vn.beta")
BELOW_ONE = ("method.contrastive.ema_momentum", "method.class_balance.momentum")  # [0, 1): a momentum of 1 never moves

def get_value(cfg: Any, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


RANGE_RULES: tuple[tuple[tuple[str, ...], Any, str], ...] = (
    (POSITIVE, lambda v: v > 0, "> 0"),
    (UNIT_INTERVAL, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    (POSITIVE_UNIT_INTERVAL, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    (NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
    (BELOW_ONE, lambda v: v < 1.0, "< 1"),
)


def check_section(obj: Any, prefix: str = "") -> None:
    """The choice and range rules of every key under `prefix` ("" = the whole config), read from
    `obj`, the config section at that prefix (e.g. a `ContrastiveConfig` at "method.contrastive.")."""
    def keys(table):
        return [k for k in table if k.startswith(prefix)]

    for key in keys(CHOICES):
        v = get_value(obj, key[len(prefix):])
        if v not in CHOICES[key]:
            raise ConfigError(f"config key '{key}' must be one of {list(CHOICES[key])}, got {v!r}")
    for table, ok, text in RANGE_RULES:
        for key in keys(table):
            v = get_value(obj, key[len(prefix):])
            if v is not None and not ok(v):
                raise ConfigError(f"config key '{key}' must be {text}, got {v!r}")
    if prefix == "method.contrastive." or not prefix:
        _check_contrastive(obj if prefix else obj.method.contrastive)


def _check_contrastive(contrastive: ContrastiveConfig) -> None:
    if contrastive.prototype == "gdp" and not contrastive.pr:
        raise ConfigError("method.contrastive.prototype=gdp needs pr=true (a GDP is a Gaussian); use local or ema")
    if contrastive.vn.enabled and not contrastive.pr:
        raise ConfigError("method.contrastive.vn.enabled=true needs pr=true (VNs are drawn from GDPs)")


def _check_model(cfg: Config) -> None:
    """A ViT needs the DPT decoder, fixed widths, and crops that are multiples of its patch size."""
    model = cfg.model
    patch = patch_size(model.backbone)
    if patch == 1:
        return
    if model.decoder != "dpt":
        raise ConfigError(f"model.backbone={model.backbone} is a ViT, which model.decoder={model.decoder} cannot read; "
                          "set model.decoder=dpt")
    if model.backbone_channels is not None:
        raise ConfigError(f"model.backbone_channels sets ResNet stage widths; {model.backbone} has fixed widths: set "
                          "model.backbone_channels=null")
    crops = [("data.crop_size", cfg.data.crop_size)]
    if cfg.eval.mode in ("center_crop", "sliding"):
        crops.append(("eval.crop_size", cfg.eval.crop_size))
    for key, size in crops:
        if size % patch:
            raise ConfigError(f"config key '{key}' must be a multiple of {patch} with model.backbone={model.backbone} "
                              f"(its patch size), got {size}; nearest: {nearest_multiples(size, patch)}")


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express, and combinations that would be ignored."""
    check_section(cfg)
    lo, hi = cfg.data.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"config key 'data.scale_range' must satisfy 0 < min <= max, got {[lo, hi]}")
    _check_model(cfg)
    method = cfg.method
    if method.name in WITHOUT_PSEUDO_LABELS and method.pseudo_label_noise > 0:
        raise ConfigError(f"method.pseudo_label_noise={method.pseudo_label_noise} needs pseudo-labels, which "
                          f"method.name={method.name} does not make; set it to 0 or pick a semi-supervised method")
    if METHOD_PRESETS[method.name].settings.get("unsup_pixels") == "confident" and method.unsup_pixels != "confident":
        raise ConfigError(f"method.unsup_pixels={method.unsup_pixels}: {method.name}'s loss is FixMatch's, over the "
                          "confident pixels only; 'all' (Eq. 14) belongs to the mean-teacher family (classmix, prcl, "
                          "...); remove the key")
    if method.name in WITHOUT_PSEUDO_LABELS:
        if method.mix != "none":
            raise ConfigError(f"method.mix={method.mix} has no effect with method.name={method.name} (it sees no "
                              "unlabeled images); remove the key or pick a semi-supervised method")
        if method.contrastive.enabled:
            raise ConfigError(f"method.contrastive.enabled=true needs pseudo-labels, which method.name={method.name} "
                              "does not make; use classmix or another semi-supervised method")
        balance = method.class_balance
        for key, value, default in (("class_balance.threshold", balance.threshold, "fixed"),
                                    ("class_balance.alignment", balance.alignment, "none"),
                                    ("class_balance.weighting", balance.weighting, "none"),
                                    ("unsup_rampup", method.unsup_rampup, 0.0),
                                    ("unsup_pixels", method.unsup_pixels, "all")):
            if value != default:
                raise ConfigError(f"method.{key}={value} acts on pseudo-labels, which method.name="
                                  f"{method.name} does not make; remove the key or pick a semi-supervised method")
