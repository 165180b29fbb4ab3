"""Training methods. A method is a small module that turns a batch into loss terms; the trainer
does everything else. Add one with `@register("name")` on a `Method` subclass."""

from __future__ import annotations

from prcl.methods.base import METHODS, Method, build_method, register
from prcl.methods import supervised, mean_teacher, contrastive  # noqa: F401  (register the methods)

__all__ = ["METHODS", "Method", "build_method", "register"]
