from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from prcl.engine import checkpoint as ckpt_mod
from prcl.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "config": {"name": "x"}, "iteration": 1}


def test_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(_state(1.0), path)
    assert load_checkpoint(path)["model"]["w"][0] == 1.0
    save_checkpoint(_state(2.0), path)
    assert load_checkpoint(path)["model"]["w"][0] == 2.0
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["model"]["w"][0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_not_a_checkpoint_and_pickles_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="junk.pt is not a loadable prcl checkpoint"):
        load_checkpoint(junk)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)  # weights_only=True refuses the pickled callable
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a prcl checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"model": {}, "config": {}, "rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
