"""Two gloo processes on CPU train like one: identical weights and prototypes on both ranks, the
distributed evaluation counts the same pixels as the single-process evaluation of the same checkpoint,
one step of the two-process trainer on the halves of a batch equals one single-process step on the whole
batch, and with one or two unlabeled images per process each image is mixed with its partner in the global
batch, for each strong view's shift. Every spawn has a deadline (`spawn.spawn_with_deadline`)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import tiny_config
from spawn import free_port, spawn_with_deadline


def _worker(rank: int, world: int, port: int, root: str, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from prcl import distributed as dist
    from prcl.engine.evaluate import evaluate
    from prcl.engine.trainer import Trainer

    cfg = tiny_config(Path(root), Path(out), *overrides)
    trainer = Trainer(cfg)
    trainer.fit()
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"method.{k}": v for k, v in trainer.method.state_dict().items()})
    evaluated = trainer.teacher.model if trainer.reported_model_name == "teacher" else trainer.model
    cm = evaluate(evaluated, trainer.val_dataset, trainer.info.num_classes, device=torch.device("cpu"),
                  batch_size=cfg.eval.batch_size)  # the trainer's evaluation, sharded over the 2 ranks
    torch.save({"state": state, "confusion": cm.mat}, Path(out) / f"rank{rank}.pt")
    dist.cleanup()


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")


MIX_KINDS = ("classmix", "cutmix", "cutmix_unimatch")
MIX_BATCHES = (1, 2)  # unlabeled images per process: global batches of 2 and 4
VIEWS = 2  # strong views, as UniMatch: shifts 1, 1 at N = 2 and 1, 2 at N = 4


def mix_inputs(batch: int, rank: int) -> dict[str, torch.Tensor]:
    """This process's `batch` unlabeled images: global image g = rank·B + i is constant g (+ noise), its
    pseudo-label has the classes 0 and 1 + g, its truth map is 10 + g."""
    g = torch.Generator().manual_seed(100 * batch + rank)
    index = (rank * batch + torch.arange(batch)).view(-1, 1, 1)
    pseudo = torch.zeros(batch, 16, 16, dtype=torch.long)
    pseudo[:, :, 8:] = 1 + index
    return {"image": index[:, None].float() + 0.01 * torch.rand(batch, 3, 16, 16, generator=g), "pseudo": pseudo,
            "confidence": torch.rand(batch, 16, 16, generator=g), "truth": (10 + index).expand(batch, 16, 16)}


def _mix_worker(rank: int, world: int, port: int, out: str) -> None:
    """Each kind at each batch size, for each view's partner shift (`partner_shifts` of the global batch)."""
    _init(rank, world, port)
    from prcl.data.mixing import mix_masks, mix_strong_view, partner_shifts
    from prcl.distributed import world_size

    result = {}
    for batch in MIX_BATCHES:
        x = mix_inputs(batch, rank)
        shifts = partner_shifts(batch * world_size(), VIEWS)  # as FixMatch/UniMatch compute them
        result[batch] = {"shifts": shifts}
        for kind in MIX_KINDS:
            for shift in shifts:
                torch.manual_seed(3 + shift)  # the same mask draw twice: once to see it, once inside mix_strong_view
                mask = mix_masks(kind, x["pseudo"])
                torch.manual_seed(3 + shift)
                view = mix_strong_view(kind, x["image"], x["pseudo"], x["confidence"], x["truth"], shift=shift)
                result[batch][f"{kind}@{shift}"] = {"mask": mask, "image": view.image, "pseudo": view.pseudo,
                                              "confidence": view.confidence, "truth": view.aligned[0],
                                              "stats": view.stats}
    torch.save(result, f"{out}/mix{rank}.pt")
    torch.distributed.destroy_process_group()


def test_each_image_is_mixed_with_image_g_minus_shift_of_the_global_batch(tmp_path):
    """Two processes with 1 and with 2 unlabeled images each: where the mask says "partner", global image g
    holds the pixels of global image g − k (mod N) for its view's shift k (1 and 2 at N = 4), image,
    pseudo-label, confidence and truth together, never its own; where it says "own", its own.
    `mix/from_other_image` is 1."""
    spawn_with_deadline(_mix_worker, (2, free_port(), str(tmp_path)), timeout=120)
    ranks = [torch.load(tmp_path / f"mix{r}.pt", weights_only=True) for r in range(2)]
    for batch in MIX_BATCHES:
        n = 2 * batch
        everyone = {k: torch.cat([v, mix_inputs(batch, 1)[k]]) for k, v in mix_inputs(batch, 0).items()}  # [N, ...]
        assert ranks[0][batch]["shifts"] == ranks[1][batch]["shifts"] == ([1, 1] if n == 2 else [1, 2])
        for r, rank in enumerate(ranks):
            for kind in MIX_KINDS:
                for shift in rank[batch]["shifts"]:
                    mixed = rank[batch][f"{kind}@{shift}"]
                    partner = ~mixed["mask"]  # [B, H, W]
                    if kind != "cutmix_unimatch":  # UniMatch's box is there with p = 0.5; the others always paste
                        assert partner.flatten(1).any(1).all(), (batch, kind, shift)
                    for i in range(batch):
                        g = r * batch + i
                        where = (batch, r, i, kind, shift)
                        for key in ("image", "pseudo", "confidence", "truth"):
                            m = partner[i] if key != "image" else partner[i][None]
                            want = torch.where(m, everyone[key][(g - shift) % n], everyone[key][g])
                            assert torch.equal(mixed[key][i], want), (*where, key)
                        own = everyone["image"][g][partner[i][None].expand(3, -1, -1)]
                        assert (mixed["image"][i][partner[i][None].expand(3, -1, -1)] != own).all(), where
                    if partner.any():
                        assert mixed["stats"]["mix/from_other_image"] == 1.0
                        assert mixed["stats"]["mix/pasted"] == pytest.approx(float(partner.float().mean()))


def step_batch(num_classes: int = 8) -> dict[str, torch.Tensor]:
    """A fixed global batch of 4 (no ignore pixels, so each half has the same number of valid pixels)."""
    g = torch.Generator().manual_seed(7)
    return {"image": torch.randn(4, 3, 32, 32, generator=g),
            "mask": torch.randint(0, num_classes, (4, 32, 32), generator=g)}


STEP_OVERRIDES = ["method.name=supervised", "optim.name=sgd", "optim.lr=0.1", "train.iterations=2",
                  "data.batch_size=4", "data.max_val_images=2"]


def _steps(trainer, batch: dict[str, torch.Tensor]) -> list[float]:
    """Two `train_step`s on `batch`, with BatchNorm at its running statistics and dropout off (eval mode)."""
    trainer.model.eval()
    trainer.labeled = iter([batch, batch])
    losses = [trainer.train_step(it)[0]["total"] for it in range(2)]
    trainer.lock.release()
    return losses


def _step_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from prcl import distributed as dist
    from prcl.engine.trainer import Trainer

    trainer = Trainer(tiny_config(Path(root), Path(out), *STEP_OVERRIDES, "name=ddp_step"))
    half = {k: v[2 * rank : 2 * rank + 2] for k, v in step_batch().items()}
    losses = _steps(trainer, half)
    torch.save({"losses": losses, "model": trainer.model.state_dict()}, Path(out) / f"step{rank}.pt")
    dist.cleanup()


@pytest.mark.slow
def test_two_process_step_equals_the_single_process_step_on_the_global_batch(synth_root, tmp_path):
    """Gradient averaging makes the 2-process step the 1-process step of the global batch: same SGD
    update, so the same weights to float tolerance, and the mean of the ranks' losses is the global loss.

    Checked with BatchNorm at its running statistics and dropout off (`model.eval()`): in train mode each
    rank's BatchNorm normalises over its own half of the batch (no SyncBN on CPU; the trainer converts to
    SyncBN on CUDA), and dropout, augmentation and anchor sampling draw per-rank random streams, so the
    full 2-process training run is rank-consistent (test above) but not bit-for-bit a 1-process run."""
    spawn_with_deadline(_step_worker, (2, free_port(), str(synth_root), str(tmp_path)), timeout=300)
    ranks = [torch.load(tmp_path / f"step{r}.pt", weights_only=True) for r in range(2)]

    from prcl.engine.trainer import Trainer

    single = Trainer(tiny_config(synth_root, tmp_path, *STEP_OVERRIDES, "name=single_step"))
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    losses = _steps(single, step_batch())

    assert ranks[0]["losses"] != ranks[1]["losses"], "each rank should see its own half"
    for it in range(2):
        assert losses[it] == pytest.approx((ranks[0]["losses"][it] + ranks[1]["losses"][it]) / 2, rel=1e-5)
    weights = single.model.state_dict()
    changed = 0
    for k, v in weights.items():
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), f"{k} differs between ranks"
        assert torch.allclose(ranks[0]["model"][k].double(), v.double(), rtol=1e-4, atol=1e-6), k
        changed += v.is_floating_point() and not torch.equal(v, initial[k])
    assert changed > 10, "the steps should have moved the weights"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prcl", "unimatch_prcl", "unimatch_v2_prcl"])
def test_two_process_gloo_training_is_rank_consistent(synth_root, tmp_path, method):
    """One labeled and one unlabeled image per process (a global batch of 2 + 2, as 16 + 16 on 16 GPUs)."""
    overrides = [f"method.name={method}", "train.iterations=4", "train.eval_every=4", "data.batch_size=2",
                 "data.max_val_images=7", "name=ddp", "train.log_every=1"]  # 7 val images: not divisible by 2
    if method == "prcl":  # an untrained teacher's one-class pseudo-labels give ClassMix nothing to paste
        overrides.append("method.mix=cutmix")
    spawn_with_deadline(_worker, (2, free_port(), str(synth_root), str(tmp_path), overrides), timeout=300)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    a, b = saved[0]["state"], saved[1]["state"]
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    assert any(k.startswith("method.") for k in a), "the method state (GDP) should be compared too"
    run = tmp_path / "ddp"
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    mixed = [r for r in logged if r["mix/pasted"] > 0]
    assert mixed and all(r["mix/from_other_image"] == 1.0 for r in mixed), "mixed with the other process's image"

    # the 2-rank evaluation counts the same pixels as one process evaluating the checkpoint at another batch
    # size: confusion matrices (integers), equal row by row (the true-class counts); a prediction may flip
    # at a float near-tie between the two runs' CPU kernels, so at most 0.1 % of the pixels may move
    from prcl.engine.evaluate import evaluate
    from prcl.inference import model_from_checkpoint

    distributed = saved[0]["confusion"]
    assert torch.equal(distributed, saved[1]["confusion"])
    model, cfg, state = model_from_checkpoint(run / "checkpoints" / "last.pt", "cpu")
    from prcl.data.loaders import build_val_dataset

    _, val = build_val_dataset(cfg)
    assert len(val) == 7
    single = evaluate(model, val, state["num_classes"], device=torch.device("cpu"), batch_size=3).mat
    assert torch.equal(single.sum(1), distributed.sum(1)) and int(single.sum()) > 0
    assert int((single - distributed).abs().sum()) // 2 <= single.sum() // 1000
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    from prcl.engine.metrics import ConfusionMatrix

    logged_cm = ConfusionMatrix(state["num_classes"])
    logged_cm.mat = distributed
    assert metrics["miou"] == logged_cm.miou()  # the logged mIoU is this matrix's

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


def test_ddp_wrapping_skips_the_per_forward_buffer_broadcast_without_a_deprecation_warning(tmp_path):
    """The trainer averages the buffers itself after each step, so DDP must not broadcast them at each forward;
    torch >= 2.13 spells that `forward_sync_buffers=False` (`broadcast_buffers=False` warns, once per rank)."""
    import warnings

    from prcl import distributed as dist

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrapped = dist.data_parallel(model, torch.device("cpu"))
            wrapped(torch.randn(2, 3, 4, 4)).sum().backward()
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert wrapped.broadcast_buffers is False  # torch >= 2.13: a property reading forward_sync_buffers
    finally:
        torch.distributed.destroy_process_group()
