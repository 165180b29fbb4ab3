from __future__ import annotations

import pytest
import yaml

from prcl.config import Config, ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.method.name == "prcl" and cfg.data.dataset == "synthetic"
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["train.iterations=7", "data.scale_range=[0.5, 1.5]", "model.weights=null",
                             "optim.lr=1e-2", "method.contrastive.vn.beta=0.8"])
    assert cfg.train.iterations == 7
    assert cfg.data.scale_range == (0.5, 1.5)
    assert cfg.model.weights is None
    assert cfg.optim.lr == pytest.approx(1e-2) and isinstance(cfg.optim.lr, float)
    assert cfg.method.contrastive.vn.beta == pytest.approx(0.8)


@pytest.mark.parametrize("override, message", [
    ("train.iteration=5", "did you mean 'train.iterations'"),
    ("trian.iterations=5", "did you mean 'train.iterations'"),
    ("method.contrastive.temprature=0.1", "did you mean 'method.contrastive.temperature'"),
    ("train.name=x", "unknown config key 'train.name'; did you mean 'name'? (or "),  # not train.amp: by its name
    ("train.iters=5", "did you mean 'train.iterations'?"),
    ("model.lr=0.1", "did you mean 'optim.lr'?"),
    ("contrastive.vn.enabled=false", "did you mean 'method.contrastive.vn.enabled'?"),  # the most parts shared
    ("train.iterations=abc", "'train.iterations' must be int"),
    ("train.iterations=2.5", "'train.iterations' must be int"),
    ("optim.lr=-0.1", "'optim.lr' must be > 0"),
    ("method.unsup_threshold=1.5", "'method.unsup_threshold' must be in [0, 1]"),
    ("method.name=dinomatch", "'method.name' must be one of"),
    ("model.output_stride=32", "'model.output_stride' must be one of"),
    ("data.scale_range=[2.0, 1.0]", "0 < min <= max"),
    ("data.scale_range=[1.0]", "needs a list of 2 values"),
    ("train.iterations", "must look like key=value"),
    ("method.name=baseline_plus method.contrastive.prototype=gdp", None),
])
def test_bad_overrides_name_the_key(override, message):
    if message is None:  # gdp needs probabilistic representations
        with pytest.raises(ConfigError, match="prototype=gdp needs pr=true"):
            load_config(None, override.split())
        return
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_method_presets_and_explicit_switches():
    base = load_config(None, ["method.name=baseline"]).method.contrastive
    assert (base.pr, base.prototype, base.vn.enabled) == (False, "local", False)
    plus = load_config(None, ["method.name=baseline_plus"]).method.contrastive
    assert (plus.pr, plus.prototype) == (False, "ema")
    prcl = load_config(None, ["method.name=prcl"]).method.contrastive
    assert (prcl.pr, prcl.prototype, prcl.vn.enabled) == (True, "gdp", True)
    ablation = load_config(None, ["method.name=baseline", "method.contrastive.pr=true"]).method.contrastive
    assert (ablation.pr, ablation.prototype) == (True, "local")


def test_yaml_base_chain_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"train": {"iterations": 11}, "method": {"name": "baseline"}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml", "train": {"eval_every": 3}}))
    cfg = load_config(tmp_path / "child.yaml", ["seed=4"])
    assert (cfg.train.iterations, cfg.train.eval_every, cfg.seed) == (11, 3, 4)
    assert cfg.method.contrastive.pr is False  # the preset follows the name found in the base file
    (tmp_path / "typo.yaml").write_text("train:\n  iteratons: 3\n")
    with pytest.raises(ConfigError, match="typo|train.iteratons.*did you mean 'train.iterations'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_apply_overrides_revalidates():
    cfg = Config()
    apply_overrides(cfg, ["data.root=/elsewhere"])
    assert cfg.data.root == "/elsewhere"
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["eval.mode=tiles"])


def test_demo_yaml_equals_the_defaults():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert to_dict(load_config(demo)) == to_dict(load_config())


def test_yaml_base_diamond_applies_each_file_once_and_only_a_real_cycle_is_an_error(tmp_path):
    """top -> [a, b], a -> common, b -> common: layers common, a, b, top (depth first, each file once at
    its first place), so b's inclusion of common does not undo a's change and b wins over a."""
    from prcl.config.loading import _yaml_chain

    def write(name: str, data: dict) -> None:
        (tmp_path / name).write_text(yaml.safe_dump(data))

    write("common.yaml", {"train": {"iterations": 11, "eval_every": 5, "log_every": 7}})
    write("a.yaml", {"_base_": "common.yaml", "train": {"iterations": 22, "checkpoint_every": 8}})
    write("b.yaml", {"_base_": ["common.yaml"], "train": {"eval_every": 6, "checkpoint_every": 9}})
    write("top.yaml", {"_base_": ["a.yaml", "b.yaml"], "seed": 3})
    assert [layer.get("train", layer.get("seed")) for layer in _yaml_chain(tmp_path / "top.yaml")] == [
        {"iterations": 11, "eval_every": 5, "log_every": 7}, {"iterations": 22, "checkpoint_every": 8},
        {"eval_every": 6, "checkpoint_every": 9}, 3]
    t = load_config(tmp_path / "top.yaml").train
    assert (t.iterations, t.eval_every, t.log_every, t.checkpoint_every) == (22, 6, 7, 9)

    write("x.yaml", {"_base_": "y.yaml"})
    write("y.yaml", {"_base_": ["common.yaml", "x.yaml"]})
    write("self.yaml", {"_base_": "self.yaml"})
    for name in ("x.yaml", "self.yaml"):
        with pytest.raises(ConfigError, match="includes itself through _base_"):
            load_config(tmp_path / name)


@pytest.mark.parametrize("key", ["method.name=classmix", "method.contrastive.form=paper"])
def test_preset_keys_are_refused_on_a_built_config(key):
    """`method.name` and `method.contrastive.form` select presets when a config is loaded; on an
    existing config they would change the name without the settings, so they are refused."""
    with pytest.raises(ConfigError, match="cannot be changed on an existing run's config"):
        apply_overrides(load_config(), [key])


def test_forms_set_their_keys_and_explicit_keys_win():
    from prcl.config import CONTRASTIVE_FORMS

    for form, preset in CONTRASTIVE_FORMS.items():
        c = load_config(None, [f"method.contrastive.form={form}"]).method.contrastive
        assert (c.temperature, c.mls.reduction, c.mls.log_det, c.prototype_var, c.vn.var, c.var_grad) == (
            preset["temperature"], preset["mls"]["reduction"], preset["mls"]["log_det"], preset["prototype_var"],
            preset["vn"]["var"], preset["var_grad"]), form
    c = load_config(None, ["method.contrastive.form=paper", "method.contrastive.temperature=2"]).method.contrastive
    assert (c.temperature, c.mls.normalize) == (2.0, False)
    default = Config().method.contrastive  # the dataclass defaults are the default form's settings
    assert load_config().method.contrastive == default

