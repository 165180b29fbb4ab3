"""Prototype trajectories over training (Fig. 8): local, EMA and GDP prototypes every K iterations.

Saved as `run_dir/prototype_trajectory.pt` = {"iterations": [T], "local"/"gdp"/"ema": [T, C, D]}
(float32, NaN rows for classes without a prototype at that time), loadable with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prcl.engine.checkpoint import save_checkpoint

TRAJECTORY_FILE = "prototype_trajectory.pt"  # in the run directory


class PrototypeTrajectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, list[torch.Tensor]] = {"iterations": []}
        if self.path.is_file():  # a resumed run continues its trajectory
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            self.records = {k: list(v) for k, v in state.items()}

    def record(self, iteration: int, prototypes: dict[str, torch.Tensor]) -> None:
        """Append a method's prototypes (`Method.prototypes()`: {kind: [C, D]}, NaN rows for classes it
        has none of); a no-op for methods without prototypes."""
        if not prototypes:
            return
        keep = [i for i, it in enumerate(self.records["iterations"]) if int(it) < iteration]
        self.records = {k: [v[i] for i in keep] for k, v in self.records.items()}  # drop replayed steps
        entry = {"iterations": torch.tensor(iteration), **{k: v.float().cpu() for k, v in prototypes.items()}}
        for k, v in entry.items():
            self.records.setdefault(k, []).append(v)

    def save(self) -> None:
        if self.records["iterations"]:
            save_checkpoint({k: torch.stack(v) for k, v in self.records.items()}, self.path)
