"""The node's own privacy budget under record-level DP (`fed.dp=record`).

The cloud calibrates a run's noise and reports the epsilon it spent (server/fed/dp/), but
a node whose operator set a budget (`unikd edge --max-epsilon`) does not rest its guarantee on
the cloud's word. Before it releases anything computed from its windows, it composes that
release onto its own ledger:
- its noisy window count, once per run (the count query, or the first train round);
- every DP-SGD step at the sampling rate and noise multiplier the round really uses (a cloud
  that sends z = 0 asks for an infinite epsilon and is refused).
A release that would take the ledger past the budget is refused: the round fails on this node
with an error naming the budget, and nothing leaves it. With a budget set, the node also refuses
every count query and train round that is not record-level DP, since those are not per-window
accounted. Evaluation replies (confusion counts of the labelled test windows) stay outside the
ledger, as they are outside the cloud's (docs/privacy.md).

Under `fed.record_noise=shares` the node adds only its 1/t share of the noise; its ledger charges
the full z all the same, which holds while at least t nodes survive to the unmasking (the
cloud's secure aggregation refuses fewer, docs/secure-aggregation.md).

The ledger lives in the run's node state and, where the node config names a `dp-ledger` file (a
deployed edge: `<edge home>/dp-ledger.json`, mode 0600), in that file, so it spans runs. The
budget's node-config keys are read in client/node/node_config.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context

from client.node.node_config import MAX_EPSILON_KEY, read_node_config
from shared.privacy.accounting import RDP_ORDERS, add_rdp, count_rdp, epsilon_from_rdp, step_rdp
from shared.errors import UnikdError
from shared.protocol.records import SetupConfig

LEDGER_FILE = "dp-ledger.json"  # the ledger's name in a deployed edge's home
STATE_KEY = "dp-budget"  # node state: this run's ledger (and whether its count was charged)


def _zero() -> tuple[float, ...]:
    return (0.0,) * len(RDP_ORDERS)


def read_ledger(path: Path) -> dict:
    """The ledger file, or an empty one; a file made for other RDP orders is an error."""
    if not path.is_file():
        return {"orders": list(RDP_ORDERS), "rdp": list(_zero()), "entries": []}
    try:
        data = json.loads(path.read_text())
        rdp = tuple(float(v) for v in data["rdp"])
        orders = [float(o) for o in data["orders"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UnikdError(f"privacy ledger {path}: unreadable ({err}); the node refuses to train "
                         f"until it is restored or removed by its operator") from None
    if orders != [float(o) for o in RDP_ORDERS] or len(rdp) != len(RDP_ORDERS):
        raise UnikdError(f"privacy ledger {path}: written for other RDP orders; refused")
    data["rdp"] = list(rdp)
    return data


def _write_ledger(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)  # atomic: a crash leaves the old ledger or the new one


def _run_state(context: Context) -> tuple[tuple[float, ...], bool]:
    rec = context.state.get(STATE_KEY)
    if rec is None:
        return _zero(), False
    return tuple(float(v) for v in rec["rdp"]), bool(rec["count-charged"])


def charge(context: Context, rc: SetupConfig, what: str, steps: int = 0,
           rate: float = 0.0) -> float | None:
    """Compose this release (the run's count, if not yet charged, and `steps` DP-SGD steps at
    sampling rate `rate` and the round's z) onto the ledger; refuse it past the budget.

    Returns the epsilon spent after it, or None when the operator set no budget.
    """
    budget = read_node_config(context.node_config).budget
    if budget is None:
        return None
    if rc.dp_mode != "record":
        raise UnikdError(f"round {rc.round} ({what}): this node's operator set a privacy budget "
                         f"({MAX_EPSILON_KEY}={budget.max_epsilon}), and the run asks for "
                         f"fed.dp={rc.dp_mode}, which is not accounted per window; refused")
    run_rdp, count_charged = _run_state(context)
    unit = _zero() if count_charged else count_rdp(rc.dp_count_std)
    if steps:
        unit = add_rdp(unit, step_rdp(rate, rc.dp_noise), steps)
    file_data = read_ledger(budget.ledger) if budget.ledger is not None else None
    before = tuple(file_data["rdp"]) if file_data is not None else run_rdp
    after = epsilon_from_rdp(add_rdp(before, unit), budget.delta)
    if not after <= budget.max_epsilon:
        now = epsilon_from_rdp(before, budget.delta)
        release = ", ".join(([] if count_charged else [f"its count at std {rc.dp_count_std:.4g}"])
                            + ([f"{steps} steps at z={rc.dp_noise:.4g}, q={rate:.4g}"]
                               if steps else [])) or "nothing new"
        raise UnikdError(f"round {rc.round} ({what}): this node's privacy budget is epsilon "
                         f"{budget.max_epsilon} at delta {budget.delta}; it has spent {now:.4g} "
                         f"and this release ({release}) would make it {after:.4g}; refused, "
                         f"nothing was sent")
    context.state[STATE_KEY] = ConfigRecord({"rdp": list(add_rdp(run_rdp, unit)),
                                             "count-charged": True})
    if file_data is not None:
        file_data["rdp"] = list(add_rdp(before, unit))
        file_data["entries"].append({
            "run": int(context.run_id), "round": rc.round, "what": what, "steps": steps,
            "q": rate, "z": rc.dp_noise, "count": not count_charged,
            "epsilon": None if math.isinf(after) else after})
        _write_ledger(budget.ledger, file_data)
    return after
