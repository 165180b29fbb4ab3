from __future__ import annotations

import itertools
import random

import torch

from prcl.data.loaders import ResumableSampler, SeededDataset, build_train_data


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_start_offset_equals_skipping():
    full = _take(ResumableSampler(10, seed=3), 35)
    assert _take(ResumableSampler(10, seed=3, start=17), 18) == full[17:]
    epochs = [sorted(i for i, _ in full[e * 10 : (e + 1) * 10]) for e in range(3)]
    assert all(e == list(range(10)) for e in epochs)  # each epoch is a permutation
    assert [i for i, _ in full[:10]] != [i for i, _ in full[10:20]]  # reshuffled per epoch
    assert len({s for _, s in full}) == len(full)  # a fresh augmentation seed per draw


def test_sampler_ranks_partition_each_epoch():
    n, world = 11, 3
    per_rank = [_take(ResumableSampler(n, seed=0, rank=r, world=world), n // world) for r in range(world)]
    idx = [i for part in per_rank for i, _ in part]
    assert len(idx) == len(set(idx)) == (n // world) * world


class RandomDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return (i, random.random(), torch.rand(1).item())


def test_seeded_dataset_is_reproducible_and_leaves_global_rng_alone():
    ds = SeededDataset(RandomDataset())
    random.seed(0), torch.manual_seed(0)
    expected = (random.random(), torch.rand(1).item())
    random.seed(0), torch.manual_seed(0)
    a = ds[(1, 123)]
    assert (random.random(), torch.rand(1).item()) == expected
    assert ds[(1, 123)] == a and ds[(1, 124)] != a


def test_batches_do_not_depend_on_worker_count(make_config):
    def first_batches(workers: int):
        cfg = make_config("method.name=classmix", f"data.num_workers={workers}")
        data = build_train_data(cfg, with_unlabeled=True, start_iteration=2)
        return [next(iter(data.labeled))["image"], next(iter(data.unlabeled))["image_strong"]]

    for a, b in zip(first_batches(0), first_batches(2)):
        assert torch.equal(a, b)
