"""The run's logs: JSON lines (`train_log.jsonl`, `metrics.jsonl`) and TensorBoard, main process only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


TENSORBOARD_DIR = "tb"  # in the run directory


class RunLog:
    def __init__(self, run_dir: Path, *, main: bool, start_iteration: int) -> None:
        self.run_dir, self.main, self.start_iteration = Path(run_dir), main, start_iteration
        self.tb: Optional[Any] = None

    def write(self, filename: str, record: dict, prefix: str) -> None:
        """Append `record` (with an `iteration`) to `filename`, its numbers to TensorBoard `prefix/…` and its
        `warnings` (a list of messages) as TensorBoard text."""
        if not self.main:
            return
        with open(self.run_dir / filename, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.start_iteration + 1 if self.start_iteration else None  # hide events after the checkpoint
            self.tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{prefix}/{k}", v, record["iteration"])
        for message in record.get("warnings", []):
            self.tb.add_text(f"{prefix}/warnings", message, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
