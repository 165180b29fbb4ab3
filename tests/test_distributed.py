"""Two gloo processes on CPU train like one: identical weights and prototypes on both ranks, and the
distributed evaluation equals the single-process evaluation of the same checkpoint."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from prcl.engine import distributed as dist
    from prcl.engine.trainer import Trainer

    cfg = tiny_config(Path(root), Path(out), *overrides)
    trainer = Trainer(cfg)
    trainer.fit()
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"method.{k}": v for k, v in trainer.method.state_dict().items()})
    torch.save(state, Path(out) / f"rank{rank}.pt")
    dist.cleanup()


@pytest.mark.parametrize("method", ["prcl"])
def test_two_process_gloo_training_is_rank_consistent(synth_root, tmp_path, method):
    overrides = [f"method.name={method}", "train.iterations=4", "train.eval_every=4", "data.batch_size=4",
                 "data.max_val_images=7", "name=ddp"]  # 7 val images: not divisible by 2
    mp.start_processes(_worker, args=(2, _free_port(), str(synth_root), str(tmp_path), overrides), nprocs=2,
                       start_method="spawn", join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    assert any(k.startswith("method.") for k in a), "the method state (GDP) should be compared too"

    from prcl.inference import evaluate_checkpoint

    run = tmp_path / "ddp"
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    single = evaluate_checkpoint(run / "checkpoints" / "last.pt", device="cpu")
    assert single["num_images"] == 7
    assert single["miou"] == pytest.approx(logged["miou"], abs=1e-12)

    # resume with another world size: the 2-process checkpoint continues in one process
    from prcl.engine.trainer import Trainer

    cfg = tiny_config(synth_root, tmp_path, *overrides, "train.iterations=6")
    resumed = Trainer(cfg, resume=True, force=True)  # force: train.iterations changed
    assert resumed.start_iteration == 4
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, a[f"model.{k}"]), f"{k} not restored from the 2-process checkpoint"
    summary = resumed.fit()
    assert summary["iterations"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [4, 6]
