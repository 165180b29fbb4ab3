"""Typed experiment configuration: YAML files plus dotted `key=value` overrides.

- `schema.py`: every key, its type, default and meaning, declared and documented once;
- `presets.py`: what a method name and a contrastive form set (the single table of methods);
- `rules.py`: choices, ranges and combinations, checked before training starts;
- `loading.py`: defaults <- presets <- YAML (`_base_` chains) <- overrides; saving and reading back;
- `reference.py`: the reference of every key, read from the comments in `schema.py` (`prcl configs keys`).

Unknown or misspelt keys are an error that suggests the closest valid key.
"""

from prcl.config.loading import (apply_overrides, config_yaml, contrastive_preset, from_dict, key_suggestions,
                                 load_config, parse_override, save_config, to_dict)
from prcl.config.presets import (CONTRASTIVE_FORMS, METHOD_PRESETS, PRESET_KEYS, WITHOUT_PSEUDO_LABELS,
                                 MethodPreset)
from prcl.config.rules import CHOICES, check_section, get_value, validate
from prcl.config.schema import (Config, ConfigError, ContrastiveConfig, DataConfig, EvalConfig, MemoryBankConfig,
                                MethodConfig, MLSConfig, ModelConfig, OptimConfig, TrainConfig,
                                VirtualNegativesConfig)

__all__ = [
    "CHOICES", "CONTRASTIVE_FORMS", "METHOD_PRESETS", "PRESET_KEYS", "WITHOUT_PSEUDO_LABELS", "Config", "ConfigError",
    "ContrastiveConfig", "DataConfig", "EvalConfig", "MLSConfig", "MemoryBankConfig", "MethodConfig", "MethodPreset",
    "ModelConfig", "OptimConfig", "TrainConfig", "VirtualNegativesConfig", "apply_overrides", "check_section",
    "config_yaml", "contrastive_preset", "from_dict", "get_value", "key_suggestions", "load_config", "parse_override",
    "save_config", "to_dict", "validate",
]
