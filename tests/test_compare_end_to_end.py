"""`prcl compare` end to end on a real matrix of tiny runs (2 methods × 2 label fractions × 2 seeds): the cluster
path (a `--dry-run` line run by a shell) then the local one, the results against the runs' summary.json, an
interrupted matrix resumed without touching finished runs while a planted failure is reported with its log
tail, and a changed override trained again."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_compare import _csv, _table, common

from prcl.cli import main
from prcl.compare import runner as runner_module
from prcl.compare.matrix import build_matrix
from prcl.data.synthetic import CLASS_NAMES

pytestmark = pytest.mark.slow


MATRIX = ["--methods", "supervised,classmix", "--labels", "1_4,1_2", "--seeds", "0,1", "--jobs", "2"]


@pytest.fixture(scope="module")
def finished_matrix(synth_root, tmp_path_factory):
    """The cluster path then the local one: `--dry-run`, one printed line run by a shell, `prcl compare` for
    the rest. Returns (argv, out, the shell-run run's name, its summary's mtime before the compare)."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    config = out.parent / "tiny.yaml"
    config.write_text("train: {iterations: 2, eval_every: 2}\n")
    argv = ["compare", *MATRIX, "--out", str(out), "-c", str(config), *common(synth_root)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--dry-run"]) == 0
    lines = [line for line in printed.getvalue().splitlines() if not line.startswith("#")]
    assert len(lines) == 8 and not (out / "runs").exists()
    shell = subprocess.run(["bash", "-c", lines[0]], capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr[-2000:]
    name = re.search(r" name=(\S+)", lines[0]).group(1)
    stamp = (out / "runs" / name / "summary.json").stat().st_mtime_ns
    assert main(argv) == 0
    return argv, out, name, stamp


def _stamps(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}


def test_matrix_writes_tables_csv_and_plot_from_the_runs(finished_matrix):
    _, out, shell_run, stamp = finished_matrix
    assert _stamps(out)[shell_run] == stamp  # the run the shell trained was reused, not trained again
    rows = list(_csv(out / "results.csv"))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert float(row["miou"]) == summary["miou"] and int(row["iterations"]) == summary["iterations"] == 2
        assert (row["miou_teacher"] != "") == (row["method"] == "classmix")
    md = (out / "results.md").read_text()
    for method, *cells_ in _table(md, "mIoU (%)")[1:]:
        for fraction, text in zip(["1_4", "1_2"], cells_):
            values = [100 * float(r["miou"]) for r in rows if r["method"] == method and r["labels"] == fraction]
            assert abs(float(text.split(" ")[0]) - np.mean(values)) <= 0.006
    assert "Paired differences against supervised" in md
    assert (out / "miou_vs_labels.png").stat().st_size > 10_000
    per_class = _table(md, "IoU per class (%)")
    assert per_class[0][2:] == list(CLASS_NAMES)  # the dataset's class names head the columns
    for method, fraction, *cells_ in per_class[1:]:
        runs = [Path(r["run_dir"]) for r in rows if r["method"] == method and r["labels"] == fraction]
        last = [json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["per_class_iou"] for run in runs]
        assert np.allclose([float(c) for c in cells_], 100 * np.mean(last, axis=0), atol=0.006)


def test_interrupted_matrix_resumes_and_a_failure_does_not_stop_the_others(finished_matrix, monkeypatch, capsys):
    from prcl.engine.trainer import Trainer

    argv, out, _, _ = finished_matrix
    matrix = build_matrix(["supervised", "classmix"], ["1_4", "1_2"], [0, 1], [],
                          argv[argv.index("-c") + 2:], Path(argv[argv.index("-c") + 1]), out)
    specs = {s.name: s for s in matrix.runs}
    interrupted, lost, failing = specs["classmix-1_2-s1"], specs["supervised-1_2-s0"], specs["classmix-1_4-s0"]
    for spec in (interrupted, lost, failing):
        shutil.rmtree(spec.run_dir)
    trainer = Trainer(interrupted.config)  # a crash after iteration 1's checkpoint
    trainer._stop_signal = None
    trainer.train_step(0)
    trainer.save(1)
    trainer._close()
    before = _stamps(out)
    real_command = runner_module.train_command

    def planted(run, threads):
        if run.spec.name == failing.name:
            return [sys.executable, "-c", "print('loading'); print('planted failure: out of memory'); exit(3)"]
        return real_command(run, threads)

    monkeypatch.setattr(runner_module, "train_command", planted)
    capsys.readouterr()
    assert main(argv) == 1  # the failure makes the exit status non-zero, at the end
    printed = capsys.readouterr().out
    assert "1 to resume, 2 to train" in printed and "FAILED classmix-1_4-s0" in printed
    assert "planted failure: out of memory" in printed
    after = _stamps(out)
    assert {k: v for k, v in after.items() if k in before} == before  # the finished runs were not touched
    assert set(after) - set(before) == {interrupted.name, lost.name}
    attempts = [line for line in interrupted.log_path.read_text().splitlines() if line.startswith("# ")]
    assert "--resume" not in attempts[0] and "--resume" in attempts[-1]  # its log keeps both attempts
    md = (out / "results.md").read_text()
    assert "`classmix-1_4-s0`: failed" in md and "planted failure: out of memory" in md
    rows = {r["run"]: r["status"] for r in _csv(out / "results.csv")}
    assert rows[failing.name] == "failed" and sum(s == "finished" for s in rows.values()) == 7


def test_a_changed_override_trains_the_run_again(finished_matrix, capsys):
    argv, out, _, _ = finished_matrix
    before = _stamps(out)
    subset = ["compare", "--methods", "supervised", "--labels", "1_4", "--seeds", "0", "--out", str(out),
              *argv[argv.index("-c"):], "train.log_every=2"]
    capsys.readouterr()
    assert main(subset) == 0
    assert "supervised-1_4-s0: train again (config changed: train.log_every)" in capsys.readouterr().out
    after = _stamps(out)
    assert after["supervised-1_4-s0"] != before["supervised-1_4-s0"]
    assert {k: v for k, v in after.items() if k != "supervised-1_4-s0"} == \
        {k: v for k, v in before.items() if k != "supervised-1_4-s0"}
    assert "log_every: 2" in (out / "runs" / "supervised-1_4-s0" / "config.yaml").read_text()
