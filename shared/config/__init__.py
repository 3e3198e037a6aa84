"""Typed configs: schema.py (the dataclasses), loader.py (strict YAML + `--set` + recipes),
recipes/ (a dataset's recommended settings, where one is measured to need its own).

The names below are the package's public face, so callers write `from shared.config import X`.
"""

from shared.config.loader import (Recipe, Resolution, find_recipe, from_dict, load_config,
                                  parse_override, resolve_config)
from shared.config.schema import (METHODS, REFERENCE_SWITCHES, DataConfig, DistillConfig,
                                  FedConfig, RunConfig, TeacherConfig)

__all__ = ["METHODS", "REFERENCE_SWITCHES", "DataConfig", "DistillConfig", "FedConfig", "Recipe",
           "Resolution", "RunConfig", "TeacherConfig", "find_recipe", "from_dict", "load_config",
           "parse_override", "resolve_config"]
