"""This node's windows: its share of the target domain (simulation) or its own folder (device).

Unlabelled training windows feed the target terms. Labelled test windows, where a node has
them, serve federated evaluation, which returns only a confusion matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from client.node.node_config import NodeConfig, read_node_config
from shared.config import DataConfig
from shared.data.adatime import Domain
from shared.data.loaders import Normalizer
from shared.data.scenario import load_split, subset
from shared.data.datasets import DatasetSpec
from shared.data.partition import (PartitionSpec, client_domains, partition_indices,
                                   pooled_domains, population_indices)
from shared.errors import DataError, UnikdError
from shared.protocol.records import SetupConfig, SimSetup

log = logging.getLogger(__name__)

TRAIN_SALT, TEST_SALT = 11, 13


@dataclass(frozen=True)
class SharedPool:
    """A simulated population's node: its training windows are `rows` of a pool that every
    simulated node of this process shares (`partition: population:W`), so what is computed
    once per window, the frozen teacher's outputs, is computed once per pool
    (client_app.pool_teacher_outputs) instead of once per node."""

    key: tuple  # identifies the pool and its normalisation
    rows: torch.Tensor  # this node's windows in the pool
    windows: torch.Tensor  # the whole pool, normalised like x_train


@dataclass
class LocalData:
    x_train: torch.Tensor  # [n, C, L] normalised, unlabelled for training purposes
    test: Domain | None  # labelled test windows for federated evaluation (optional)
    pool: SharedPool | None = None  # a simulated population's node: the pool it draws from

    @property
    def num_examples(self) -> int:
        return len(self.x_train)


def _raw_split(dataset: str, path: str, shift: float, split: str, domain: str) -> Domain:
    """One validated file; its shape is checked against the round's spec by `check_shape`."""
    return load_split(DataConfig(dataset=dataset, path=path, synth_shift=shift), None, split,
                      domain)


@lru_cache(maxsize=8)
def simulated_split(dataset: str, path: str, shift: float, target: str, partition: str,
               num_clients: int, client: int, seed: int) -> tuple[Domain, Domain | None]:
    """A simulated node's raw train and test windows, decided by the simulator's partitioner.

    Its windows are copied out of the pool only when asked for (a few per client): the pool and
    the split are held once per process for all simulated clients (`_pool`, `_split`), so a
    population of thousands costs its index lists, not copies of its windows."""
    spec = PartitionSpec.parse(partition)
    if spec.kind == "per-domain":
        domain = client_domains(target, num_clients, spec)[client]
        return (_raw_split(dataset, path, shift, "train", domain),
                _raw_split(dataset, path, shift, "test", domain))
    if not 0 <= client < num_clients:
        raise UnikdError(f"client {client}: the simulated federation has clients 0.."
                         f"{num_clients - 1}")
    domain = client_domains(target, 1, spec)[0]  # every client draws from the one pool
    train, test = _pool(dataset, path, shift, domain)
    if spec.kind == "population":  # drawn for this client alone, overlapping the others
        return (subset(train, population_indices(len(train), client, spec.windows, seed,
                                                 TRAIN_SALT)),
                subset(test, population_indices(len(test), client, spec.windows, seed,
                                                TEST_SALT)))
    train_parts, test_parts = _split(dataset, path, shift, domain, partition, num_clients, seed)
    train_part = subset(train, train_parts[client])
    if isinstance(test_parts, str):  # e.g. 100 clients, 95 test windows: train on, skip evaluation
        log.warning("client %d: no test windows (%s); it will not take part in evaluation",
                    client, test_parts)
        return train_part, None
    return train_part, subset(test, test_parts[client])


@lru_cache(maxsize=2)
def _pool(dataset: str, path: str, shift: float, pool: str) -> tuple[Domain, Domain]:
    """The target pool's train and test windows, loaded once for every simulated client."""
    return (_pooled(dataset, path, shift, "train", pool),
            _pooled(dataset, path, shift, "test", pool))


@lru_cache(maxsize=2)
def _split(dataset: str, path: str, shift: float, pool: str, partition: str, num_clients: int,
           seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor] | str]:
    """The pool's train and test windows split over the clients (index tensors), computed once;
    the test split is the reason it failed where it cannot be made."""
    train, test = _pool(dataset, path, shift, pool)
    spec = PartitionSpec.parse(partition)
    parts = partition_indices(train.y, num_clients, spec, seed * 1000 + TRAIN_SALT)
    try:
        return parts, partition_indices(test.y, num_clients, spec, seed * 1000 + TEST_SALT)
    except UnikdError as err:
        return parts, str(err)


def _pooled(dataset: str, path: str, shift: float, split: str, pool: str) -> Domain:
    """The windows of the pool's domains, concatenated in the listed order (one domain: its
    file as loaded)."""
    parts = [_raw_split(dataset, path, shift, split, d) for d in pooled_domains(pool)]
    if len(parts) == 1:
        return parts[0]
    return Domain(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts[0].file)


@lru_cache(maxsize=4)
def _device(dataset: str, path: str, domain: str) -> tuple[Domain, Domain | None]:
    """A deployed node's own folder; a test file is optional there."""
    train = _raw_split(dataset, path, 0.0, "train", domain)
    try:
        test = _raw_split(dataset, path, 0.0, "test", domain)
    except Exception:  # no labelled windows on this device: it just skips evaluation
        test = None
    return train, test


def store_training_windows(path: str, rc: SetupConfig, client: int,
                           spec: DatasetSpec | None = None) -> torch.Tensor:
    """Every window `unikd serve` stored so far, raw [N, C, L], oldest first, checked like a
    data file: a missing, empty, corrupt or wrongly shaped store, or a non-finite window, is an
    error naming the store, the round and the client (the node answers with it; the cloud
    logs it and goes on without this node)."""
    import sqlite3

    from client.edge_service.store import store_windows

    where = f"client {client}, round {rc.round}"
    try:
        x = store_windows(path)
    except DataError as err:
        raise DataError(err.file, f"{err.problem} ({where})") from None
    except sqlite3.DatabaseError as err:
        raise DataError(path, f"not a readable window store ({err}) ({where})") from None
    if spec is not None and tuple(x.shape[1:]) != (spec.channels, spec.length):
        raise DataError(path, f"windows of shape {list(x.shape[1:])}, the run's {spec.name} "
                              f"model takes [{spec.channels}, {spec.length}] ({where})")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise DataError(path, f"{int(bad.sum())} NaN or Inf value(s), first in window {first} "
                              f"(oldest first) ({where})")
    return x


def local_data(rc: SetupConfig, sim: SimSetup, node_config: NodeConfig | Mapping[str, object],
               client: int, norm: Normalizer, spec: DatasetSpec | None = None) -> LocalData:
    """Where this node's windows come from (its node config, typed or as Flower hands it over),
    first match wins:

    * `store-path`: the windows sensor apps ingested through `unikd serve` (read fresh each
      round, so windows ingested on the device train the next round); labelled test windows
      may still come from `data-path`;
    * `data-path`: a device's own AdaTime folder;
    * otherwise the simulator's partition of the target domain.
    """
    node = read_node_config(node_config)
    domain = node.domain if node.domain is not None else sim.target
    if node.store_path is not None:
        x = store_training_windows(node.store_path, rc, client, spec)
        test = (_device(rc.dataset, node.data_path, domain)[1]
                if node.data_path is not None else None)
        norm_test = Domain(norm(test.x), test.y, test.file) if test is not None else None
        return LocalData(norm(x), norm_test)
    if node.data_path is not None:
        train, test = _device(rc.dataset, node.data_path, domain)
    else:
        train, test = simulated_split(rc.dataset, sim.data_path, sim.synth_shift, sim.target,
                                 sim.partition, sim.num_clients, client, sim.seed)
    norm_test = Domain(norm(test.x), test.y, test.file) if test is not None else None
    pool = None
    if node.data_path is None and PartitionSpec.parse(sim.partition).kind == "population":
        pool = population_pool(rc.dataset, sim, client, norm)
    return LocalData(norm(train.x), norm_test, pool)


def population_pool(dataset: str, sim: SimSetup, client: int, norm: Normalizer) -> SharedPool:
    """The pool a `population:W` node draws from, normalised once per process (an element-wise
    z-score: the pool's rows are exactly the node's normalised windows)."""
    spec = PartitionSpec.parse(sim.partition)
    domain = client_domains(sim.target, 1, spec)[0]
    train = _pool(dataset, sim.data_path, sim.synth_shift, domain)[0]
    stats = (tuple(norm.mean.tolist()), tuple(norm.std.tolist()))
    key = (dataset, sim.data_path, sim.synth_shift, domain, stats)
    rows = population_indices(len(train), client, spec.windows, sim.seed, TRAIN_SALT)
    return SharedPool(key, rows, _normalised_pool(key, train.x, norm))


_NORMALISED: dict[tuple, torch.Tensor] = {}  # the last pool normalised, by its key


def _normalised_pool(key: tuple, x: torch.Tensor, norm: Normalizer) -> torch.Tensor:
    if key not in _NORMALISED:
        _NORMALISED.clear()
        _NORMALISED[key] = norm(x)
    return _NORMALISED[key]


def check_shape(data: LocalData, spec: DatasetSpec,
                node_config: NodeConfig | Mapping[str, object]) -> LocalData:
    """This node's windows against the model shape the round's `spec` record gives."""
    node = read_node_config(node_config)
    where = node.store_path or node.data_path or "simulated data"
    got = tuple(data.x_train.shape[1:])
    if got != (spec.channels, spec.length):
        raise UnikdError(f"{where}: this node's windows are {got[0]} channels x {got[1]} samples; "
                         f"the round's model ({spec.name}) takes {spec.channels} x {spec.length}")
    if data.test is not None:
        test_shape = tuple(data.test.x.shape[1:])
        if test_shape != got:
            raise UnikdError(f"{data.test.file}: test windows are {test_shape[0]} x "
                             f"{test_shape[1]}, the training windows {got[0]} x {got[1]}")
        top = int(data.test.y.max()) if len(data.test) else -1
        if top >= spec.classes:
            raise UnikdError(f"{data.test.file}: label {top} is out of range for the round's "
                             f"model ({spec.name}, {spec.classes} classes)")
    return data


def write_device_folder(root: Path, client: int, clients: int, cfg) -> Path:
    """Simulated client `client`'s windows (of `clients`, under RunConfig `cfg`) written as the
    AdaTime folder a device would hold: root/data-<client>/{train,test}_1.pt. For tests and
    benchmarks of real deployments."""
    train, test = simulated_split(cfg.data.dataset, cfg.data.path, cfg.data.synth_shift,
                                  cfg.data.scenario.split("->")[1], cfg.fed.partition, clients,
                                  client, cfg.seed)
    folder = Path(root) / f"data-{client}"
    folder.mkdir(parents=True)
    torch.save({"samples": train.x, "labels": train.y}, folder / "train_1.pt")
    torch.save({"samples": test.x, "labels": test.y}, folder / "test_1.pt")
    return folder
