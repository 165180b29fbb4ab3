"""Shared fixtures: a tiny synthetic dataset and a tiny-model config that train in seconds on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prcl.config import Config, load_config

torch.set_num_threads(int(os.environ.get("PRCL_TEST_THREADS", "2")))  # 1: tests beside a one-thread benchmark

TINY_MODEL = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.backbone_channels=[8,16,32,64]",
    "model.aspp_channels=16",
    "model.low_level_channels=8",
    "model.head_channels=16",
    "model.rep_dim=16",
    "optim.name=adamw",
    "optim.lr=2e-3",
    "train.channels_last=false",
]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from prcl.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, seed=0, num_train=64, num_val=16, image_size=64)
    return root


def tiny_config(root: Path, out: Path, *overrides: str) -> Config:
    """A config that trains a ~50k-parameter DeepLabv3+ on 48-px crops of `root`."""
    return load_config(None, [
        f"data.root={root}",
        f"output_dir={out}",
        "data.labeled_split=splits/1_4/labeled.txt",
        "data.unlabeled_split=splits/1_4/unlabeled.txt",
        "data.crop_size=48",
        "data.batch_size=4",
        "data.num_workers=0",
        "eval.batch_size=16",
        "method.contrastive.num_anchors=16",
        "method.contrastive.num_negatives=32",
        "train.log_every=5",
        *TINY_MODEL,
        *overrides,
    ])


@pytest.fixture
def make_config(synth_root, tmp_path):
    def make(*overrides: str) -> Config:
        return tiny_config(synth_root, tmp_path / "runs", *overrides)

    return make
