"""Typed run configuration: dataclasses loaded strictly from YAML, with `--set a.b=v` overrides.

An unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the key and
the file. Below the entry point nothing reads a dict: code receives these dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.datasets import DatasetSpec

log = logging.getLogger(__name__)


def rng(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict[str, Any]:
    """Field metadata: inclusive numeric bounds."""
    return {"range": (lo, hi), **kw}


PATH = {"path": True}  # field metadata: an input path, resolved against the config file's folder

METHODS = ("unikd", "source-only", "kd-target", "dann-student", "mobileda", "aad", "jku")


@dataclass
class DataConfig:
    dataset: str = "SYNTH"  # HAR, HHAR, FD, SSC, SYNTH or GENERIC (shape read from the files)
    # AdaTime folder; "" = the embedded synthetic data (generated on first use). Relative to the
    # config file's folder when set in a file, to the working directory when set with --set.
    path: str = field(default="", metadata=PATH)
    scenario: str = "0->1"  # source->target; per-domain federations: 2->11+13+16 (one per edge)
    normalize: bool = True  # per-channel z-score with source-train statistics
    synth_shift: float = field(default=1.0, metadata=rng(0.0, 3.0))  # synthetic domain-gap strength


@dataclass
class TeacherConfig:
    """DANN teacher pre-training (spec §3.2)."""

    epochs: int = field(default=40, metadata=rng(1, 10_000))
    lr: float = field(default=1e-3, metadata=rng(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=rng(0.0, 1.0))
    batch_size: int = field(default=0, metadata=rng(0, 65_536))  # 0 = the dataset's (batch_for)
    w_cls: float = field(default=1.0, metadata=rng(0.0, None))
    w_dom: float = field(default=1.0, metadata=rng(0.0, None))
    ensemble: int = field(default=1, metadata=rng(1, 16))  # seeds averaged into one teacher
    checkpoint: str = field(default="", metadata=PATH)  # reuse a trained teacher instead

    def batch_for(self, spec: DatasetSpec) -> int:
        """The batch size to train with: the value set here, or the dataset's when 0."""
        return self.batch_size or spec.batch_size


@dataclass
class DistillConfig:
    """Student distillation (spec §3.3, §4). Each reference-code fix is its own switch (spec §8)."""

    method: Literal[METHODS] = "unikd"  # what `unikd distill` trains unless --method is given
    epochs: int = field(default=30, metadata=rng(1, 10_000))
    # 0 (the default) = the dataset's batch size (DatasetSpec.batch_size: 32, SSC 128); any value
    # set in the file or with --set wins, so a user's choice is never overridden
    batch_size: int = field(default=0, metadata=rng(0, 65_536))
    lr: float = field(default=1e-2, metadata=rng(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=rng(0.0, 1.0))
    beta1: float = field(default=0.5, metadata=rng(0.0, 0.999999))
    beta2: float = field(default=0.99, metadata=rng(0.0, 0.999999))
    temperature: float = field(default=4.0, metadata=rng(1e-3, 100.0))
    lam_ce: float = field(default=1.0, metadata=rng(0.0, None))
    lam_dom: float = field(default=1.0, metadata=rng(0.0, None))
    # --- fixes of spec §8; `reference_compat: true` turns every one off (items 1-7) ---
    reference_compat: bool = False
    target_kd: bool = True  # §8.1: target KD on the *target* logits of teacher and student
    # With target_kd false, how the reference's cross-domain KD pairs samples: "paired" is the
    # official code (source window i with target window i of two shuffled batches; centralized
    # only), "expected" its expectation over that random pairing, mean_t(w) * KD_source, which
    # the federation can split exactly (engine.py `cross_kd`).
    cross_kd: Literal["paired", "expected"] = "paired"
    adv_to_student: bool = False  # §8.2: adversarial feature loss reaches student and adapter
    beta_natural_log: bool = True  # §8.3: beta rises 0.1 -> 0.9
    # §8.6: w = 1-|p0-p1| as a constant sample weight. Off by default: letting the KD reach D_d
    # through w measured better on HAR (BENCHMARKS.md), and the federation can split it exactly.
    detach_weights: bool = False
    grl_ramp: bool = True  # §8.7: GRL alpha ramps from 0 over progress in [0, 1]
    double_target_forward: bool = False  # §8.14: the reference's second student pass on target
    cache_teacher: bool = True  # frozen teacher run once per window, not every step

    def batch_for(self, spec: DatasetSpec) -> int:
        """The batch size to train with: the value set here, or the dataset's when 0."""
        return self.batch_size or spec.batch_size


@dataclass
class FedConfig:
    clients: int = field(default=3, metadata=rng(1, 10_000))
    rounds: int = field(default=0, metadata=rng(0, 1_000_000))  # 0 = distill.epochs worth of steps
    local_steps: int = field(default=1, metadata=rng(1, 10_000))
    partition: str = "iid"  # iid | dirichlet:<alpha> | per-domain
    teacher_placement: Literal["edge", "cloud", "source-only"] = "edge"
    # cloud placement only: "prototypes" sends the teacher's mean source feature per class
    # (C x 128 floats) so each edge keeps a feature hint without the teacher (issue 15)
    cloud_hint: Literal["off", "prototypes"] = "off"
    bn_policy: Literal["averaged", "local", "reestimate"] = "averaged"
    engine: Literal["inprocess", "ray"] = "inprocess"
    min_clients: int = field(default=1, metadata=rng(1, 10_000))
    checkpoint_every: int = field(default=0, metadata=rng(0, 1_000_000))  # rounds; 0 = each epoch
    round_timeout: float = field(default=600.0, metadata=rng(1.0, 86_400.0))  # seconds
    # the round loop's transport (server/fed/transport.py): seconds between reply pulls, and
    # one packed array per message instead of one Flower object per array
    poll_interval: float = field(default=0.05, metadata=rng(0.001, 60.0))
    pack: bool = True
    # client-level differential privacy (server/fed/privacy.py): the whole update of a client
    # (student, D_f and D_d gradients together) is clipped to dp_clip and Gaussian noise is added
    # by the cloud to the mean (central) or by each client to its own update (local)
    # `record`: per-window DP-SGD on every edge (client/node/record_dp.py): dp_clip bounds one
    # window's gradient, dp_epsilon/dp_delta cover one window over the teacher and student rounds
    dp: Literal["off", "central", "local", "record"] = "off"
    dp_clip: float = field(default=1.0, metadata=rng(1e-6, 1e6))  # L2 bound C of one update
    dp_epsilon: float = field(default=8.0, metadata=rng(1e-3, 1e6))  # target over the rounds
    dp_delta: float = field(default=1e-5, metadata=rng(1e-12, 0.1))
    # --- record-level DP and secure aggregation (issue 13) ---
    dp_count_std: float = field(default=20.0, metadata=rng(0.0, 1e6))  # noise on a node's count
    secure_aggregation: bool = False  # the cloud learns only each round's sum (server/fed/secagg.py)
    secagg_threshold: float = field(default=0.6, metadata=rng(0.0, 1.0))  # fraction for unmasking
    secagg_clip: float = field(default=8.0, metadata=rng(1e-6, 1e6))  # L2 bound before masking
    secagg_bits: int = field(default=24, metadata=rng(8, 48))  # quantisation levels (2^bits)
    # record DP's clipping: "joint" bounds a window's whole gradient by dp_clip; "per-network"
    # bounds each network's part (student with adapter, D_f, D_d; teacher, its discriminator)
    # by dp_clip / sqrt(networks), the same total bound, so no network crowds out the others
    dp_clip_scope: Literal["joint", "per-network"] = "joint"
    # record DP's noise under secure aggregation: "node" = each node adds the full N(0, (zC)^2)
    # to its own update; "shares" = each adds 1/t of the variance at the mask stage, so only the
    # sum the cloud unmasks carries the full noise (needs secure_aggregation and local_steps 1)
    record_noise: Literal["node", "shares"] = "node"
    # faults, simulated and seeded by (seed, round, node) in the in-process Grid only
    dropout: float = field(default=0.0, metadata=rng(0.0, 1.0))  # nodes offline per round
    straggler_fraction: float = field(default=0.0, metadata=rng(0.0, 1.0))  # late: dropped
    corrupt_fraction: float = field(default=0.0, metadata=rng(0.0, 1.0))  # replies corrupted
    aggregator: str = "mean"  # mean | trimmed-mean:<fraction> | norm-bounded:<x median>


@dataclass
class RunConfig:
    seed: int = field(default=0, metadata=rng(0, 2**31 - 1))
    out: str = "runs"  # parent folder of run folders
    threads: int = field(default=1, metadata=rng(1, 256))  # torch threads; 1 keeps runs bit-stable
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fed: FedConfig = field(default_factory=FedConfig)

    def resolved(self) -> RunConfig:
        """Apply presets: `reference_compat` forces the official code's behaviour (spec §8.1-8.7)."""
        if self.distill.reference_compat:
            for name, value in REFERENCE_SWITCHES.items():
                setattr(self.distill, name, value)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# What `distill.reference_compat: true` sets: the official code's behaviour (spec §8.1-8.7, §8.14).
REFERENCE_SWITCHES = {"target_kd": False, "adv_to_student": False, "beta_natural_log": False,
                      "detach_weights": False, "grl_ramp": False, "double_target_forward": True}


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
    """A dataset's recommended settings, `shared/recipes/<dataset>.yaml`, validated."""

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

    The dataset's recipe (`shared/recipes/<dataset>.yaml`, `find_recipe`) is applied only when
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
