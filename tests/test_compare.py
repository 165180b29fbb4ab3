"""`prcl compare`: the statistics against scipy, the label splits of a dataset without them, what is reused,
resumed or trained again, bad input refused before anything runs, the runner's threads and GPUs, and the
report's numbers against the runs' summary.json recomputed here (fake runs; the real ones:
test_compare_end_to_end.py)."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL
from fixtures_data import make_folder
from PIL import Image
from scipy import stats as scipy_stats

from prcl.cli import main
from prcl.compare import runner as runner_module
from prcl.compare.label_fractions import label_splits
from prcl.compare.matrix import build_matrix, parse_vary, run_name
from prcl.compare.runs import RunState, plan_run
from prcl.compare.stats import T_CRITICAL_95, mean_std, paired_difference, paired_t, t_critical_95
from prcl.config import load_config, save_config
from prcl.data.dataset import DataError
from prcl.data.splits import file_sha256, read_split_file

TINY = ["data.crop_size=48", "data.batch_size=4", "data.num_workers=0", "data.max_val_images=8", "eval.batch_size=16",
        "method.contrastive.num_anchors=16", "method.contrastive.num_negatives=32", *TINY_MODEL,
        "train.iterations=2", "train.eval_every=2", "train.log_every=1", "train.diagnostics_every=0"]


def common(root: Path) -> list[str]:
    return [f"data.root={root}", *TINY]


# --------------------------------------------------------------------------- statistics

def test_paired_t_and_mean_std_match_scipy_and_numpy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8):
        a, b = rng.normal(60, 2, n), rng.normal(59, 2, n)
        expected = scipy_stats.ttest_rel(a, b).statistic
        assert paired_t(list(a - b)) == pytest.approx(expected, rel=1e-12)
        diff = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
        assert diff.t == pytest.approx(expected, rel=1e-12) and diff.df == n - 1
        assert diff.mean == pytest.approx(np.mean(a - b), rel=1e-12)
        mean, std = mean_std(list(a))
        assert mean == pytest.approx(np.mean(a)) and std == pytest.approx(np.std(a, ddof=1))
    assert paired_t([1.5]) is None and mean_std([3.0]) == (3.0, None)
    assert paired_t([2.0, 2.0, 2.0]) == math.inf and paired_t([-1.0, -1.0]) == -math.inf
    # only the seeds both finished are paired
    diff = paired_difference({0: 0.6, 1: 0.7, 2: 0.5}, {1: 0.65, 2: 0.45, 3: 0.9})
    assert sorted(diff.per_seed) == [1, 2] and diff.mean == pytest.approx(0.05)


def test_t_critical_values_match_scipy():
    for df, value in T_CRITICAL_95.items():
        assert value == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=6e-4)
    assert t_critical_95(11) == T_CRITICAL_95[10] >= scipy_stats.t.ppf(0.975, 11)  # conservative in between
    assert t_critical_95(0) is None


# --------------------------------------------------------------------------- label splits

@pytest.fixture
def folder_dataset(tmp_path):
    labeled = [f"img{i:02d}.png" for i in range(40)]
    root = make_folder(tmp_path / "folder", labeled, [f"u{i}.png" for i in range(10)])
    (root / "val.txt").write_text("".join(f"images/{name}\n" for name in labeled[::5]))  # 8 val images
    return root


def _ids(path) -> list[str]:
    return [e.image for e in read_split_file(Path(path)).entries]


def test_folder_dataset_gets_nested_seeded_recorded_splits(folder_dataset, tmp_path):
    cfg = load_config(None, ["data.dataset=folder", f"data.root={folder_dataset}", "data.val_split=val.txt"])
    out = tmp_path / "cmp"
    splits = label_splits(cfg, ["1_8", "1_4", "full"], out, seed=3)
    val = set(_ids(folder_dataset / "val.txt"))
    labeled = {f: _ids(s.labeled) for f, s in splits.items()}
    assert {f: len(v) for f, v in labeled.items()} == {"1_8": 4, "1_4": 8, "full": 32}  # 40 - 8 val
    assert {f: s.num_labeled for f, s in splits.items()} == {"1_8": 4, "1_4": 8, "full": 32}
    assert set(labeled["1_8"]) < set(labeled["1_4"]) < set(labeled["full"])  # nested
    for f, s in splits.items():
        unlabeled = set(_ids(s.unlabeled))
        assert not (unlabeled & set(labeled[f])) and not (unlabeled | set(labeled[f])) & val
        assert len(unlabeled) == 32 + 10 - len(labeled[f])  # the rest of the pool and unlabeled/
    manifest = json.loads((out / "splits" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["val_images"] == 8 and manifest["fractions"]["1_4"]["labeled"] == 8
    assert manifest["labeled_pool"]["images"] == 32
    # made once: a second call (another fraction added) keeps the lists, and another out gives the same
    stamp = (out / "splits" / "1_4" / "labeled.txt").stat().st_mtime_ns
    again = label_splits(cfg, ["1_4", "1_2"], out, seed=3)
    assert (out / "splits" / "1_4" / "labeled.txt").stat().st_mtime_ns == stamp
    assert set(labeled["1_4"]) < set(_ids(again["1_2"].labeled))
    assert _ids(label_splits(cfg, ["1_4"], tmp_path / "other", seed=3)["1_4"].labeled) == labeled["1_4"]
    assert _ids(label_splits(cfg, ["1_4"], tmp_path / "seed4", seed=4)["1_4"].labeled) != labeled["1_4"]
    with pytest.raises(DataError, match="another dataset or seed"):
        label_splits(cfg, ["1_4"], out, seed=4)
    with pytest.raises(DataError, match="less than one image"):
        label_splits(cfg, ["1_64"], out, seed=3)


def test_folder_dataset_without_val_split_is_refused(folder_dataset, tmp_path):
    cfg = load_config(None, ["data.dataset=folder", f"data.root={folder_dataset}", "data.val_split=missing.txt"])
    with pytest.raises(DataError, match="missing.txt"):
        label_splits(cfg, ["1_4"], tmp_path / "cmp")


def test_shipped_splits_are_used_and_a_missing_fraction_is_named(synth_root, tmp_path):
    cfg = load_config(None, [f"data.root={synth_root}"])
    splits = label_splits(cfg, ["1_4", "full"], tmp_path / "cmp")
    assert splits["1_4"].labeled == "splits/1_4/labeled.txt" and splits["1_4"].num_labeled == 16
    assert splits["full"].unlabeled is None and splits["full"].num_labeled == 64
    assert not (tmp_path / "cmp").exists()  # nothing made for a dataset that ships its splits
    with pytest.raises(DataError, match="no label fraction 1_3.*1_16"):
        label_splits(cfg, ["1_3"], tmp_path / "cmp")


# --------------------------------------------------------------------------- matrix, names and bad input

def test_run_names_are_readable_and_unique():
    lam, it = parse_vary("method.contrastive.lambda0=0.25,1"), parse_vary("train.iterations=400,1600")
    assert run_name("prcl", "1_16", [(lam, "0.25"), (it, "400")], 2) == "prcl-1_16-lambda0_0.25-iterations_400-s2"
    assert parse_vary("model.backbone_channels=[8,16,32,64],[4,8,16,32]").values == ("[8,16,32,64]", "[4,8,16,32]")
    twins = [(parse_vary("model.rep_dim=8"), "8"), (parse_vary("other.rep_dim=1"), "1")]  # same last part
    assert run_name("prcl", "1_4", twins, 0) == "prcl-1_4-model.rep_dim_8-other.rep_dim_1-s0"
    assert run_name("prcl", "1_4", [(parse_vary("model.weights=a/b c"), "a/b c")], 0) == "prcl-1_4-weights_a_b_c-s0"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "supervised,clasmix"], "must be one of"),
    (["--labels", "1_4,1_3"], "no label fraction 1_3"),
    (["--labels", "1/4"], "must look like 1_16"),
    (["train.iteratons=2"], "did you mean 'train.iterations'"),
    (["--vary", "train.iteratons=1,2"], "did you mean 'train.iterations'"),
    (["--vary", "method.contrastive.lambda0=0.5,x"], "lambda0"),
    (["--vary", "method.name=prcl,classmix"], "use --methods"),
    (["--vary", "data.root=a,b"], "runs on one dataset"),
    (["seed=4"], "use --seeds"),
    (["--reference", "prcl"], "not one of the compared methods"),
    (["--methods", "supervised,classmix", "--labels", "1_4,full"], "classmix needs unlabeled images"),
])
def test_bad_input_fails_before_anything_runs(synth_root, tmp_path, monkeypatch, capsys, argv, message):
    def no_run(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(runner_module.subprocess, "run", no_run)
    defaults = {"--methods": "supervised,classmix", "--labels": "1_4"}
    flags = [w for k, v in defaults.items() if k not in argv for w in (k, v)]
    out = tmp_path / "cmp"
    assert main(["compare", *flags, "--out", str(out), *argv, *common(synth_root)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists() and not (out / "logs").exists()


# --------------------------------------------------------------------------- reuse, resume, train again

def _one_run(root: Path, out: Path, *extra: str):
    return build_matrix(["classmix"], ["1_4"], [0], overrides=[*common(root), *extra], out=out).runs[0]


def test_what_is_on_disk_decides_reuse_resume_or_train_again(synth_root, tmp_path):
    out = tmp_path / "cmp"
    spec = _one_run(synth_root, out)
    assert plan_run(spec).state is RunState.NEW
    run = spec.run_dir
    run.mkdir(parents=True)
    save_config(load_config(None, spec.train_overrides(threads=7)), run / "config.yaml")  # threads: runner's choice
    assert plan_run(spec).state is RunState.RESTART  # started, no checkpoint yet
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert plan_run(spec).state is RunState.RESUME
    assert plan_run(_one_run(synth_root, out, "train.log_every=2")).state is RunState.RESTART
    (run / "summary.json").write_text(json.dumps({"miou": 0.5}))
    assert plan_run(spec).state is RunState.DONE
    changed = plan_run(_one_run(synth_root, out, "method.contrastive.lambda0=0.5"))
    assert changed.state is RunState.STALE and changed.reason == "config changed: method.contrastive.lambda0"
    # the split lists it recorded must still hold the same images
    split = tmp_path / "labeled.txt"
    split.write_text("a\n")
    (run / "split").mkdir()
    manifest = {"splits": {"labeled": {"source": str(split), "sha256": file_sha256(split)}}}
    (run / "split" / "manifest.json").write_text(json.dumps(manifest))
    assert plan_run(spec).state is RunState.DONE
    split.write_text("b\n")
    assert plan_run(spec).reason == "split lists changed: labeled"


def test_dry_run_prints_one_command_per_pending_run(synth_root, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "supervised,classmix", "--labels", "1_4,1_2", "--seeds", "0,1", "--out", str(out),
            "--jobs", "2", "--dry-run", *common(synth_root)]
    done = build_matrix(["supervised"], ["1_4"], [1], overrides=common(synth_root), out=out).runs[0]
    done.run_dir.mkdir(parents=True)
    save_config(done.config, done.run_dir / "config.yaml")
    (done.run_dir / "summary.json").write_text("{}")
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 7 and not any(f"name={done.name} " in line for line in lines)
    for line in lines:
        words = shlex.split(line)
        assert words[0] == f"OMP_NUM_THREADS={runner_module.threads_per_job(2)}" and words[1].startswith("MKL_")
        assert words[2:6] == [sys.executable, "-m", "prcl", "train"] and "--overwrite" in words
        assert load_config(None, [w for w in words[6:] if "=" in w]).name in line  # parses as a config


def test_runner_gives_each_gpu_job_one_device_and_each_cpu_job_its_thread_share(synth_root, tmp_path, monkeypatch):
    matrix = build_matrix(["supervised", "classmix"], ["1_4", "1_2"], [0, 1], overrides=common(synth_root),
                          out=tmp_path / "cmp")
    planned = [plan_run(spec) for spec in matrix.runs]
    lock, busy, seen = threading.Lock(), set(), []

    def fake_run(cmd, stdout, stderr, cwd, env):
        device = env.get("CUDA_VISIBLE_DEVICES")
        with lock:
            assert device is None or device not in busy, "two runs on one GPU"
            busy.add(device)
            seen.append((device, env["OMP_NUM_THREADS"], [w for w in cmd if w.startswith("train.threads=")]))
        time.sleep(0.02)
        with lock:
            busy.discard(device)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner_module.subprocess, "run", fake_run)
    gpus = runner_module.Runner(4, devices=["3", "5"], progress=False)  # more jobs than GPUs: one per GPU
    assert gpus.jobs == 2 and all(o.ok for o in gpus.run(planned))
    assert len(seen) == 8 and {d for d, _, _ in seen} == {"3", "5"}
    seen.clear()
    monkeypatch.setattr(runner_module, "cpu_count", lambda: 16)
    assert all(o.ok for o in runner_module.Runner(3, progress=False).run(planned))
    assert {(d, t, tuple(w)) for d, t, w in seen} == {(None, "5", ("train.threads=5",))}  # 16 // 3


# --------------------------------------------------------------------------- the report against summary.json

def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _table(md: str, heading: str) -> list[list[str]]:
    block = md.split(f"## {heading}")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    return rows[:1] + rows[2:]  # header and body, without the --- row


def test_report_numbers_equal_the_runs_summaries(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module.subprocess, "run", lambda *a, **k: pytest.fail("collect-only trained"))
    out, seeds = tmp_path / "cmp", [0, 1, 2]
    vary = ["--vary", "method.contrastive.lambda0=0.25,1"]
    matrix = build_matrix(["supervised", "classmix", "prcl"], ["1_4", "1_2"], seeds, vary[1:], common(synth_root),
                          out=out)
    rng = np.random.default_rng(1)
    summaries = {}
    for spec in matrix.runs:
        if spec.name == "prcl-1_2-lambda0_1-s2":
            continue  # never finished
        spec.run_dir.mkdir(parents=True)
        cfg = spec.config if spec.name != "classmix-1_4-lambda0_1-s1" else load_config(
            None, [*spec.train_overrides(), "train.iterations=3"])  # finished under another config: not counted
        save_config(cfg, spec.run_dir / "config.yaml")
        miou = float(rng.uniform(0.4, 0.7))
        by_model = {"student": miou} if spec.axes["method"] == "supervised" else {"student": miou - 0.01,
                                                                                  "teacher": miou}
        summaries[spec.name] = {"method": spec.axes["method"], "miou": miou, "miou_by_model": by_model,
                                "evaluated_model": "teacher" if len(by_model) > 1 else "student",
                                "best_miou": miou + 0.02, "iterations": 2, "wall_seconds": float(rng.uniform(1, 9))}
        (spec.run_dir / "summary.json").write_text(json.dumps(summaries[spec.name]))
    del summaries["classmix-1_4-lambda0_1-s1"]
    argv = ["compare", "--methods", "supervised,classmix,prcl", "--labels", "1_4,1_2", "--seeds", "0,1,2",
            "--out", str(out), *vary, "--collect-only", *common(synth_root)]
    assert main(argv) == 0

    rows = {r["run"]: r for r in _csv(out / "results.csv")}
    assert len(rows) == len(matrix.runs) == 36
    for name, row in rows.items():
        summ = summaries.get(name)
        if summ is None:
            assert row["status"] == "not finished" and row["miou"] == ""
            continue
        assert float(row["miou"]) == summ["miou"] and row["reported_model"] == summ["evaluated_model"]
        assert float(row["best_miou"]) == summ["best_miou"]
        assert float(row["miou_student"]) == summ["miou_by_model"]["student"]
        assert row["miou_teacher"] == "" if row["method"] == "supervised" else \
            float(row["miou_teacher"]) == summ["miou_by_model"]["teacher"]
        assert float(row["wall_seconds"]) == summ["wall_seconds"] and row["num_labeled"] in ("16", "32")
        assert Path(row["run_dir"]).name == name

    def seed_mious(method, fraction, lam):
        return {s: 100 * summaries[n]["miou"] for s in seeds
                if (n := f"{method}-{fraction}-lambda0_{lam}-s{s}") in summaries}

    md = (out / "results.md").read_text()
    table = _table(md, "mIoU (%)")
    assert table[0] == ["method", "method.contrastive.lambda0", "1_4 (16 labeled)", "1_2 (32 labeled)"]
    for method, lam, *cell_texts in table[1:]:
        for fraction, text in zip(["1_4", "1_2"], cell_texts):
            values = list(seed_mious(method, fraction, lam).values())
            mean, std, n = re.fullmatch(r"([\d.]+) ± ([\d.]+) \(n = (\d)\)", text).groups()
            assert int(n) == len(values) and abs(float(mean) - np.mean(values)) <= 0.006
            assert abs(float(std) - np.std(values, ddof=1)) <= 0.006
    diffs = _table(md, "Paired differences against supervised (mIoU points)")
    assert len(diffs) == 1 + 2 * 2 * 2
    for method, lam, fraction, per_seed, mean, t_text, verdict in diffs[1:]:
        a, b = seed_mious(method, fraction, lam), seed_mious("supervised", fraction, lam)
        common_seeds = sorted(set(a) & set(b))
        assert per_seed == ", ".join(f"s{s} {a[s] - b[s]:+.2f}" for s in common_seeds)
        assert abs(float(mean) - np.mean([a[s] - b[s] for s in common_seeds])) <= 0.006
        t = scipy_stats.ttest_rel([a[s] for s in common_seeds], [b[s] for s in common_seeds]).statistic
        assert t_text == f"{t:+.2f} ({len(common_seeds) - 1})"
        assert verdict.startswith("yes" if abs(t) > T_CRITICAL_95[len(common_seeds) - 1] else "no")
    assert "`prcl-1_2-lambda0_1-s2`: not finished" in md and "`classmix-1_4-lambda0_1-s1`: not finished" in md
    with Image.open(out / "miou_vs_labels.png") as img:
        assert img.size[0] > 300 and img.size[1] > 200
