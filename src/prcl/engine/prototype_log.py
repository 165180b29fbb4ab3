"""Prototype trajectories over training (Fig. 8): local, EMA and GDP prototypes every K iterations.

Saved as `run_dir/prototype_trajectory.pt` = {"iterations": [T], "local"/"gdp"/"ema": [T, C, D]}
(float32, NaN rows for classes without a prototype at that time), loadable with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from prcl.engine.checkpoint import save_checkpoint


class PrototypeTrajectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, list[torch.Tensor]] = {"iterations": []}
        if self.path.is_file():  # a resumed run continues its trajectory
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            self.records = {k: list(v) for k, v in state.items()}

    @staticmethod
    def _masked(mean: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        return torch.where(ok[:, None], mean, torch.full_like(mean, float("nan"))).float().cpu()

    def record(self, iteration: int, loss: Optional[torch.nn.Module]) -> None:
        """Append the prototypes held by a `PRCLContrastiveLoss` (no-op for methods without one)."""
        if loss is None or getattr(loss, "last_local_mean", None) is None:
            return
        keep = [i for i, it in enumerate(self.records["iterations"]) if int(it) < iteration]
        self.records = {k: [v[i] for i in keep] for k, v in self.records.items()}  # drop replayed steps
        entry = {"iterations": torch.tensor(iteration), "local": loss.last_local_mean.float().cpu()}
        if loss.gdp is not None:
            entry["gdp"] = self._masked(loss.gdp.mean, loss.gdp.initialized)
        if loss.ema is not None:
            entry["ema"] = self._masked(loss.ema.mean, loss.ema.initialized)
        for k, v in entry.items():
            self.records.setdefault(k, []).append(v)

    def save(self) -> None:
        if self.records["iterations"]:
            save_checkpoint({k: torch.stack(v) for k, v in self.records.items()}, self.path)
