"""`torchrun` from an empty folder (issue 27): rank 0 generates the built-in dataset while the other rank
waits, then both train; a failure on rank 0 reaches every rank as the same error instead of a hang."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from spawn import free_port, spawn_with_deadline

pytestmark = pytest.mark.slow  # end-to-end trainings or spawned processes: `-m "not slow"` skips them

DEADLINE_SECONDS = 300


def _train_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """Train 2 steps from `root` (the default synthetic dataset, generated if missing); record what happened."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from prcl import distributed as dist
    from prcl.config import load_config
    from prcl.engine.trainer import Trainer

    cfg = load_config(None, [f"data.root={root}", f"output_dir={out}", "name=fresh", "data.crop_size=48",
                             "data.batch_size=2", "data.max_val_images=3", "train.iterations=2",
                             "train.diagnostics_every=0", "method.contrastive.num_anchors=8",
                             "method.contrastive.num_negatives=16", *TINY_MODEL])
    try:
        summary = Trainer(cfg).fit()
        result = {"iterations": summary["iterations"]}
    except Exception as err:  # noqa: BLE001 - the test compares what each rank raised
        result = {"error": type(err).__name__, "message": str(err)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.cleanup()


def _run_two_ranks(root: Path, out: Path) -> list[dict]:
    spawn_with_deadline(_train_worker, args=(2, free_port(), str(root), str(out)), timeout=DEADLINE_SECONDS)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_train_from_an_empty_folder(tmp_path, capfd):
    """Rank 0 alone generates (once: the other rank's copy renamed over it would pull the files from under
    a rank already reading them), and both ranks train."""
    root = tmp_path / "data" / "synthetic"
    ranks = _run_two_ranks(root, tmp_path / "runs")
    assert ranks == [{"iterations": 2}] * 2
    assert capfd.readouterr().out.count("generating the built-in synthetic dataset") == 1
    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"]["num_train"] == 2000  # the default dataset, whole
    assert len(list((root / "JPEGImages").iterdir())) == 2300
    assert not list(tmp_path.joinpath("data").glob(".synthetic.partial-*")), "a second copy was written"
    assert (tmp_path / "runs" / "fresh" / "checkpoints" / "last.pt").is_file()


def test_a_failure_on_rank_0_stops_every_rank_with_the_same_error(tmp_path):
    """A root holding someone else's files: rank 0 refuses to generate there, and rank 1, which never looks,
    raises the same DataError (not a timeout at its next collective)."""
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("not a dataset")
    ranks = _run_two_ranks(root, tmp_path / "runs")
    assert ranks[0]["error"] == "DataError" and "notes.txt" in ranks[0]["message"]
    assert ranks[1] == ranks[0]
