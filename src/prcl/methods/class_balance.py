"""The classes of the pseudo-labels against the labeled set's (issue #35): see it, and the remedies.

A labeler that is confident on a large, easy class (background) and unsure on a thin, rare one hands the
student confident pseudo-labels that are nearly all of the easy class; the student then learns to shrink the
rare class, and the next pseudo-labels have less of it. `ClassBalance` keeps, as buffers (checkpointed, the
same on every rank):

- `labeled_pixels` `[C]`: the labeled crops' pixels per class, summed over training (the labeled prior p_l);
- `confident_share` `[C]`: an EMA of each class's share of the confident pseudo-labels (confidence ≥ the
  method's threshold, δu or τ) on the weak view;
- `mean_prediction` `[C]`: an EMA of the labeler's mean softmax over unlabeled pixels (before alignment);
- `starved` `[C]`: whether the class's ratio r_c = confident share / labeled share is below
  `method.class_balance.starved_ratio` (checked once the EMA has seen 1/(1 − momentum) steps). Early in
  training nearly every class but the largest is starved, on data where semi-supervision helps too
  (`benchmarks/results/class_balance.md`), so it drives the adaptive thresholds and does not warn;
- `shrinking` `[C]`: whether the labeler's mean probability for the class is below
  `method.class_balance.shrink_ratio` × its labeled share, judged in the second half of training: the labeler
  itself predicts the class less than the labels say, which is what the run warns about.

The remedies, each a key of `method.class_balance` (all off by default):

- `threshold=adaptive`: class c's threshold is τ·M(min(1, r_c / ρ)), M(x) = x / (2 − x), ρ = `starved_ratio`.
  FlexMatch's class-wise thresholds (Zhang et al., NeurIPS 2021) scale τ by the class's *learning effect*, its
  count of confident predictions; in segmentation that count is mostly the class's pixel frequency, so here it
  is divided by the labeled prior, and only a starved class (r_c < ρ) is lowered: on data whose pseudo-labels
  keep the labeled proportions the thresholds stay τ.
- `alignment=distribution`: ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020): the labeler's
  probabilities are multiplied by p_l / mean_prediction and renormalised per pixel, then the arg-max and the
  confidence are taken.
- `weighting=class_balanced`: a pixel's unlabeled loss is weighted by w_c = min(max_weight, p_l(c) /
  confident_share_c), so the confident pseudo-labels weigh as the labeled classes do (Σ_c share_c·w_c = 1
  without the cap).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from prcl import IGNORE_INDEX
from prcl.config import Config
from prcl.distributed import all_reduce_sum

Threshold = Union[float, Tensor]
"""One confidence threshold for every pixel, or one per pixel `[B, H, W]` (class-wise thresholds)."""


def flexmatch_map(x: Tensor) -> Tensor:
    """FlexMatch's convex mapping M(x) = x / (2 − x) of a learning effect in [0, 1] (M(0) = 0, M(1) = 1)."""
    return x / (2.0 - x)


class ClassBalance(nn.Module):
    """Per-class statistics of a method's pseudo-labels and the remedies they drive (module docstring)."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        settings = cfg.method.class_balance
        self.num_classes = num_classes
        self.threshold_rule, self.alignment, self.weighting = settings.threshold, settings.alignment, settings.weighting
        self.max_weight, self.momentum, self.starved_ratio = settings.max_weight, settings.momentum, settings.starved_ratio
        self.shrink_ratio = settings.shrink_ratio
        self.register_buffer("labeled_pixels", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("confident_share", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("mean_prediction", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # updates of mean_prediction
        self.register_buffer("confident_steps", torch.zeros((), dtype=torch.int64))  # of confident_share
        self.register_buffer("starved", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("shrinking", torch.zeros(num_classes, dtype=torch.bool))
        self.newly_shrinking = torch.zeros(num_classes, dtype=torch.bool)  # this step's turn to shrinking (not state)

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A checkpoint written before these statistics existed resumes with them at zero (they start over)."""
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        missing_keys[before:] = [k for k in missing_keys[before:] if not k.startswith(prefix)]

    def _ema(self, state: Tensor, value: Tensor, count: Tensor) -> None:
        """`state` ← momentum·state + (1 − momentum)·value, and `count` += 1; the first value initialises it."""
        state.copy_(value if int(count) == 0 else self.momentum * state + (1 - self.momentum) * value)
        count += 1

    @torch.no_grad()
    def observe(self, labeled_mask: Tensor, probs: Tensor, pseudo: Tensor, confidence: Tensor,
                threshold: float, progress: float) -> None:
        """One step's update: the labeled crops `[B_l, H, W]`, the labeler's raw softmax `[B_u, C, H, W]` and its
        pseudo-labels and confidences `[B_u, H, W]` (255 on padding), at `progress` (0..1) of training. One
        all-reduce under DDP."""
        C = self.num_classes
        self.newly_shrinking = torch.zeros_like(self.shrinking)
        lab = labeled_mask[labeled_mask != IGNORE_INDEX]
        valid = pseudo != IGNORE_INDEX
        confident = pseudo[valid & (confidence >= threshold)]
        counts = torch.cat([
            torch.bincount(lab.flatten(), minlength=C)[:C].double(),
            torch.bincount(confident.flatten(), minlength=C)[:C].double(),
            (probs * valid.unsqueeze(1)).sum((0, 2, 3)).double(),  # [C]
            valid.sum().double().reshape(1),
        ])
        all_reduce_sum(counts)
        labeled, confident_counts, prob_sum, pixels = counts[:C], counts[C:2 * C], counts[2 * C:3 * C], counts[-1]
        self.labeled_pixels += labeled
        if pixels > 0:
            self._ema(self.mean_prediction, prob_sum / pixels, self.steps)
        if confident_counts.sum() > 0:  # a step without confident pixels says nothing of their classes
            self._ema(self.confident_share, confident_counts / confident_counts.sum(), self.confident_steps)
        horizon = round(1 / (1 - self.momentum))
        if int(self.confident_steps) >= horizon:
            self.starved.copy_(self.share_ratio() < self.starved_ratio)
        if int(self.steps) >= horizon and progress >= 0.5:
            shrinking = self.prediction_ratio() < self.shrink_ratio
            self.newly_shrinking = shrinking & ~self.shrinking
            self.shrinking.copy_(shrinking)

    # ------------------------------------------------------------------ derived
    def labeled_share(self) -> Tensor:
        """p_l `[C]` (float64): the labeled pixels' class shares so far (uniform before any was seen)."""
        total = self.labeled_pixels.sum()
        return self.labeled_pixels / total if total > 0 else torch.full_like(self.labeled_pixels, 1 / self.num_classes)

    def share_ratio(self) -> Tensor:
        """r_c `[C]`: confident share / labeled share (1 for a class absent from the labeled pixels, and for
        every class before any step had confident pixels)."""
        prior = self.labeled_share()
        known = (prior > 0) & (self.confident_steps > 0)
        return torch.where(known, self.confident_share / prior.clamp(min=1e-12), torch.ones_like(prior))

    def prediction_ratio(self) -> Tensor:
        """`[C]`: the labeler's mean probability / labeled share (1 for a class absent from the labeled pixels,
        and before any step)."""
        prior = self.labeled_share()
        known = (prior > 0) & (self.steps > 0)
        return torch.where(known, self.mean_prediction / prior.clamp(min=1e-12), torch.ones_like(prior))

    def align(self, probs: Tensor) -> Tensor:
        """Distribution alignment of softmax `probs` `[B, C, H, W]` (identity unless `alignment=distribution`
        and a mean prediction exists)."""
        if self.alignment == "none" or int(self.steps) == 0:
            return probs
        factor = (self.labeled_share() / self.mean_prediction.clamp(min=1e-6)).to(probs.dtype)
        aligned = probs * factor.view(1, -1, 1, 1)
        return aligned / aligned.sum(1, keepdim=True)

    def class_thresholds(self, threshold: float) -> Tensor:
        """`[C]` float64: τ·M(min(1, r_c / ρ)), the adaptive rule's threshold per class."""
        return threshold * flexmatch_map((self.share_ratio() / self.starved_ratio).clamp(max=1.0))

    def thresholds(self, pseudo: Tensor, threshold: float) -> Threshold:
        """The confidence each pixel of `pseudo` `[B, H, W]` needs: `threshold` (fixed, or adaptive while no class
        is starved), or per pixel by its pseudo-label's class (`class_thresholds`)."""
        if self.threshold_rule == "fixed" or not bool(self.starved.any()):
            return threshold
        return self.class_thresholds(threshold).to(torch.float32)[pseudo.clamp(max=self.num_classes - 1)]

    def weights(self, pseudo: Tensor) -> Optional[Tensor]:
        """Per-pixel weights `[B, H, W]` of the unlabeled loss by pseudo-label class, or None (no weighting)."""
        if self.weighting == "none" or int(self.confident_steps) == 0:
            return None
        share = self.confident_share
        per_class = torch.where(share > 0, self.labeled_share() / share.clamp(min=1e-12),
                                torch.full_like(share, self.max_weight)).clamp(max=self.max_weight)
        return per_class.to(torch.float32)[pseudo.clamp(max=self.num_classes - 1)]

    def stats(self, pseudo: Tensor, confidence: Tensor, threshold: float,
              truth: Optional[Tensor] = None) -> dict[str, float]:
        """What the run logs: per class c, `class_balance/labeled_share/c`, `.../confident_share/c`,
        `.../mean_prediction/c` (the labeler's mean probability, before alignment), `.../prediction_ratio/c`
        (that / labeled share), `.../shrinking/c` (0/1), `.../ratio/c`,
        `.../starved/c` (0/1), the adaptive `.../threshold/c`, `.../newly_shrinking/c` = 1 on the step a class
        turns shrinking (the trainer's warning); and where the unlabeled images' true labels
        `truth` are known, the step's `reliability/pseudo_recall/c` and `reliability/pseudo_precision/c` of the
        confident pseudo-labels (they never enter a loss)."""
        out: dict[str, float] = {}
        rows = {"labeled_share": self.labeled_share(), "confident_share": self.confident_share,
                "mean_prediction": self.mean_prediction, "prediction_ratio": self.prediction_ratio(),
                "shrinking": self.shrinking.double(), "ratio": self.share_ratio(), "starved": self.starved.double()}
        if self.threshold_rule == "adaptive":
            rows["threshold"] = self.class_thresholds(threshold)
        for name, values in rows.items():
            out.update({f"class_balance/{name}/{c}": v for c, v in enumerate(values.tolist())})
        out.update({f"class_balance/newly_shrinking/{c}": 1.0 for c in self.newly_shrinking.nonzero().flatten().tolist()})
        if truth is not None:
            out.update(pseudo_label_recall_precision(pseudo, confidence, threshold, truth, self.num_classes))
        return out


@torch.no_grad()
def pseudo_label_recall_precision(pseudo: Tensor, confidence: Tensor, threshold: float, truth: Tensor,
                                  num_classes: int) -> dict[str, float]:
    """Per class c over known pixels (truth ≠ 255, not padding): recall = |confident ∧ pseudo = c ∧ truth = c| /
    |truth = c|, precision = |confident ∧ pseudo = c ∧ truth = c| / |confident ∧ pseudo = c|; a class without
    pixels of that kind is left out."""
    known = (truth != IGNORE_INDEX) & (pseudo != IGNORE_INDEX)
    confident = known & (confidence >= threshold)
    C = num_classes
    hit = torch.bincount(truth[confident & (pseudo == truth)], minlength=C)[:C].double()
    true = torch.bincount(truth[known], minlength=C)[:C].double()
    claimed = torch.bincount(pseudo[confident], minlength=C)[:C].double()
    out = {}
    for c in range(C):
        if true[c] > 0:
            out[f"reliability/pseudo_recall/{c}"] = float(hit[c] / true[c])
        if claimed[c] > 0:
            out[f"reliability/pseudo_precision/{c}"] = float(hit[c] / claimed[c])
    return out
