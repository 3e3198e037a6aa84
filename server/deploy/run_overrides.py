"""A run's config as the `section.key=value` overrides `unikd submit` sends to the cloud."""

from __future__ import annotations

import json

from shared.errors import UnikdError


def config_overrides(config: str | None, sets: list[str]) -> list[str]:
    """The run's config as `section.key=value` overrides of the defaults, validated here.

    The cloud rebuilds exactly this RunConfig from the defaults, so a config file on the
    submitting machine need not exist on the cloud: every key that differs from the defaults
    travels, and the cloud reads the same defaults from the same app bundle.
    """
    from shared.config import RunConfig, load_config

    cfg = load_config(config, sets)
    want, base = _flat(cfg.to_dict()), _flat(RunConfig().to_dict())
    out = []
    for key, value in want.items():
        if value == base.get(key):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        if not text or any(c.isspace() for c in text):
            raise UnikdError(f"config key '{key}' = {value!r}: values sent to the cloud may not "
                             f"be empty or contain spaces")
        out.append(f"{key}={text}")
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys: {'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
