"""Gradient diagnostics: how strongly each loss term reaches the network, and through which path.

A loss term that never moves the weights (or only through a side path) is invisible in the loss
curves; these norms make it visible. Every `train.diagnostics_every` iterations the trainer logs, for
each term, ‖∂term/∂θ_trunk‖ over the trunk parameters (backbone, ASPP, decoder projection: what all
heads share), and for terms with declared paths (the contrastive term through μ and through σ²) the
norm of each path's share, (∂term/∂path)ᵀ ∂path/∂θ_trunk. By the chain rule the shares sum (as
vectors) to the term's gradient. `InertTermMonitor` warns once per term when a term is inert (its
gradient, before its scheduled weight such as λc(t), below 1 % of the supervised term's) or its
loss is saturated.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

INERT_RATIO = 0.01
"""A term whose trunk gradient is below this fraction of the supervised term's is reported inert."""
SATURATED_FRACTION = 0.01
"""A contrastive loss below this fraction of its uniform value log(keys) is reported saturated."""


def _norm(grads: Iterable[Optional[Tensor]]) -> float:
    squares = [g.detach().double().square().sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def gradient_norms(terms: dict[str, Tensor], paths: dict[str, dict[str, Tensor]],
                   params: Sequence[nn.Parameter]) -> dict[str, float]:
    """`{"grad/<term>": ‖∂term/∂params‖, "grad/<term>.<path>": norm of that path's share}`.

    Leaves the autograd graph intact (retain_graph) for the training step's own backward."""
    params = [p for p in params if p.requires_grad]
    out: dict[str, float] = {}
    for name, term in terms.items():
        if not term.requires_grad:
            out[f"grad/{name}"] = 0.0
            continue
        out[f"grad/{name}"] = _norm(torch.autograd.grad(term, params, retain_graph=True, allow_unused=True))
        for path, tensor in paths.get(name, {}).items():
            (upstream,) = torch.autograd.grad(term, tensor, retain_graph=True, allow_unused=True)
            if upstream is None:
                out[f"grad/{name}.{path}"] = 0.0
                continue
            share = torch.autograd.grad(tensor, params, grad_outputs=upstream, retain_graph=True, allow_unused=True)
            out[f"grad/{name}.{path}"] = _norm(share)
    return out


class InertTermMonitor:
    """Warns once per term: inert (gradient < INERT_RATIO of `reference`'s) or saturated loss."""

    def __init__(self, reference: str = "sup") -> None:
        self.reference = reference
        self.warned: set[str] = set()

    def check(self, norms: dict[str, float], stats: dict[str, float], iteration: int) -> list[str]:
        messages = []
        ref = norms.get(f"grad/{self.reference}", 0.0)
        for key, value in norms.items():
            term = key[len("grad/"):]
            if "." in term or term == self.reference or term in self.warned or ref <= 0:
                continue
            weight = stats.get(f"{term}/lambda", 1.0)  # a scheduled weight (λc(t)) fading out is not inertness
            if weight > 0 and value / weight < INERT_RATIO * ref:
                self.warned.add(term)
                messages.append(f"iteration {iteration}: loss term '{term}' is inert: its gradient at the trunk is "
                                f"{100 * value / ref:.2g}% of the '{self.reference}' term's ({value:.2e} vs {ref:.2e})")
        loss, uniform = stats.get("contrastive/loss"), stats.get("contrastive/uniform_loss")
        if loss is not None and uniform and loss < SATURATED_FRACTION * uniform and "saturated" not in self.warned:
            self.warned.add("saturated")
            messages.append(f"iteration {iteration}: the contrastive loss is saturated ({loss:.2e}, uniform value "
                            f"{uniform:.2f}): the positive wins every anchor by a wide margin, so it gives no gradient")
        return messages
