"""A scenario's four splits (source/target × train/test), normalised with source-train stats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shared.config import DataConfig
from shared.data.adatime import Domain, dataset_spec, load_domain
from shared.data.loaders import Normalizer
from shared.data.datasets import DatasetSpec, format_scenario, parse_scenario


@dataclass
class ScenarioData:
    spec: DatasetSpec
    source: str
    target: str
    src_train: Domain
    src_test: Domain
    trg_train: Domain
    trg_test: Domain
    normalizer: Normalizer

    @property
    def name(self) -> str:
        return format_scenario((self.source, self.target))


def resolve_spec(cfg: DataConfig) -> DatasetSpec:
    """The configured dataset's spec; GENERIC reads its shape from `cfg.path`."""
    return dataset_spec(cfg.dataset, cfg.path)


def load_split(cfg: DataConfig, spec: DatasetSpec | None, split: str, domain: str) -> Domain:
    """One split from the configured folder, or from the embedded generator when path is ''.

    With `spec`, channels, length and label range are checked against it."""
    if cfg.path:
        return load_domain(cfg.path, split, domain, spec)
    from shared.data.synth import SynthConfig, generate_domain

    x, y = generate_domain(int(domain), split, SynthConfig(shift=cfg.synth_shift))
    return Domain(x, y, Path(f"<synthetic {split}_{domain}>"))


def load_scenario(cfg: DataConfig, scenario: str | None = None) -> ScenarioData:
    spec = resolve_spec(cfg)
    src, trg = parse_scenario(scenario or cfg.scenario)
    parts = {f"{side}_{split}": load_split(cfg, spec, split, dom)
             for side, dom in (("src", src), ("trg", trg)) for split in ("train", "test")}
    norm = (Normalizer.fit(parts["src_train"].x) if cfg.normalize
            else Normalizer.identity(spec.channels))
    for d in parts.values():
        d.x = norm(d.x)
    return ScenarioData(spec, src, trg, normalizer=norm, **parts)


def subset(domain: Domain, idx: torch.Tensor) -> Domain:
    return Domain(domain.x[idx], domain.y[idx], domain.file)
