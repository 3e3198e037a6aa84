"""Strict loading: defaults <- dataset recipe <- YAML file <- `--set` overrides.

An unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the key and
the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import re
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


# ---------------------------------------------------------------- dataset recipes

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"  # package data (pyproject)


@dataclass(frozen=True, eq=False)
class Recipe:
    """A dataset's recommended settings, `shared/config/recipes/<dataset>.yaml`, validated."""

    dataset: str
    file: str  # where it was read from
    tree: dict[str, Any]  # the file's mapping
    digest: str  # sha256 of the file's bytes, first 12 hex digits (recorded by the benches)


def find_recipe(dataset: str) -> Recipe | None:
    """The recipe shipped for `dataset` (case-insensitive), or None when it has none.

    Validated like a config file (unknown key, wrong type, out of range: an error naming the
    recipe file); a recipe names no input path and no other dataset."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", dataset or ""):
        return None
    path = RECIPE_DIR / f"{dataset.lower()}.yaml"
    if not path.is_file():
        return None
    file = str(path)
    tree = _read_file(path)
    from_dict(RunConfig, tree, file)
    check_reference_compat(tree, file)
    named = (tree.get("data") or {}).get("dataset", dataset)
    if str(named).upper() != dataset.upper():
        raise ConfigError("data.dataset", f"the recipe for {dataset.upper()} names {named!r}", file)
    for key in _path_keys(tree, RunConfig):
        raise ConfigError(key, "a recipe may not set an input path (give it with --set or a "
                               "config file)", file)
    return Recipe(dataset.upper(), file, tree, hashlib.sha256(path.read_bytes()).hexdigest()[:12])


@dataclass
class Resolution:
    """A resolved config and where each value that is not a dataclass default came from."""

    config: RunConfig
    recipe: Recipe | None  # applied over the defaults (only when no config file is given)
    sources: dict[str, str]  # dotted key -> the config file, "--set" or the recipe file


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                recipe: bool = True) -> RunConfig:
    """Defaults <- dataset recipe <- YAML file <- `--set` overrides; see `resolve_config`."""
    res = resolve_config(path, overrides, recipe)
    if res.recipe is not None:
        log.info("recipe %s applied (no config file given): %s; --set values override it",
                 res.recipe.dataset, res.recipe.file)
    return res.config


def resolve_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                   recipe: bool = True) -> Resolution:
    """Defaults <- dataset recipe <- YAML file <- `--set` overrides, validated at every layer,
    then presets applied.

    The dataset's recipe (`shared/config/recipes/<dataset>.yaml`, `find_recipe`) is applied only when
    no config file is given: a config file is a complete base over the dataclass defaults, so a
    file means the same thing whatever the recipes say. A value set in the file or with `--set`
    is never overridden; datasets without a recipe use the dataclass defaults. `recipe=False`
    skips the recipe layer.

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
    found = None
    if recipe and not path:
        found = find_recipe(from_dict(RunConfig, tree, file).data.dataset)
    if found is not None:
        given = tree.get("distill") or {}
        tree = _merge(found.tree, tree)
        _check_recipe_preset(tree, given, found)
        for key in _leaf_keys(found.tree):
            sources.setdefault(key, found.file)
    return Resolution(from_dict(RunConfig, tree, file).resolved(), found, sources)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with every value of `over` on top (sections merged key by key); copies."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in tree.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + str(k)]
    return out


def _path_keys(tree: dict[str, Any], cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of `tree` that set an input path (fields marked PATH) to a non-empty value."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = tree.get(f.name)
        if f.metadata.get("path") and value:
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            out += _path_keys(value, hints[f.name], f"{prefix}{f.name}.")
    return out


def _check_recipe_preset(tree: dict[str, Any], given: dict[str, Any], found: Recipe) -> None:
    """A switch the user set (`given`) that the recipe's `reference_compat: true` would force
    otherwise is a contradiction the user must resolve: never override what they set."""
    d = from_dict(RunConfig, tree, "--set").distill
    if not d.reference_compat or "reference_compat" in given:
        return  # a user's own reference_compat was checked against their switches already
    conflict = _reference_conflict(d, given)
    if conflict:
        name, forced = conflict
        raise ConfigError(f"distill.{name}", f"is {getattr(d, name)} but the "
                          f"{found.dataset} recipe ({found.file}) sets "
                          f"distill.reference_compat, which sets it to {forced}; also give "
                          f"distill.reference_compat=false, or drop this value", "--set")


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
