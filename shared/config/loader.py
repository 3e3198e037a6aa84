"""Strict loading: defaults <- YAML file <- `--set` overrides.

An unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the key and
the file.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.config.schema import REFERENCE_SWITCHES, DistillConfig, RunConfig
from shared.errors import ConfigError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- strict loading


class Raw(str):
    """A `--set` value as typed: converted by the target field's type, not by YAML's guesses
    (YAML 1.1 would read the scenario 2:11 as the integer 131)."""


def _from_raw(value: Raw, tp: Any) -> Any:
    if tp is str or typing.get_origin(tp) is Literal:
        return str(value)
    if tp is bool:
        low = value.strip().lower()
        return {"true": True, "false": False}.get(low, str(value))
    if tp is int:
        try:
            return int(value)
        except ValueError:
            return str(value)
    if tp is float:
        return str(value)  # _coerce parses numeric strings for float fields
    return yaml.safe_load(value)


def _coerce(value: Any, tp: Any, key: str, file: str | None) -> Any:
    if isinstance(value, Raw):
        value = _from_raw(value, tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"must be one of {list(typing.get_args(tp))}, got {value!r}", file)
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}", file)
        return from_dict(tp, value, file, prefix=key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}", file)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}", file)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, f"must be a number, got {value!r}", file) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}", file)
        return float(value)
    if tp is str:
        if not isinstance(value, str):  # YAML reads 2:11 as 131 and 0123 as 83: ask for quotes
            raise ConfigError(key, f"must be a string, got {value!r}; quote it in YAML", file)
        return str(value)
    raise ConfigError(key, f"unsupported field type {tp}", file)


def from_dict(cls: type, data: dict[str, Any], file: str | None = None, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise ConfigError(prefix + str(k), f"unknown key; known: {', '.join(fields)}", file)
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        v = _coerce(value, hints[name], key, file)
        lo, hi = fields[name].metadata.get("range", (None, None))
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ConfigError(key, f"{v} is out of range [{lo}, {hi}]", file)
        kwargs[name] = v
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"'{p}' is not a section", "--set")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'distill.lr=1e-3' -> ('distill.lr', Raw('1e-3')); the field's type converts it."""
    if "=" not in text:
        raise ConfigError(text, "override must look like section.key=value", "--set")
    key, raw = text.split("=", 1)
    return key.strip(), Raw(raw.strip())


def _read_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping (empty file: {}); not yet validated."""
    p, file = Path(path), str(path)
    if not p.is_file():
        raise ConfigError("<file>", "config file not found", file)
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"invalid YAML: {exc}", file) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError("<root>", "the file must hold a mapping", file)
    return loaded or {}


@dataclass
class Resolution:
    """A resolved config and where each value that is not a dataclass default came from."""

    config: RunConfig
    sources: dict[str, str]  # dotted key -> the config file or "--set"


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file <- `--set` overrides; see `resolve_config`."""
    return resolve_config(path, overrides).config


def resolve_config(path: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Resolution:
    """Defaults <- YAML file <- `--set` overrides, validated at every layer, then presets applied.

    The dataclass defaults are the one recommendation for every dataset (issue 25: chosen on
    both development sets, HAR and HHAR_SA); no dataset has settings of its own. A value set in
    the file or with `--set` is never overridden.

    Relative input paths (fields marked PATH) are made absolute: against the config file's
    folder for values from the file, against the working directory for `--set` values, so a
    dumped config.yaml means the same thing wherever it is read.
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    file = str(path) if path else None
    if path:
        p = Path(path)
        tree = _read_file(p)
        from_dict(RunConfig, tree, file)  # validate the file alone, so errors name it
        check_reference_compat(tree, file)
        _absolute_paths(tree, RunConfig, p.resolve().parent)
        sources.update(dict.fromkeys(_leaf_keys(tree), file))
    for ov in overrides:
        key, value = parse_override(ov)
        _set_path(tree, key, value)
        try:
            from_dict(RunConfig, tree, file)
        except ConfigError as err:
            if err.key == key or err.key.startswith(key):
                raise ConfigError(err.key, err.problem, "--set") from None
            raise
        check_reference_compat(tree, "--set" if key.startswith("distill.") else file)
        sources[key] = "--set"
    _absolute_paths(tree, RunConfig, Path.cwd())
    return Resolution(from_dict(RunConfig, tree, file).resolved(), sources)


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in tree.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + str(k)]
    return out


def check_reference_compat(tree: dict[str, Any], source: str | None) -> None:
    """`reference_compat: true` beside a switch it would change is a contradiction: refuse it."""
    given = tree.get("distill") or {}
    d = from_dict(RunConfig, tree, source).distill  # typed values (--set ones are still text)
    if not d.reference_compat:
        return
    conflict = _reference_conflict(d, given)
    if conflict:
        name, forced = conflict
        raise ConfigError(f"distill.{name}", f"is {getattr(d, name)} but "
                          f"distill.reference_compat sets it to {forced}; remove one of the "
                          f"two", source)


def _reference_conflict(d: DistillConfig, given: dict[str, Any]) -> tuple[str, bool] | None:
    """The first switch the user set (`given`) that `reference_compat: true` forces otherwise."""
    return next(((name, forced) for name, forced in REFERENCE_SWITCHES.items()
                 if name in given and getattr(d, name) != forced), None)


def _absolute_paths(tree: dict[str, Any], cls: type, base: Path) -> None:
    """Rewrite relative PATH fields of `tree` (validated already) as absolute, against `base`."""
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        value = tree[f.name]
        if f.metadata.get("path") and isinstance(value, str) and value \
                and not isinstance(value, Raw) and not Path(value).expanduser().is_absolute():
            tree[f.name] = str((base / Path(value).expanduser()).resolve())
        elif f.metadata.get("path") and isinstance(value, Raw) and value:
            tree[f.name] = Raw(str((base / Path(str(value)).expanduser()).resolve()))
        elif dataclasses.is_dataclass(f.default_factory if f.default_factory is not
                                      dataclasses.MISSING else None) and isinstance(value, dict):
            _absolute_paths(value, f.default_factory, base)
