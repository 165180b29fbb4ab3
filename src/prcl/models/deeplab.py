"""DeepLabv3+ with the heads PRCL needs, all on the 304-channel fused decoder feature.

    backbone ─► ASPP (256) ─► upsample to stride 4 ─┐
        └──► stride-4 features ─► 1×1 conv (48) ────┴─► concat = fused feature [B, 304, H/4, W/4]
    fused ─► segmentation head   Conv3×3-BN-ReLU-Conv1×1 → C logits
    fused ─► representation head Conv3×3-BN-ReLU-Conv1×1 → μ  (D)
    fused ─► probability head    1×1 Linear-BN-ReLU-Linear(-BN) + sigmoid/softplus/exp → σ² (D)

`forward(x, feature_dropout=p)` adds UniMatch's feature-perturbation stream: the backbone runs once and
the decoder runs on [clean; Dropout2d(p)] features, returning `logits_fp` beside the clean outputs.
`forward(x, complementary_dropout=True)` is UniMatch V2's: x = [view 1; view 2] of the same images, and the
backbone features of the two halves get complementary channel masks (`prcl.models.feature_perturbation`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from prcl.models.backbone import backbone_channels, check_feature_strides, create_backbone, input_normalization
from prcl.models.feature_perturbation import apply_channel_mask, complementary_channel_masks


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling; rates (6, 12, 18) at output stride 16, doubled at 8."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        # Image pooling without BatchNorm so that a batch of one image per process trains.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(feats, dim=1))


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` in the forward pass; its gradient multiplied by `scale` in the backward pass (0: a stop-gradient)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return scale * x + (1.0 - scale) * x.detach()


def make_head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Conv3×3-BN-ReLU-Conv1×1, the shape of the segmentation and representation heads."""
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


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+; `forward` returns a dict with `logits` (input size) and the stride-4 `fused`,
    plus `mu`/`var` when the representation/probability heads are enabled."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        *,
        output_stride: int = 16,
        pretrained: bool = False,
        weights: Optional[str] = None,
        backbone_widths: Optional[Sequence[int]] = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        head_channels: int = 256,
        rep_dim: Optional[int] = None,
        prob_dim: Optional[int] = None,
        prob_activation: str = "sigmoid",
        prob_final_norm: bool = True,
        rep_trunk_grad: float = 1.0,
        prob_trunk_grad: float = 1.0,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.backbone = create_backbone(
            backbone, output_stride=output_stride, pretrained=pretrained, weights=weights, channels=backbone_widths
        )
        check_feature_strides(self.backbone, output_stride)
        # Inputs arrive normalised with ImageNet statistics; a backbone trained with others (TF's
        # EfficientNet-Lite: (x - 0.5) / 0.5) gets them through a fixed per-channel affine map.
        mean, std = input_normalization(backbone)
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.renormalize = not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        low_c, high_c = backbone_channels(self.backbone)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(high_c, aspp_channels, rates)
        self.reduce = conv_bn_relu(low_c, low_level_channels, 1)
        self.fused_channels = aspp_channels + low_level_channels
        self.seg_head = make_head(self.fused_channels, head_channels, num_classes)
        self.rep_head = make_head(self.fused_channels, head_channels, rep_dim) if rep_dim else None
        self.prob_head = ProbabilityHead(self.fused_channels, prob_dim, prob_activation, prob_final_norm) if prob_dim else None
        if not (0.0 <= rep_trunk_grad <= 1.0 and 0.0 <= prob_trunk_grad <= 1.0):
            raise ValueError(f"rep_trunk_grad and prob_trunk_grad must lie in [0, 1], got {rep_trunk_grad}, "
                             f"{prob_trunk_grad}")
        # how much of the representation / probability heads' gradient reaches the shared trunk
        self.rep_trunk_grad, self.prob_trunk_grad = rep_trunk_grad, prob_trunk_grad

    def fused_feature(self, x: torch.Tensor, feature_dropout: float = 0.0,
                      complementary_dropout: bool = False) -> torch.Tensor:
        """`[B, 304, H/4, W/4]`; with `feature_dropout` = p > 0, `[2B, ...]`: the clean batch, then the
        batch with channel dropout (Dropout2d, always on, as UniMatch) on both backbone features; with
        `complementary_dropout`, the two halves of the batch get complementary masks on both."""
        if self.renormalize:
            x = torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))
        low, high = self.backbone(x)
        if complementary_dropout:
            if x.shape[0] % 2:
                raise ValueError(f"complementary dropout needs [view 1; view 2] rows, got an odd batch of {x.shape[0]}")
            low_mask, high_mask = complementary_channel_masks(x.shape[0] // 2, (low.shape[1], high.shape[1]),
                                                              device=x.device)
            low, high = apply_channel_mask(low, low_mask), apply_channel_mask(high, high_mask)
        if feature_dropout > 0:
            low = torch.cat([low, F.dropout2d(low, feature_dropout, training=True)])
            high = torch.cat([high, F.dropout2d(high, feature_dropout, training=True)])
        high = F.interpolate(self.aspp(high), size=low.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([high, self.reduce(low)], dim=1)  # [B, 304, H/4, W/4]

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
        """What every head shares: backbone, ASPP and the low-level projection (gradient diagnostics)."""
        return [p for m in (self.backbone, self.aspp, self.reduce) for p in m.parameters()]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group: `backbone`, `head` (ASPP, projections, segmentation and
        representation heads: UniMatch trains them at 10× the backbone's lr) and `prob_head` (σ², own lr)."""
        prob = list(self.prob_head.parameters()) if self.prob_head is not None else []
        backbone = list(self.backbone.parameters())
        taken = {id(p) for p in prob + backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in taken], "prob_head": prob}
