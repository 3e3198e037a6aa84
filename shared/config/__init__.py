"""Typed configs: schema.py (the dataclasses, whose defaults are the one recommendation for
every dataset) and loader.py (strict YAML + `--set`).

The names below are the package's public face, so callers write `from shared.config import X`.
"""

from shared.config.loader import (Resolution, from_dict, load_config, parse_override,
                                  resolve_config)
from shared.config.schema import (METHODS, REFERENCE_SWITCHES, DataConfig, DistillConfig,
                                  FedConfig, RunConfig, TeacherConfig)

__all__ = ["METHODS", "REFERENCE_SWITCHES", "DataConfig", "DistillConfig", "FedConfig",
           "Resolution", "RunConfig", "TeacherConfig", "from_dict", "load_config",
           "parse_override", "resolve_config"]
