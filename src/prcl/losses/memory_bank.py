"""Per-class FIFO memory bank of detached representations (the "w/ MB" strategy of Table 7).

`size` slots in total, split evenly over the classes (size // C each). Every step a random subset
of each class's valid pixels is enqueued (oldest entries are overwritten first); the contrastive
loss draws extra negatives from it (see `PRCLContrastiveLoss`). Buffers, so checkpoints carry it.
Enqueueing replaces the queue tensors instead of writing into them (a loss computed earlier may
still need the old ones for its backward), so the bank briefly exists twice.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from prcl.losses.sampling import uniform_below


class ClassMemoryBank(nn.Module):
    """Queues `mu` [C, cap, D] (and `var` [C, cap, D] when `with_var`), write pointers `ptr` [C]
    and fill levels `filled` [C]."""

    mu: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, num_classes: int, dim: int, size: int, *, with_var: bool) -> None:
        super().__init__()
        if size < num_classes:
            raise ValueError(f"memory_bank_size must be 0 (off) or >= num_classes ({num_classes}), "
                             f"got {size}")
        self.num_classes, self.dim, self.capacity = num_classes, dim, size // num_classes
        self.register_buffer("mu", torch.zeros(num_classes, self.capacity, dim))
        self.register_buffer("var", torch.zeros(num_classes, self.capacity, dim) if with_var else None)
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, labels: Tensor, mu: Tensor, var: Optional[Tensor], per_class: int,
                generator: Optional[torch.Generator] = None) -> None:
        """Enqueue up to `per_class` random pixels of each class: labels [P], mu/var [P, D]."""
        if (var is None) != (self.var is None):
            raise ValueError("ClassMemoryBank.enqueue: pass var exactly when the bank stores variances")
        counts = torch.bincount(labels, minlength=self.num_classes)
        take = counts.clamp(max=min(per_class, self.capacity))
        shuffled = torch.randperm(labels.numel(), generator=generator,
                                  device=labels.device if generator is None else generator.device)
        shuffled = shuffled.to(labels.device)
        by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]  # random within class
        cls = labels[by_class]
        rank = torch.arange(cls.numel(), device=cls.device) - (torch.cumsum(counts, 0) - counts)[cls]
        keep = rank < take[cls]
        cls, src = cls[keep], by_class[keep]
        slot = (self.ptr[cls] + rank[keep]) % self.capacity
        # out of place: a loss computed before this call may still need the old queues for backward
        self.mu = self.mu.index_put((cls, slot), mu[src].to(self.mu))
        if self.var is not None and var is not None:
            self.var = self.var.index_put((cls, slot), var[src].to(self.var))
        self.ptr.add_(take).remainder_(self.capacity)
        self.filled.add_(take).clamp_(max=self.capacity)

    def entries(self, cls: int) -> Tuple[Tensor, Optional[Tensor]]:
        """The stored (mu [n, D], var [n, D] or None) of class `cls`, oldest first."""
        n, start = int(self.filled[cls]), int(self.ptr[cls]) if int(self.filled[cls]) == self.capacity else 0
        order = (torch.arange(n, device=self.mu.device) + start) % self.capacity
        return self.mu[cls, order], None if self.var is None else self.var[cls, order]

    def sample_index(self, anchor_classes: Tensor, num_anchors: int, per_class: int,
                     generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """For each anchor, `per_class` uniform entries of every class (into the flat [C*cap, D]
        tables): index [K, A, C*per_class]; valid [K, C*per_class] excludes the anchor's own class
        and empty queues."""
        k, c = anchor_classes.numel(), self.num_classes
        classes = torch.arange(c, device=self.mu.device)
        bound = self.filled.clamp(min=1)[None, None, :, None].expand(k, num_anchors, c, per_class)
        index = classes[:, None] * self.capacity + uniform_below(bound.contiguous(), generator)
        valid = (self.filled > 0)[None, :] & (classes[None, :] != anchor_classes[:, None])
        return (index.reshape(k, num_anchors, c * per_class),
                valid.repeat_interleave(per_class, dim=1))

    def flat(self) -> Tuple[Tensor, Optional[Tensor]]:
        """Views of the queues as [C*cap, D] tables (no copy)."""
        return self.mu.view(-1, self.dim), None if self.var is None else self.var.view(-1, self.dim)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, capacity={self.capacity}"
