"""The node config, typed: what the operator (or the simulator) tells the ClientApp about its node.

Flower hands every message the node config as a plain mapping (`context.node_config`). Its keys
are declared here and nowhere else: `unikd edge` writes them with `NodeConfig.to_arg`
(client/node/supernode.py), and the ClientApp reads them through `read_node_config`, which
checks every key once per node and names the one that is wrong.

    partition-id     the client id (seeds and reply order; unique per edge); 0 when absent
    data-path        this device's AdaTime folder (train_<domain>.pt, optionally test_<domain>.pt)
    domain           which domain file to read there (default: the run's target domain)
    store-path       the window store `unikd serve` fills; the node trains on its windows
    model-dir        the versioned model directory delivered students are installed in
    max-epsilon      the operator's record-DP budget (client/node/budget.py); absent or 0: none
    dp-delta         the delta that budget is stated at (default 1e-5)
    dp-ledger        a JSON file that carries the node's privacy ledger across runs
    dp-reproducible  in-process simulation only: DP noise drawn from the run seed alone
    device           where this node computes: cpu (the default), cuda or auto (cuda when
                     present); `unikd edge --device`, or the simulator's run device
    num-partitions   set by Flower's simulation engine and our in-process Grid; read by nothing

The device is the node's own choice, never the cloud's: nothing in a round says where to
compute. A deployed edge computes on its CPU unless its operator says otherwise, because its
GPU, where it has one, may be busy with other work (the edge service's predictions, the
device's own apps), the student's target step is small enough for a CPU, and on the CPU a
deployment reproduces the simulation bit for bit (tests/test_deploy.py). The in-process
simulator (server/fed/harness.py) gives its nodes the run's resolved device: there the cloud's
machine is every node's machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shared.errors import UnikdError
from shared.unikd.devices import DEVICE_NAMES

PARTITION_ID_KEY = "partition-id"
DATA_PATH_KEY = "data-path"
DOMAIN_KEY = "domain"
STORE_PATH_KEY = "store-path"
MODEL_DIR_KEY = "model-dir"
MAX_EPSILON_KEY = "max-epsilon"
DELTA_KEY = "dp-delta"
LEDGER_KEY = "dp-ledger"
REPRODUCIBLE_KEY = "dp-reproducible"
NUM_PARTITIONS_KEY = "num-partitions"
DEVICE_KEY = "device"
KEYS = (DATA_PATH_KEY, DOMAIN_KEY, PARTITION_ID_KEY, STORE_PATH_KEY, MODEL_DIR_KEY,
        MAX_EPSILON_KEY, DELTA_KEY, LEDGER_KEY, REPRODUCIBLE_KEY, DEVICE_KEY, NUM_PARTITIONS_KEY)
DEFAULT_DEVICE = "cpu"  # a deployed edge's (see the module docstring for why not auto)
DEFAULT_DELTA = 1e-5
NO_BUDGET = (None, "", 0, 0.0, "0")  # max-epsilon values that mean "no budget set"


@dataclass(frozen=True)
class Budget:
    """The operator's privacy budget: epsilon at delta, and the file its ledger spans runs in."""

    max_epsilon: float
    delta: float
    ledger: Path | None

    def __post_init__(self) -> None:
        if not (self.max_epsilon > 0 and 0 < self.delta < 1):
            raise UnikdError(f"node config {MAX_EPSILON_KEY}={self.max_epsilon}, {DELTA_KEY}="
                             f"{self.delta}: need epsilon > 0 and 0 < delta < 1")


@dataclass(frozen=True)
class NodeConfig:
    """One node's config; the module docstring says what each key means."""

    client_id: int = 0
    data_path: str | None = None
    domain: str | None = None
    store_path: str | None = None
    model_dir: str | None = None
    budget: Budget | None = None
    dp_reproducible: bool = False
    device: str = DEFAULT_DEVICE  # auto | cpu | cuda (shared/unikd/compute.py resolves it)

    @classmethod
    def from_node_config(cls, raw: Mapping[str, object]) -> NodeConfig:
        """Parse and check Flower's mapping; an unknown key or a bad value is an error naming
        the key."""
        unknown = sorted(set(raw) - set(KEYS))
        if unknown:
            raise UnikdError(f"node config {', '.join(unknown)}: unknown key(s); known: "
                             f"{', '.join(KEYS)}")
        return cls(client_id=_client_id(raw.get(PARTITION_ID_KEY, 0)),
                   data_path=_text(raw, DATA_PATH_KEY), domain=_text(raw, DOMAIN_KEY, int),
                   store_path=_text(raw, STORE_PATH_KEY), model_dir=_text(raw, MODEL_DIR_KEY),
                   budget=_budget(raw), dp_reproducible=_flag(raw, REPRODUCIBLE_KEY),
                   device=_device(raw))

    def to_arg(self) -> str:
        """The `--node-config` argument Flower's SuperNode parses back into this config."""
        pairs = [(DATA_PATH_KEY, self.data_path), (DOMAIN_KEY, self.domain),
                 (PARTITION_ID_KEY, self.client_id), (STORE_PATH_KEY, self.store_path),
                 (MODEL_DIR_KEY, self.model_dir)]
        if self.budget is not None:
            pairs += [(MAX_EPSILON_KEY, self.budget.max_epsilon), (DELTA_KEY, self.budget.delta),
                      (LEDGER_KEY, self.budget.ledger)]
        if self.dp_reproducible:
            pairs.append((REPRODUCIBLE_KEY, True))
        if self.device != DEFAULT_DEVICE:  # the default stays implicit: the same argument as before
            pairs.append((DEVICE_KEY, self.device))
        return " ".join(f"{key}={_toml(value)}" for key, value in pairs if value is not None)


def read_node_config(raw: NodeConfig | Mapping[str, object]) -> NodeConfig:
    """The typed node config of `raw` (Flower's `context.node_config`), parsed once per node:
    every message of a node brings the same mapping. A NodeConfig passes through."""
    if isinstance(raw, NodeConfig):
        return raw
    return _parsed(tuple(sorted(raw.items())))


@lru_cache(maxsize=256)
def _parsed(items: tuple[tuple[str, object], ...]) -> NodeConfig:
    return NodeConfig.from_node_config(dict(items))


def _client_id(value: object) -> int:
    """Flower's simulation engine sends the partition id as text, a SuperNode as a number."""
    try:
        cid = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else -1
    except ValueError:
        cid = -1
    if cid < 0:
        raise UnikdError(f"node config {PARTITION_ID_KEY}={value!r}: not a client id "
                         f"(an integer >= 0)")
    return cid


def _text(raw: Mapping[str, object], key: str, *also: type) -> str | None:
    """A path or name; absent: None. `also`: other value types read as text (domain=3)."""
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (str, *also)) or value == "":
        raise UnikdError(f"node config {key}={value!r}: expected a non-empty string")
    return str(value)


def _flag(raw: Mapping[str, object], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise UnikdError(f"node config {key}={value!r}: expected true or false")
    return value


def _device(raw: Mapping[str, object]) -> str:
    """auto, cpu or cuda (absent: cpu). Whether cuda is there is checked where the node first
    computes (client_app.node_device), by the same rule as the cloud's `device` key."""
    value = raw.get(DEVICE_KEY, DEFAULT_DEVICE)
    if value not in DEVICE_NAMES:
        raise UnikdError(f"node config {DEVICE_KEY}={value!r}: expected one of "
                         f"{', '.join(DEVICE_NAMES)}")
    return str(value)


def _budget(raw: Mapping[str, object]) -> Budget | None:
    """The operator's budget, or None when none is set."""
    max_eps = raw.get(MAX_EPSILON_KEY)
    if max_eps in NO_BUDGET:
        return None
    try:
        eps, delta = float(max_eps), float(raw.get(DELTA_KEY, DEFAULT_DELTA))
    except (TypeError, ValueError):
        raise UnikdError(f"node config {MAX_EPSILON_KEY}={max_eps!r} / {DELTA_KEY}: not numbers"
                         ) from None
    ledger = raw.get(LEDGER_KEY)
    return Budget(eps, delta, Path(str(ledger)) if ledger else None)


def _toml(value: object) -> str:
    """One value as Flower's config parser reads it back: text quoted, numbers as Python
    writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace('"', '\\"') + '"'
    return repr(value)
