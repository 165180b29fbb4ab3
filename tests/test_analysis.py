"""`prcl analyze`: Table-4 metrics against sklearn and float64 brute force, samplers, prototype
readers, and every figure of a short real run (alone and compared with a second run)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import davies_bouldin_score, silhouette_score
from threadpoolctl import threadpool_limits

from conftest import tiny_config
from prcl.analysis import AnalysisError, add_analyze_command, analyze_run, representation_quality, sample_per_class
from prcl.analysis.embedding import ClassReservoir
from prcl.analysis.prototypes import load_prototype_trajectory, method_prototypes, trajectory_drift
from prcl.data.loaders import build_val_dataset
from prcl.engine.checkpoint import load_checkpoint
from prcl.inference import model_from_checkpoint
from prcl.probabilistic import EMAPrototypes, GlobalDistributionPrototypes


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread():
    """sklearn's Barnes-Hut t-SNE spins OpenMP threads; on a shared 2-core runner that is 5x slower.
    (Imported first: threadpoolctl only limits the OpenMP runtimes already loaded.)"""
    import sklearn.manifold  # noqa: F401

    with threadpool_limits(1, user_api="openmp"):
        yield


# ------------------------------------------------------------------ independent references
def brute_silhouette(x: np.ndarray, y: np.ndarray) -> float:
    """Rousseeuw's silhouette with explicit float64 loops over points."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    scores = []
    for i in range(len(x)):
        same = (y == y[i]) & (np.arange(len(x)) != i)
        if not same.any():
            scores.append(0.0)
            continue
        a = d[i, same].mean()
        b = min(d[i, y == c].mean() for c in np.unique(y) if c != y[i])
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


def brute_davies_bouldin(x: np.ndarray, y: np.ndarray) -> float:
    classes = np.unique(y)
    cent = np.stack([x[y == c].mean(0) for c in classes])
    scatter = np.array([np.linalg.norm(x[y == c] - cent[k], axis=1).mean() for k, c in enumerate(classes)])
    worst = [max((scatter[i] + scatter[j]) / np.linalg.norm(cent[i] - cent[j])
                 for j in range(len(classes)) if j != i) for i in range(len(classes))]
    return float(np.mean(worst))


def clusters(separation: float, n: int = 60, classes: int = 4, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    centres *= separation / np.linalg.norm(centres[0] - centres[1])
    y = np.repeat(np.arange(classes), n)
    return centres[y] + rng.standard_normal((len(y), dim)), y


# ------------------------------------------------------------------ metrics and samplers
def test_metrics_match_brute_force_and_order_by_separation():
    far, near = clusters(40.0), clusters(0.5)
    q_far, q_near = representation_quality(*far), representation_quality(*near)
    for (x, y), q in ((far, q_far), (near, q_near)):
        assert q["silhouette"] == pytest.approx(brute_silhouette(x, y), abs=1e-10)
        assert q["davies_bouldin"] == pytest.approx(brute_davies_bouldin(x, y), rel=1e-10)
        assert q["num_samples"] == len(y) and q["samples_per_class"] == {c: 60 for c in range(4)}
    assert q_far["silhouette"] > 0.85 and q_far["davies_bouldin"] < 0.25
    assert q_near["silhouette"] < 0.1 and q_near["davies_bouldin"] > 2.0


def test_per_class_sampling_equals_direct_sklearn_on_the_same_sample():
    x, y = clusters(3.0, n=80)
    y = y.copy()
    y[:70] = 0  # class 0: 70 + ... items, so some classes are capped and one is not
    q = representation_quality(x, y, max_per_class=25, seed=3)
    keep = sample_per_class(y, 25, seed=3)
    assert q["silhouette"] == silhouette_score(x[keep], y[keep])
    assert q["davies_bouldin"] == davies_bouldin_score(x[keep], y[keep])
    assert all(n <= 25 for n in q["samples_per_class"].values())


def test_sample_per_class_caps_keeps_small_classes_and_is_seeded():
    y = np.array([0] * 50 + [1] * 3 + [2] * 20)
    a, b, c = sample_per_class(y, 10, 0), sample_per_class(y, 10, 0), sample_per_class(y, 10, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a]).tolist() == [10, 3, 10]
    assert len(set(a.tolist())) == len(a)
    with pytest.raises(ValueError, match="max_per_class must be >= 1"):
        sample_per_class(y, 0)


def test_class_reservoir_is_a_uniform_sample_independent_of_chunking():
    feats = np.arange(40, dtype=np.float32)[:, None].repeat(2, 1)
    labels = np.array([0] * 10 + [1] * 30)
    whole, parts = ClassReservoir(3, 4, seed=5), ClassReservoir(3, 4, seed=5)
    whole.add(feats, labels)
    for chunk in np.array_split(np.arange(40), 5):
        parts.add(feats[chunk], labels[chunk])
    (fa, la), (fb, lb) = whole.sample(), parts.sample()
    assert sorted(fa[:, 0].tolist()) == sorted(fb[:, 0].tolist())
    assert np.bincount(la).tolist() == [4, 4] and whole.offered.tolist() == [10, 30, 0]
    counts = np.zeros(10)
    for seed in range(1500):  # every item of a class of 10 is kept with probability 4/10
        r = ClassReservoir(1, 4, seed=seed)
        for chunk in np.array_split(np.arange(10), 3):
            r.add(feats[chunk], np.zeros(len(chunk), dtype=np.int64))
        counts[r.sample()[0][:, 0].astype(int)] += 1
    assert np.abs(counts / 1500 - 0.4).max() < 0.05


def test_quality_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        representation_quality(np.zeros((5, 3)), np.zeros(5, dtype=int))


# ------------------------------------------------------------------ prototype state and trajectories
def test_method_prototypes_reads_gdp_and_ema_buffers():
    torch.manual_seed(0)
    gdp = GlobalDistributionPrototypes(4, 3)
    mu, var = torch.randn(2, 3), torch.rand(2, 3) + 0.1
    gdp.update(torch.tensor([1, 3]), mu, var)
    state = {f"contrastive.gdp.{k}": v for k, v in gdp.state_dict().items()}
    p = method_prototypes(state)["gdp"]
    assert p.kind == "gdp" and p.initialized.tolist() == [False, True, False, True]
    np.testing.assert_allclose(p.mean[[1, 3]], mu.double().numpy(), rtol=1e-12)
    np.testing.assert_allclose(p.var[[1, 3]], var.double().numpy(), rtol=1e-6)
    ema = EMAPrototypes(4, 3)
    ema.update(torch.tensor([2]), mu[:1])
    both = method_prototypes({**state, **{f"contrastive.ema.{k}": v for k, v in ema.state_dict().items()}})
    p = both["ema"]
    assert p.kind == "ema" and p.var is None and p.initialized.tolist() == [False, False, True, False]
    assert set(both) == {"gdp", "ema"} and method_prototypes({}) == {}


def test_trajectory_loader_checks_shapes_and_drift_matches_a_loop(tmp_path):
    g = torch.Generator().manual_seed(0)
    local = torch.randn(5, 3, 4, generator=g)
    local[2, 1] = float("nan")
    path = tmp_path / "traj.pt"
    torch.save({"iterations": torch.arange(5), "local": local, "gdp": local.cumsum(0)}, path)
    traj = load_prototype_trajectory(path)
    steps = [float((local[t, c].double() - local[t - 1, c].double()).norm()) for t in range(1, 5) for c in range(3)
             if not (torch.isnan(local[t, c]).any() or torch.isnan(local[t - 1, c]).any())]
    assert len(steps) == 10
    assert trajectory_drift(traj)["local"] == pytest.approx(np.mean(steps), rel=1e-9)
    assert set(trajectory_drift(traj)) == {"local", "gdp"}
    torch.save({"iterations": torch.arange(4), "local": local}, path)
    with pytest.raises(ValueError, match=r"traj\.pt: 'local' must be \[T, C, D\] with T = len\(iterations\) = 4"):
        load_prototype_trajectory(path)


# ------------------------------------------------------------------ a short real run
def fake_trajectory(path: Path, num_classes: int, dim: int, steps: int = 6) -> None:
    g = torch.Generator().manual_seed(1)
    local = torch.randn(steps, num_classes, dim, generator=g)
    local[1, 0] = float("nan")
    gdp = local.nan_to_num().cumsum(0) / torch.arange(1, steps + 1)[:, None, None]
    torch.save({"iterations": torch.arange(1, steps + 1) * 2, "local": local, "gdp": gdp}, path)


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    from prcl.engine.trainer import train

    out = tmp_path_factory.mktemp("analysis_runs")
    common = ["train.iterations=4", "train.eval_every=4", "data.max_val_images=4"]
    prcl_cfg = tiny_config(synth_root, out, "method.name=prcl", "name=prcl", "train.log_prototypes_every=1", *common)
    sup_cfg = tiny_config(synth_root, out, "method.name=supervised", "name=sup", "train.iterations=1",
                          "train.eval_every=1", "data.max_val_images=4")
    train(prcl_cfg)
    train(sup_cfg)
    assert (prcl_cfg.run_dir / "prototype_trajectory.pt").is_file()  # written by the trainer
    return prcl_cfg, sup_cfg


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_analyze_single_run_writes_every_figure_and_consistent_metrics(runs, tmp_path):
    cfg, _ = runs
    result = analyze_run(cfg.run_dir, tmp_path, num_images=2, max_per_class=50, tsne_per_class=15, vn_per_class=5)
    names = {"curves", "class_balance", "predictions", "tsne", "virtual_negatives", "probability_maps",
             "prototype_trajectories"}
    assert set(result["figures"]) == names and result["notes"] == []
    report = (tmp_path / "report.md").read_text()
    for name in names:
        assert_png(tmp_path / f"{name}.png")
        assert f"]({name}.png)" in report
    m = json.loads((tmp_path / "metrics.json").read_text())["runs"][0]
    rep = m["representation"]
    assert rep["feature"] == "mu" and rep["l2_normalized"] and rep["dim"] == cfg.model.rep_dim
    assert -1 <= rep["silhouette"] <= 1 and rep["davies_bouldin"] > 0
    # independent count of labeled stride-4 pixels (nearest downsampling of the val masks)
    _, val = build_val_dataset(cfg)
    labeled = np.zeros(8, dtype=np.int64)
    for i in range(len(val)):
        mask = val[i]["mask"].float()[None, None]
        small = F.interpolate(mask, size=(mask.shape[-2] // 4, mask.shape[-1] // 4), mode="nearest").long()
        labeled += np.bincount(small[small != 255].numpy(), minlength=8)
    names_ = load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")["class_names"]
    assert rep["pixels_per_class"] == {names_[c]: int(n) for c, n in enumerate(labeled) if n}
    assert rep["samples_per_class"] == {names_[c]: int(min(n, 50)) for c, n in enumerate(labeled) if n}
    unc = m["uncertainty"]
    assert unc["pixels_correct"] + unc["pixels_wrong"] == labeled.sum()
    # the short run's teacher is right on some pixels and wrong on others, so σ²'s AUROC is defined and, with
    # σ² not yet trained to separate them, strictly between the perfect detectors 0 and 1
    assert unc["pixels_correct"] > 0 and unc["pixels_wrong"] > 0
    assert isinstance(unc["auroc_var_detects_wrong"], float) and 0 < unc["auroc_var_detects_wrong"] < 1
    for key in ("auroc_var_detects_wrong_confident", "auroc_var_detects_wrong_within_class"):  # need both outcomes
        assert unc[key] is None or 0 <= unc[key] <= 1  # among the confident pixels / within a class: may lack one
    assert unc["ratio_wrong_to_correct"] == pytest.approx(unc["mean_var_wrong"] / unc["mean_var_correct"])
    assert set(m["virtual_negatives"]["mean_distance_to_gdp"]) == {"1.0", "10.0"}
    assert set(m["prototype_drift"]) == {"local", "gdp"}
    balance = m["class_balance"]  # the last logged record's shares, read back from train_log.jsonl
    last = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()][-1]
    assert set(balance["classes"]) == set(names_)
    for name, row in balance["classes"].items():
        assert row["labeled_share"] == last[f"class_balance/labeled_share/{name}"]
        assert row["ratio"] == last[f"class_balance/ratio/{name}"]
    assert "Class balance of the pseudo-labels" in report


def test_compare_two_runs_through_the_cli(runs, tmp_path, capsys):
    prcl_cfg, sup_cfg = runs
    parser = argparse.ArgumentParser(prog="prcl")
    add_analyze_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", str(prcl_cfg.run_dir), str(sup_cfg.run_dir), "--out", str(tmp_path),
                              "--num-images", "3", "--max-per-class", "30", "--vn-betas", "0.5", "2",
                              "--tsne-per-class", "15", "--vn-per-class", "5"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "prcl (prcl): Silhouette" in printed and "sup (supervised): Silhouette" in printed
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert set(result["figures"]) == {"curves", "class_balance", "predictions", "tsne_a", "tsne_b",
                                      "virtual_negatives_a", "probability_maps_a", "prototype_trajectories_a"}
    a, b = result["runs"]
    assert a["class_balance"] is not None and b["class_balance"] is None  # supervised makes no pseudo-labels
    for path in result["figures"].values():
        assert_png(Path(path))
    width, height = assert_png(tmp_path / "predictions.png")
    assert width > height  # 4 columns (image | GT | A | B) for 3 rows
    a, b = result["runs"]
    assert set(a["virtual_negatives"]["mean_distance_to_gdp"]) == {"0.5", "2.0"}
    assert b["representation"]["feature"] == "fused" and "no representation head" in b["representation"]["note"]
    assert b["representation"]["pixels_per_class"] == a["representation"]["pixels_per_class"]  # same val pixels
    assert b["uncertainty"] is None and any("sup: no probability maps" in n for n in result["notes"])
    assert "*sup*" in (tmp_path / "report.md").read_text()


def test_student_and_reported_networks_of_a_checkpoint(runs):
    cfg, _ = runs
    ckpt = cfg.run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    student = model_from_checkpoint(ckpt, which="student")[0]
    teacher = model_from_checkpoint(ckpt)[0]
    for key in ("rep_head.1.weight", "prob_head.net.0.weight", "seg_head.1.weight"):
        assert torch.equal(student.state_dict()[key], state["model"][key])
    assert torch.equal(teacher.state_dict()["seg_head.1.weight"], state["teacher"]["seg_head.1.weight"])
    assert not torch.equal(teacher.state_dict()["seg_head.1.weight"], state["model"]["seg_head.1.weight"])
    with pytest.raises(ValueError, match="which must be 'reported' or 'student'"):
        model_from_checkpoint(ckpt, which="teacher")


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; give a run directory"):
        analyze_run(tmp_path / "nope")


def test_trajectory_of_another_run_is_refused_before_any_work(runs, tmp_path):
    cfg, _ = runs
    run = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, run)
    fake_trajectory(run / "prototype_trajectory.pt", 3, cfg.model.rep_dim)
    with pytest.raises(AnalysisError, match=r"prototype_trajectory\.pt has 3 classes but the checkpoint 8; delete"):
        analyze_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _mann_whitney(scores: np.ndarray, wrong: np.ndarray) -> float:
    """P(σ² of a wrong pixel > σ² of a correct one), ties counting half: the AUROC, brute force."""
    pos, neg = scores[wrong], scores[~wrong]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def test_uncertainty_stats_auroc_overall_confident_and_within_class():
    from prcl.analysis.collect import SIGMA_AUROCS, _UncertaintyStats

    rng = np.random.default_rng(0)
    stats, parts = _UncertaintyStats(seed=0), []
    for _ in range(2):  # two "images", each below the per-image subsampling cap
        wrong = rng.random(300) < 0.3
        confident = rng.random(300) < 0.6
        gt = rng.integers(0, 3, 300)
        # confident pixels: σ² higher where wrong; the others: lower where wrong; class 2 a constant offset
        var = np.where(confident == wrong, 1.0, 0.0) + rng.random(300).round(1) + 5.0 * (gt == 2)
        stats.add(var.astype(np.float32), wrong, confident, gt)
        parts.append((var.astype(np.float32), wrong, confident, gt))
    var, wrong, confident, gt = (np.concatenate(a) for a in zip(*parts))
    r = stats.result()
    assert r["auroc_var_detects_wrong"] == pytest.approx(_mann_whitney(var, wrong))
    assert r["auroc_var_detects_wrong_confident"] == pytest.approx(_mann_whitney(var[confident], wrong[confident]))
    assert len({round(r[k], 3) for k in SIGMA_AUROCS}) == 3  # the construction tells the three apart
    assert r["auroc_var_detects_wrong_within_class"] == pytest.approx(
        np.mean([_mann_whitney(var[gt == c], wrong[gt == c]) for c in range(3)]))
    assert r["mean_var_wrong"] == pytest.approx(var[wrong].astype(np.float64).mean())
    assert (r["pixels_wrong"], r["pixels_correct"]) == (wrong.sum(), (~wrong).sum())
    nothing_wrong = _UncertaintyStats(seed=0)
    nothing_wrong.add(var[:50], np.zeros(50, bool), np.ones(50, bool), gt[:50])
    result = nothing_wrong.result()  # undefined with one outcome only
    assert result["auroc_var_detects_wrong"] is None and result["auroc_var_detects_wrong_within_class"] is None


def test_curves_plot_the_gradient_diagnostics(tmp_path):
    from prcl.analysis.figures import RunLogs, _gradient_keys, _mu_share, plot_curves

    log = [{"iteration": i, "total": 1.0, "grad/sup": 1.0, "grad/contrastive": 0.2, "grad/contrastive.mu": 0.05,
            "grad/contrastive.var": 0.15} for i in (100, 200)]
    metrics = [{"iteration": 200, "miou": 0.5, "per_class_iou": [0.5, 0.5]}]
    runs = [RunLogs("a", log, metrics)]
    assert _gradient_keys(runs) == (["grad/contrastive", "grad/sup"], ["grad/contrastive.mu", "grad/contrastive.var"])
    path = plot_curves(runs, ["a", "b"], tmp_path / "curves.png")
    assert path.is_file() and path.stat().st_size > 10_000
    # the cosine Baseline's term has only the μ path: its share is 1, beside a PRCL run
    cosine = [{k: v for k, v in r.items() if k != "grad/contrastive.var"} for r in log]
    assert _mu_share(cosine[0]) == 1.0 and _mu_share(log[0]) == pytest.approx(0.25)
    assert _mu_share({"iteration": 100, "grad/sup": 1.0}) is None
    assert plot_curves([RunLogs("baseline", cosine, metrics), *runs], ["a", "b"], tmp_path / "both.png").is_file()
