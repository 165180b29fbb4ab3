"""What every segmentation model here shares: the input conversion, the heads on the fused decoder
feature, the feature perturbations, and the parameter groups. The decoders (`DeepLabV3Plus`, `DPT`)
add an encoder, a decoder (`decode`: encoder features -> fused feature) and a segmentation head.

    encoder ─► features ─► decoder ─► fused feature ─┬─► segmentation head → C logits (upsampled to input size)
                                                     ├─► representation head Conv3×3-BN-ReLU-Conv1×1 → μ  (D)
                                                     └─► probability head 1×1 Linear-BN-ReLU-Linear(-BN) → σ² (D)

`forward(x, feature_dropout=p)` adds UniMatch's feature-perturbation stream: the encoder runs once and
the decoder runs on [clean; Dropout2d(p)] features, returning `logits_fp` beside the clean outputs.
`forward(x, complementary_dropout=True)` is UniMatch V2's: x = [view 1; view 2] of the same images, and the
encoder features of the two halves get complementary channel masks (`prcl.models.feature_perturbation`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from prcl import IMAGENET_MEAN, IMAGENET_STD
from prcl.models.backbone import input_normalization
from prcl.models.feature_perturbation import apply_channel_mask, complementary_channel_masks


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` in the forward pass; its gradient multiplied by `scale` in the backward pass (0: a stop-gradient)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return scale * x + (1.0 - scale) * x.detach()


def make_head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Conv3×3-BN-ReLU-Conv1×1: DeepLabv3+'s segmentation head and every model's representation head."""
    return nn.Sequential(conv_bn_relu(cin, hidden, 3), nn.Conv2d(hidden, cout, 1))


PROB_ACTIVATIONS = {"sigmoid": torch.sigmoid, "softplus": F.softplus,
                    "exp": lambda s: torch.exp(s.clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT))}
LOG_VAR_LIMIT = 10.0
"""`exp` reads the head's output as log σ² (PFE); it is clamped to ±this so σ² stays finite (e^±10)."""


class ProbabilityHead(nn.Module):
    """σ² head: Linear-BN-ReLU-Linear(-BN) as 1×1 convs, then a positive activation (Sec. 3.2).

    `final_norm=True` is the paper's and the release's head: a train-mode BatchNorm before the activation
    standardises every channel over the batch, so the batch's σ² level and spread are set by that
    BatchNorm's γ/β alone (and its backward removes those parts of the gradient from the trunk).
    `final_norm=False` (not in the paper) ends in a biased linear layer instead, whose bias sets the level
    and whose weights the spread. `activation`: sigmoid (σ² in (0, 1)), softplus, or exp of a log-variance.
    """

    def __init__(self, cin: int, dim: int, activation: str = "sigmoid", final_norm: bool = True) -> None:
        super().__init__()
        if activation not in PROB_ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(PROB_ACTIVATIONS)}, got {activation!r}")
        first = [nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]  # built first: the
        # random initialisation follows the order of construction, so the paper's head starts as it always did
        last = ([nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim)] if final_norm
                else [nn.Conv2d(dim, dim, 1, bias=True)])
        self.net = nn.Sequential(*first, *last)
        self.activation = PROB_ACTIVATIONS[activation]
        if not final_norm:  # start where the normalised head starts: σ² = activation(0) on average
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.activation(self.net(fused))


HEADS = ("seg_head", "rep_head", "prob_head")
"""The modules on the fused feature; everything else is the trunk they share."""


class SegmentationModel(nn.Module):
    """Base of the models: a subclass builds `backbone` (a module returning a list of feature maps) and
    its decoder, then calls `_init_input_normalization` and `_init_heads`, and implements `decode`.

    `forward` returns a dict with `logits` (input size) and the decoder's `fused` feature, plus `mu`/`var`
    when the representation/probability heads are built."""

    size_multiple: int = 1
    """Input sides must be multiples of this (a ViT's patch size); `predict_logits` pads to it."""
    shared_channel_mask: bool = True
    """Complementary dropout: one mask draw for all encoder levels (UniMatch V2), or one per level
    (`model.complementary_mask`, set by `build_model`)."""

    def _init_input_normalization(self, backbone: str) -> None:
        # Inputs arrive normalised with ImageNet statistics; a backbone trained with others (TF's
        # EfficientNet-Lite: (x - 0.5) / 0.5) gets them through a fixed per-channel affine map.
        mean, std = input_normalization(backbone)
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.renormalize = not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)

    def _init_heads(
        self, seg_head: nn.Module, fused_channels: int, *, head_channels: int = 256,
        rep_dim: Optional[int] = None, prob_dim: Optional[int] = None, prob_activation: str = "sigmoid",
        prob_final_norm: bool = True, rep_trunk_grad: float = 1.0, prob_trunk_grad: float = 1.0,
    ) -> None:
        """The segmentation head (the decoder's), a representation head of width `rep_dim` (hidden
        `head_channels`) and a σ² head of width `prob_dim` when given. `rep_trunk_grad` / `prob_trunk_grad`:
        how much of the μ / σ² heads' gradient reaches the shared trunk (1 = all, 0 = a stop-gradient)."""
        if not (0.0 <= rep_trunk_grad <= 1.0 and 0.0 <= prob_trunk_grad <= 1.0):
            raise ValueError(f"rep_trunk_grad and prob_trunk_grad must lie in [0, 1], got {rep_trunk_grad}, "
                             f"{prob_trunk_grad}")
        self.fused_channels = fused_channels
        self.seg_head = seg_head
        self.rep_head = make_head(fused_channels, head_channels, rep_dim) if rep_dim else None
        self.prob_head = ProbabilityHead(fused_channels, prob_dim, prob_activation, prob_final_norm) if prob_dim else None
        self.rep_trunk_grad, self.prob_trunk_grad = rep_trunk_grad, prob_trunk_grad

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Encoder features -> the fused feature `[B, fused_channels, h, w]`."""
        raise NotImplementedError

    def complementary_masks(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """UniMatch V2's masks for `features` of a batch [view 1; view 2]: one `[B, C]` mask per level."""
        batch = features[0].shape[0]
        if batch % 2:
            raise ValueError(f"complementary dropout needs [view 1; view 2] rows, got an odd batch of {batch}")
        widths = [f.shape[1] for f in features]
        return complementary_channel_masks(batch // 2, widths, shared=self.shared_channel_mask,
                                           device=features[0].device)

    def fused_feature(self, x: torch.Tensor, feature_dropout: float = 0.0,
                      complementary_dropout: bool = False) -> torch.Tensor:
        """The decoder's fused feature; with `feature_dropout` = p > 0 twice the rows: the clean batch, then
        the batch with channel dropout (Dropout2d, always on, as UniMatch) on every encoder feature; with
        `complementary_dropout`, the two halves of the batch get complementary masks on them."""
        if self.renormalize:
            x = torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))
        features = list(self.backbone(x))
        if complementary_dropout:
            features = [apply_channel_mask(f, m) for f, m in zip(features, self.complementary_masks(features))]
        if feature_dropout > 0:
            features = [torch.cat([f, F.dropout2d(f, feature_dropout, training=True)]) for f in features]
        return self.decode(features)

    def forward(self, x: torch.Tensor, *, heads: bool | slice = True, feature_dropout: float = 0.0,
                complementary_dropout: bool = False) -> dict[str, torch.Tensor]:
        """`logits` (input size), `fused`, `mu`/`var` (with `heads` and the heads built: True = every row of
        the batch, a slice = those rows only, so the heads' cost and BatchNorm statistics cover only the rows
        a loss reads); with `feature_dropout` > 0 also `logits_fp`, the perturbed stream's logits (the heads
        see clean features); with `complementary_dropout`, UniMatch V2's masks on [view 1; view 2]."""
        fused = self.fused_feature(x, feature_dropout, complementary_dropout)
        logits = F.interpolate(self.seg_head(fused), size=x.shape[2:], mode="bilinear", align_corners=False)
        out = {"logits": logits, "fused": fused}
        if feature_dropout > 0:  # decoder BatchNorm saw clean and perturbed together, as in UniMatch
            out["logits"], out["logits_fp"] = logits.chunk(2)
            fused = out["fused"] = fused[: x.shape[0]]
        rows = fused if heads is True else fused[heads] if heads is not False else None
        if rows is not None and self.rep_head is not None:
            out["mu"] = self.rep_head(scale_gradient(rows, self.rep_trunk_grad))
        if rows is not None and self.prob_head is not None:
            out["var"] = self.prob_head(scale_gradient(rows, self.prob_trunk_grad))
        return out

    def trunk_parameters(self) -> list[nn.Parameter]:
        """What every head shares: the encoder and the decoder up to the fused feature (gradient diagnostics)."""
        return [p for name, m in self.named_children() if name not in HEADS for p in m.parameters()]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group: `backbone`, `head` (decoder, segmentation and representation
        heads: UniMatch trains them at 10× the backbone's lr) and `prob_head` (σ², own lr)."""
        prob = list(self.prob_head.parameters()) if self.prob_head is not None else []
        backbone = list(self.backbone.parameters())
        taken = {id(p) for p in prob + backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in taken], "prob_head": prob}
