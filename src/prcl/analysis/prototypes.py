"""Prototypes of a trained run: the GDP / EMA state in its checkpoint and the logged trajectory.

`prototype_trajectory.pt` (written by the trainer when `train.log_prototypes_every=K > 0`) is a
`torch.save`d dict loadable with `weights_only=True`:
    iterations LongTensor [T]; local, gdp, ema FloatTensor [T, C, D] (each optional; NaN rows
    where a class has no prototype at that step: absent from the batch (local), not yet seen (gdp)).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from prcl.analysis.errors import AnalysisError
from prcl.probabilistic import VN_SOURCES, EMAPrototypes, GlobalDistributionPrototypes, vn_draw_variance

TRAJECTORY_KINDS = ("local", "ema", "gdp")  # the order of Fig. 8's panels


class Prototypes(NamedTuple):
    kind: str  # "gdp" | "ema"
    mean: np.ndarray  # [C, D] float64 (0 where not initialised)
    var: Optional[np.ndarray]  # [C, D] float64 or None (deterministic EMA prototypes)
    initialized: np.ndarray  # [C] bool
    vn_var: dict[str, np.ndarray] = {}  # GDP: the variance VNs are drawn with, by `vn.source`


def _submodule_state(method_state: dict, name: str) -> tuple[str, dict]:
    """The entries of `method_state` under the (unique) submodule whose attribute name is `name`."""
    prefixes = set()
    for key in method_state:
        parts = key.split(".")
        if name in parts[:-1]:
            prefixes.add(".".join(parts[: parts.index(name) + 1]) + ".")
    if len(prefixes) != 1:
        return "", {}
    prefix = prefixes.pop()
    return prefix, {k[len(prefix):]: v for k, v in method_state.items() if k.startswith(prefix)}


def method_prototypes(method_state: dict) -> dict[str, Prototypes]:
    """The GDP (Eq. 9) and/or EMA prototypes (Eq. 16) held in a checkpoint's `method` state, by kind
    ({} for methods without; a run whose positives are local prototypes may still keep a GDP for VNs)."""
    found: dict[str, Prototypes] = {}
    _, gdp = _submodule_state(method_state, "gdp")
    if "precision" in gdp:
        c, d = gdp["precision"].shape
        module = GlobalDistributionPrototypes(c, d)
        module.load_state_dict(gdp)
        found["gdp"] = Prototypes("gdp", module.mean.numpy(), module.var.numpy(), module.initialized.numpy(),
                                  {s: vn_draw_variance(module, s).numpy() for s in VN_SOURCES})
    _, ema = _submodule_state(method_state, "ema")
    if "mean" in ema:
        c, d = ema["mean"].shape
        module = EMAPrototypes(c, d, with_var=ema.get("var") is not None)
        module.load_state_dict(ema)
        var = None if module.var is None else module.var.numpy()
        found["ema"] = Prototypes("ema", module.mean.numpy(), var, module.initialized.numpy())
    return found


def load_prototype_trajectory(path: Path) -> dict[str, np.ndarray]:
    """Read and check `prototype_trajectory.pt`: {"iterations": [T], kind: [T, C, D] float64};
    raises AnalysisError naming the file when it does not have that format."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise AnalysisError(f"{path} is not a loadable prototype trajectory ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or "iterations" not in data:
        raise AnalysisError(f"{path} must hold a dict with 'iterations' and some of {TRAJECTORY_KINDS}")
    iterations = torch.as_tensor(data["iterations"]).long().numpy()
    out: dict[str, np.ndarray] = {"iterations": iterations}
    for kind in TRAJECTORY_KINDS:
        if data.get(kind) is None:
            continue
        arr = torch.as_tensor(data[kind]).double().numpy()
        if arr.ndim != 3 or arr.shape[0] != iterations.shape[0]:
            raise AnalysisError(f"{path}: '{kind}' must be [T, C, D] with T = len(iterations) = "
                             f"{iterations.shape[0]}, got {list(arr.shape)}")
        out[kind] = arr
    if len(out) == 1:
        raise AnalysisError(f"{path} holds none of the prototype kinds {TRAJECTORY_KINDS}")
    shapes = {out[k].shape[1:] for k in TRAJECTORY_KINDS if k in out}
    if len(shapes) != 1:
        raise AnalysisError(f"{path}: the prototype kinds disagree on [C, D]: {sorted(shapes)}")
    return out


def trajectory_drift(trajectory: dict[str, np.ndarray]) -> dict[str, Optional[float]]:
    """Mean L2 step ||p_t - p_{t-1}|| between consecutive logged positions of a class, over classes
    and steps where both are defined, per prototype kind (Fig. 8's "prototype shift")."""
    drift: dict[str, Optional[float]] = {}
    for kind in TRAJECTORY_KINDS:
        if kind not in trajectory:
            continue
        steps = np.linalg.norm(np.diff(trajectory[kind], axis=0), axis=2)  # [T-1, C], NaN if undefined
        finite = steps[np.isfinite(steps)]
        drift[kind] = float(finite.mean()) if finite.size else None
    return drift
