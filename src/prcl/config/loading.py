"""Loading a config: defaults, then the method's presets, then YAML files (with their `_base_` chains),
then dotted `key=value` overrides; each value type-checked on the way in, unknown keys refused with a
suggestion, and the result validated (`rules.py`). Also saving, and reading back a saved run's config."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prcl.config.presets import CONTRASTIVE_FORMS, METHOD_PRESETS, PRESET_KEYS
from prcl.config.rules import check_section, validate
from prcl.config.schema import Config, ConfigError, ContrastiveConfig


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


def key_suggestions(key: str, limit: int = 3) -> list[str]:
    """The valid keys `key` may have meant, best first: keys ending in the same parts (`train.name` -> `name`,
    `model.lr` -> `optim.lr`; more shared trailing parts first, then shallower), then keys close to the whole
    key (`trian.iterations` -> `train.iterations`), then keys whose last part is close to its last part
    (`train.iters` -> `train.iterations`)."""
    keys = _all_keys(Config)
    parts = key.split(".")

    def shared_tail(candidate: str) -> int:
        return next((n for n in range(len(parts), 0, -1) if candidate.split(".")[-n:] == parts[-n:]), 0)

    def similarity(candidate: str) -> float:
        return difflib.SequenceMatcher(None, key, candidate).ratio()

    same_name = sorted((k for k in keys if k != key and shared_tail(k)),
                       key=lambda k: (-shared_tail(k), k.count("."), -similarity(k)))
    close = difflib.get_close_matches(key, keys, n=limit, cutoff=0.6)
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(k.rpartition(".")[2], []).append(k)
    close_name = [k for name in difflib.get_close_matches(parts[-1], list(by_name), n=limit, cutoff=0.6)
                  for k in by_name[name]]
    return list(dict.fromkeys(same_name + close + close_name))[:limit]


def unknown_key_error(key: str, what: str = "config key") -> ConfigError:
    """`unknown config key 'x'; did you mean 'y'?`, naming other keys of the same name as well."""
    found = key_suggestions(key)
    if not found:
        return ConfigError(f"unknown {what} '{key}'; `prcl configs keys` lists every key")
    same_name = [k for k in found[1:] if k.rpartition(".")[2] == key.rpartition(".")[2]]
    also = f" (or {', '.join(repr(k) for k in same_name)})" if same_name else ""
    return ConfigError(f"unknown {what} '{key}'; did you mean '{found[0]}'?{also}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(types, "UnionType", ())):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{key}' needs a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-2" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _merge(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    types_ = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            while isinstance(value, dict) and len(value) == 1:  # suggest the full dotted key
                (sub, value), = value.items()
                key = f"{key}.{sub}"
            raise unknown_key_error(key)
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, name), value if value is not None else {}, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, tp))


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.iterations=200")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- method preset <- YAML file (with `_base_` chain) <- `key=value` overrides."""
    layers = _yaml_chain(Path(path)) if path is not None else []
    for text in overrides:
        key, value = parse_override(text)
        layers.append(_nest(key, value))
    cfg = Config()
    for preset in _presets(layers):
        _merge(cfg, preset)
    for layer in layers:
        _merge(cfg, layer)
    validate(cfg)
    return cfg


def _presets(layers: Sequence[dict]) -> list[dict]:
    """The preset layers that the method name and the contrastive form found in `layers` (the last
    one given wins; else the defaults) put under them."""
    defaults = Config().method
    name, form = defaults.name, defaults.contrastive.form
    for layer in layers:
        method = layer.get("method") if isinstance(layer, dict) else None
        if isinstance(method, dict):
            name = method.get("name", name)
            if isinstance(method.get("contrastive"), dict):
                form = method["contrastive"].get("form", form)
    out = []
    if name in METHOD_PRESETS:
        out.append({"method": METHOD_PRESETS[name].settings})
    if form in CONTRASTIVE_FORMS:
        out.append({"method": {"contrastive": CONTRASTIVE_FORMS[form]}})
    return out


def _yaml_chain(path: Path, ancestry: tuple = (), done: Optional[set] = None) -> list[dict]:
    """The YAML mappings of `path` and its `_base_` ancestors, base first, each file once.

    Depth first, in the order `_base_` lists them: a file's layer comes after all of its bases, a
    later sibling's after an earlier one's, so later keys win. A file reached twice (a diamond:
    a.yaml and b.yaml both based on common.yaml) is applied at its first place only, so b's
    inclusion of common.yaml does not undo what a.yaml changed. Only a file in its own ancestry
    (`ancestry`, the path of `_base_` links that led here) is a cycle and an error.
    """
    done = set() if done is None else done
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; `prcl configs list` shows the shipped ones")
    key = path.resolve()
    if key in ancestry:
        raise ConfigError(f"config file {path} includes itself through _base_")
    if key in done:
        return []
    done.add(key)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    layers: list[dict] = []
    for base in bases:
        layers.extend(_yaml_chain(path.parent / base, ancestry + (key,), done))
    layers.append(data)
    return layers


def contrastive_preset(method: str = "prcl", **overrides: Any) -> ContrastiveConfig:
    """The `method.contrastive` section of a method preset, with overrides (nested sections as dicts,
    e.g. `vn={"num": 2}`), validated: the way to configure `PRCLContrastiveLoss` outside a run."""
    if method not in METHOD_PRESETS:
        raise ConfigError(f"unknown method '{method}'; choose one of {list(METHOD_PRESETS)}")
    contrastive = ContrastiveConfig()
    for preset in _presets([{"method": {"name": method, "contrastive": overrides}}]):
        _merge(contrastive, preset["method"].get("contrastive", {}), "method.contrastive.")
    _merge(contrastive, overrides, "method.contrastive.")
    check_section(contrastive, "method.contrastive.")
    return contrastive


def to_dict(cfg: Config) -> dict:
    def convert(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(cfg))


def from_dict(values: dict) -> Config:
    cfg = Config()
    for preset in _presets([values]):  # a config saved before a key existed gets its preset's default
        _merge(cfg, preset)
    _merge(cfg, values)
    validate(cfg)
    return cfg


def config_yaml(cfg: Config) -> str:
    """Every key of `cfg` as YAML in schema order; `load_config` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply `key=value` overrides to an existing config (e.g. a checkpoint's) and re-validate.
    The preset keys are refused: on a built config they would change a name, not the settings."""
    for text in overrides:
        key, value = parse_override(text)
        if key in PRESET_KEYS:
            raise ConfigError(f"{key} cannot be changed on an existing run's config (its preset would not be "
                              "applied); train a new run with it instead")
        _merge(cfg, _nest(key, value))
    validate(cfg)
    return cfg
