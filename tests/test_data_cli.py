"""`prcl data ...` sub-commands: exit codes, one-line errors, files written."""

from __future__ import annotations

import argparse
import re

import pytest

from fixtures_data import make_voc, voc_id
from prcl.data.cli import add_data_commands
from prcl.data.sources import load_split

TRAIN = [voc_id(i) for i in range(6)]
VAL = [voc_id(i) for i in range(6, 8)]
AUG_ONLY = [voc_id(i) for i in range(8, 10)]


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="prcl")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), TRAIN, VAL, aug_only=AUG_ONLY, with_aug=True)


def test_check_ok_and_failed(voc, tmp_path, capsys):
    assert run("check", "--dataset", "voc", "--root", str(voc), "--quiet") == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    (tmp_path / "labeled.txt").write_text("2099_000001\n")
    code = run("check", "--dataset", "voc", "--root", str(voc), "--split", f"labeled={tmp_path / 'labeled.txt'}", "--quiet")
    out = capsys.readouterr().out
    assert code == 1 and "1 entries not found under root" in out and out.rstrip().endswith("FAILED")


def test_split_writes_lists(voc, tmp_path, capsys):
    code = run("split", "--dataset", "voc", "--root", str(voc), "--labeled", "2", "--seed", "3",
               "--scheme", "classic", "--out", str(tmp_path / "s"), "--quiet")
    assert code == 0
    out = capsys.readouterr().out
    assert "official voc train has 1464" in out and re.search(r"labeled +2 entries", out)
    assert len(load_split("voc", voc, tmp_path / "s" / "labeled.txt")) == 2
    assert len(load_split("voc", voc, tmp_path / "s" / "val.txt")) == len(VAL)
    assert len(load_split("voc", voc, tmp_path / "s" / "unlabeled.txt")) == len(TRAIN + AUG_ONLY) - 2


@pytest.mark.parametrize("argv, message", [
    (["prepare", "voc", "--archives", "{tmp}", "--out", "{tmp}/out", "--quiet"],
     "prcl data prepare: error: missing archive(s) in {tmp}: VOCtrainval_11-May-2012.tar "
     "(download from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"),
    (["split", "--dataset", "voc", "--root", "{voc}", "--labeled", "99", "--out", "{tmp}", "--quiet"],
     "prcl data split: error: cannot choose 99 labeled images out of 6 candidates"),
])
def test_errors_are_one_line_with_exit_code_2(voc, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, voc=voc) for a in argv]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err == message.format(tmp=tmp_path) + "\n"


def test_synth_then_check(tmp_path, capsys):
    root = tmp_path / "synthetic"
    assert run("synth", "--out", str(root), "--num-train", "4", "--num-val", "2", "--image-size", "32", "--seed", "1") == 0
    assert run("check", "--dataset", "synthetic", "--root", str(root), "--quiet", "--workers", "1") == 0
    out = capsys.readouterr().out
    assert re.search(r"split train +4 images +labeled", out) and out.rstrip().endswith("OK")
