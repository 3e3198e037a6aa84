"""Flower internals the cloud and the operator use: the Control API in-process, the app bundle.

`FlwrCli` (flwr_cli.py) calls a SuperLink's Control API through these functions instead of a
`flwr` process per call (each costs ~2 s of CPU, 4-7 s on a busy box): what `flwr supernode
list`, `flwr supernode register`, `flwr ls`, `flwr run` and `flwr log --show` send, sent from
this process. `fab_bytes` builds the bundle exactly as `flwr run` does, so that the operator's
signature over its hash signs what is sent. Every internal used here is pinned and checked in
shared/platform/flower_pins.py (CONTROL_SIDE).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from shared.errors import UnikdError

# ---------------------------------------------------------------- app bundles


def fab_bytes(app: Path) -> bytes:
    """The app bundle `flwr run APP` builds (deterministic: sorted files, fixed dates)."""
    from flwr.cli.build import build_fab_from_disk

    try:
        return build_fab_from_disk(Path(app))
    except (ValueError, OSError) as err:
        raise UnikdError(f"{app}: cannot build the app bundle: {err}") from None


def fab_hash(app: Path) -> str:
    """The hash Flower names the bundle by (cli/run/run.py: sha256 of the bundle's bytes)."""
    return hashlib.sha256(fab_bytes(app)).hexdigest()


# ---------------------------------------------------------------- the cloud's Control API

_FLWR_HOME_LOCK = threading.Lock()


def control_client(address: str, ca: Path | None, home: Path):
    """An in-process client of a SuperLink's Control API, built as the `flwr` CLI builds it
    (runtime-version and account-auth interceptors), for the calls a deployment makes often:
    `flwr supernode list`, `flwr ls`, `flwr run` and `flwr log` each start a process that costs
    ~2 s of CPU.
    `home` is the FLWR_HOME whose config names the connection (read while building)."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    conn = (SuperLinkConnection(name="unikd", address=address, root_certificates=str(ca))
            if ca else SuperLinkConnection(name="unikd", address=address, insecure=True))
    with _FLWR_HOME_LOCK:  # the CLI's auth plugin reads its tokens under FLWR_HOME
        before = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(home)
        try:
            return init_http_client_from_connection(conn)
        finally:
            if before is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = before


def control_error(err: Exception) -> str:
    """What a failed Control API call says: the SuperLink's own message where its HTTP answer
    carries one (JSON `message` or `detail`, as the `flwr` CLI prints it), else the error."""
    response = getattr(err, "response", None)
    try:
        body = response.json() if response is not None else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return f"{body[key]} (HTTP {response.status_code})"
    return str(err)


def list_nodes(client) -> list[dict]:
    """The nodes, as `flwr supernode list --format json` lists them (deleted ones left out)."""
    from flwr.proto.control_pb2 import ListNodesRequest

    res = client.ListNodes(ListNodesRequest())
    return [{"node-id": str(n.node_id), "owner-name": n.owner_name, "status": n.status}
            for n in sorted(res.nodes_info, key=lambda n: n.registered_at)
            if n.status != "deleted"]


def node_states(client) -> list[dict]:
    """Every registered node's liveness as the SuperLink keeps it: node-id, name, status
    (online/offline/registered), online-until (the SuperLink's clock, seconds; the last
    heartbeat plus HEARTBEAT_PATIENCE intervals), heartbeat-interval, last-activated-at and
    last-deactivated-at (ISO texts, empty when never)."""
    from flwr.common.constant import HEARTBEAT_PATIENCE
    from flwr.proto.control_pb2 import ListNodesRequest

    res = client.ListNodes(ListNodesRequest())
    return [{"node-id": str(n.node_id), "name": n.name or n.owner_name, "status": n.status,
             "online-until": float(n.online_until),
             "heartbeat-interval": float(n.heartbeat_interval),
             "patience": HEARTBEAT_PATIENCE, "last-activated-at": n.last_activated_at,
             "last-deactivated-at": n.last_deactivated_at}
            for n in sorted(res.nodes_info, key=lambda n: n.registered_at)
            if n.status not in ("deleted", "unregistered")]


def run_status(client, run_id: int) -> dict | None:
    """One run as `flwr ls --run-id` gives it (run-id, status 'STATUS[:SUB_STATUS]',
    status-details), or None when the SuperLink does not know it."""
    from flwr.proto.control_pb2 import ListRunsRequest

    res = client.ListRuns(ListRunsRequest(run_id=run_id))
    run = res.run_dict.get(run_id)
    if run is None:
        return None
    sub = run.status.sub_status
    return {"run-id": str(run.run_id),
            "status": f"{run.status.status}:{sub}" if sub else run.status.status,
            "status-details": run.status.details or "N/A"}


def start_run(client, fab: bytes, run_config: dict[str, str]) -> int:
    """Start a run of this app bundle, as `flwr run APP --run-config FILE` does (the bundle's
    sha256 as its hash, no Flower verifications, the connection's default federation); its
    run id. `fab` is `fab_bytes(app)`, so a signature made over its hash signs what is sent."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    req = StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})),
                          override_config=user_config_to_proto(dict(run_config)),
                          federation="", app_spec="")
    res = client.StartRun(req)
    if not res.HasField("run_id"):
        raise UnikdError("the SuperLink did not start the run (no run id in its answer)")
    return int(res.run_id)


def register_node(client, public_key: Path, name: str | None) -> int:
    """Register a node's OpenSSH ECDSA public key, as `flwr supernode register KEY --name NAME`
    does (a NIST curve, sent in Flower's byte form); the node id."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    try:
        key = load_ssh_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as err:
        raise UnikdError(f"{public_key}: not a readable OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise UnikdError(f"{public_key}: Flower node keys are ECDSA on a NIST curve")
    res = client.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key),
                                                  name=name))
    if not res.node_id:
        raise UnikdError(f"the SuperLink did not register {public_key} (no node id)")
    return int(res.node_id)


def run_logs(client, run_id: int) -> str:
    """The run's log so far, as `flwr log RUN --show` prints it (the first answer of the
    SuperLink's log stream)."""
    from flwr.proto.control_pb2 import StreamLogsRequest

    for res in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0)):
        return res.log_output
    return ""
