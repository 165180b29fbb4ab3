"""Training methods. A method is a small module that turns a batch into loss terms; the trainer
does everything else. Add one with a row for its name in `prcl.config.presets.METHOD_PRESETS` and
`@register("name")` on a `Method` subclass."""

from __future__ import annotations

from prcl.methods.base import METHODS, Method, StepLosses, build_method, register, reported_model_name
from prcl.methods import supervised, mean_teacher, fixmatch, unimatch, unimatch_v2  # noqa: F401  (register the methods)

__all__ = ["METHODS", "Method", "StepLosses", "build_method", "register", "reported_model_name"]
