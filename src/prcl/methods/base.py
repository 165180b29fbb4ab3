"""The method interface and its registry.

**How the pixel contrast enters a method (one rule for all).** A method's loss is its own
cross-entropy terms plus λc(t)·Lc (Eq. 11), all multiplied by the method's `loss_scale`:

    L = loss_scale · (Ls + Lu + λc(t)·Lc)

`loss_scale` is 1 for the mean-teacher family (Eq. 11 as written) and 1/2 for FixMatch/UniMatch, whose
authors train (Ls + Lu)/2. So λc(t) is always the contrast's weight relative to the supervised
cross-entropy, whichever method carries it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from prcl.config import METHOD_PRESETS, Config, ConfigError
from prcl.losses.cross_entropy import supervised_loss

METHODS: dict[str, type["Method"]] = {}


def register(*names: str) -> Callable[[type["Method"]], type["Method"]]:
    """Register a `Method` class under one or more `method.name`s. Each name needs its row in
    `prcl.config.presets.METHOD_PRESETS` (what the names sharing a class differ in), and the class's
    `uses_unlabeled` is read from those rows (`pseudo_labels`), so the fact is stated once."""
    def add(cls: type["Method"]) -> type["Method"]:
        missing = [name for name in names if name not in METHOD_PRESETS]
        if missing:
            raise ValueError(f"@register{names}: add a row for {missing} to prcl.config.presets.METHOD_PRESETS")
        uses = {METHOD_PRESETS[name].pseudo_labels for name in names}
        if len(uses) != 1:
            raise ValueError(f"@register{names}: the names' presets disagree on pseudo_labels; one class serves "
                             "methods that all use unlabeled images or none that do")
        cls.uses_unlabeled = uses.pop()
        for name in names:
            METHODS[name] = cls
        return cls

    return add


@dataclass
class ReliabilityProbe:
    """What one step's contrast saw of the unlabeled rows, at feature resolution.

    var: the student's σ² `[B, D, h, w]` for all rows (labeled first), still in the autograd graph;
    rows: the slice of the unlabeled rows in it; pseudo, truth `[B_u, h, w]` (truth 255 = unknown);
    confident, anchors `[B_u, h, w]` bool; weight: λc(t) (divided out of the gradient)."""

    var: Tensor
    rows: slice
    pseudo: Tensor
    truth: Tensor
    confident: Tensor
    anchors: Tensor
    weight: float


@dataclass
class StepLosses:
    """What a method computes in one iteration.

    terms: loss terms, summed by the trainer; stats: scalars to log; paths: for gradient diagnostics,
    `{term: {name: tensor}}` the intermediate tensors through which a term reaches the network (e.g.
    the contrastive term through `mu` and `var`), so the trainer can split its gradient by path;
    probe: what the reliability diagnostics read (`prcl.engine.reliability`), where the truth is known.
    """

    terms: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)
    paths: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    probe: Optional[ReliabilityProbe] = None

    def update(self, other: "StepLosses") -> None:
        self.terms.update(other.terms)
        self.stats.update(other.stats)
        self.paths.update(other.paths)
        self.probe = other.probe if other.probe is not None else self.probe

    def scaled(self, factor: float) -> "StepLosses":
        """Every loss term multiplied by `factor` (stats and paths unchanged)."""
        if factor == 1.0:
            return self
        return StepLosses({k: factor * v for k, v in self.terms.items()}, self.stats, self.paths, self.probe)


class Method(nn.Module):
    """Computes the loss terms of one iteration. State it keeps across iterations (prototypes, memory
    banks) lives in registered buffers, so it is checkpointed with `state_dict()`."""

    uses_teacher = False  # needs an EMA teacher (the trainer builds, updates and evaluates it)
    uses_unlabeled = False  # needs the unlabeled stream: set by `register` from the preset's `pseudo_labels`
    strong_views = 1  # strong views per unlabeled image the data pipeline delivers (`image_strong`, `image_strong2`, ...)
    loss_scale = 1.0  # every loss term, the contrast included, is multiplied by it (the module docstring)
    authors_choice = "teacher"  # with a teacher: the model its authors report (best.pt keeps its best evaluation)
    shrinking_remedy = ""  # the options measured to help this family when a class shrinks (the run's warning names
    # them; benchmarks/results/class_balance.md)

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.method.name
        self.num_classes = num_classes

    def losses(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module],
        labeled: dict[str, torch.Tensor],
        unlabeled: Optional[dict[str, torch.Tensor]],
        progress: float,
    ) -> StepLosses:
        """The loss terms of one iteration; `progress` = t/T."""
        raise NotImplementedError

    def unsupervised_weight(self, progress: float) -> float:
        """`method.unsup_weight`, times the ramp-up exp(−5·(1 − t/r)²) while t = `progress` < r =
        `method.unsup_rampup` (Laine & Aila, ICLR 2017); the weight itself when r = 0."""
        method = self.cfg.method
        if progress >= method.unsup_rampup:
            return method.unsup_weight
        return method.unsup_weight * math.exp(-5.0 * (1.0 - progress / method.unsup_rampup) ** 2)

    def supervised_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Ls on the labeled images: cross-entropy, or OHEM with `method.supervised_loss=ohem`."""
        method = self.cfg.method
        return supervised_loss(logits, mask, method.supervised_loss, ohem_threshold=method.ohem_threshold,
                               ohem_min_kept=method.ohem_min_kept)

    def prototypes(self) -> dict[str, torch.Tensor]:
        """Class prototypes the method keeps, `{kind: [C, D]}` with NaN rows for classes it has none of
        (prototype trajectories, Fig. 8); empty for methods without prototypes."""
        return {}


def reported_model_name(cfg: Config) -> str:
    """"student" or "teacher": the model whose mIoU a run reports and `best.pt` follows (`eval.model`; `auto`
    = the method's authors' choice, `Method.authors_choice`). Methods without a teacher: the student."""
    method = METHODS[cfg.method.name]
    if not method.uses_teacher:
        if cfg.eval.model == "teacher":
            raise ConfigError(f"eval.model=teacher, but method.name={cfg.method.name} trains no teacher; "
                              "use eval.model=auto or student")
        return "student"
    return method.authors_choice if cfg.eval.model == "auto" else cfg.eval.model


def build_method(cfg: Config, num_classes: int) -> Method:
    return METHODS[cfg.method.name](cfg, num_classes)
