"""One authenticated Fleet API call, made the way Flower's SuperNode makes it when it starts.

`unikd edge` asks the cloud, before it starts its SuperNode, whether this node's key would be
let in (client/node/join_check.py). It does what the SuperNode's first call does
(flwr/supernode/fleet_http_connection.py): an `ActivateNode` request through Flower's own Fleet
HTTP client, signed by Flower's node-auth interceptor with the node's private key. A registered
key is activated and at once deactivated again, so the SuperNode that starts next can activate
it (the SuperLink activates only a node that is not online). The activation asks for the
shortest heartbeat interval the SuperLink accepts: should the deactivation be lost, the node is
offline again after two of them.

The SuperLink's answers, as flwr 1.42 gives them (flwr/superlink/routers/fleet/node_auth.py,
flwr/superlink/servicer/fleet/fleet_handlers.py):
  412 + FLEET_NODE_ACTIVATION_FAILED  no node is registered with this key, or it is online now
  401                                 the signed timestamp was refused (clock) or the signature
  RUNTIME_VERSION_INCOMPATIBLE        the cloud runs a Flower this node cannot talk to

Every Flower internal used here is declared in shared/platform/flower_pins.py (FLEET_PROBE).
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class FleetAnswer:
    """What the cloud said to one ActivateNode request.

    kind: "activated" (node_id set), "refused" (the key is not registered, or its node is
    online now), "unauthenticated" (HTTP 401), "version" (another Flower), "http" (any other
    HTTP error), "unreachable" (no HTTP answer at all)."""

    kind: str
    node_id: int | None = None
    status: int | None = None  # the HTTP status of an error
    detail: str = ""  # the cloud's public error text, or the transport error
    skew: float | None = None  # seconds this device's clock is ahead of the cloud's (401 only)


def activate_once(address: str, ca: Path, private_key, timeout: float) -> FleetAnswer:
    """ActivateNode for `private_key` (an EC private key) at `address` (host:port, TLS verified
    against `ca` as the SuperNode does), then DeactivateNode; never raises for the cloud's
    answer."""
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, DeactivateNodeRequest
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    public = private_key.public_key()
    quiet = logging.getLogger("httpx")  # it logs each request at INFO: keep the cause one line
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    client = FleetHttpClient(
        f"https://{address}", timeout=timeout,
        verify=ssl.create_default_context(cafile=str(ca)),  # what httpx makes of the CA path
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                      NodeAuthHttpInterceptor(private_key, public)])
    try:
        with client:
            res = client.ActivateNode(ActivateNodeRequest(
                public_key=public_key_to_bytes(public),
                heartbeat_interval=HEARTBEAT_MIN_INTERVAL))
            try:
                client.DeactivateNode(DeactivateNodeRequest(node_id=res.node_id))
            except httpx.HTTPError:
                pass  # offline by itself after two heartbeat intervals
            return FleetAnswer("activated", node_id=int(res.node_id))
    except httpx.HTTPStatusError as err:
        return _refusal(err.response)
    except httpx.TransportError as err:
        return FleetAnswer("unreachable", detail=str(err) or type(err).__name__)
    finally:
        quiet.setLevel(level)


def _refusal(response: httpx.Response) -> FleetAnswer:
    """The cloud's HTTP error, read with Flower's own error decoder."""
    from flwr.supercore.error import ApiErrorCode, FlowerError

    error = FlowerError.from_json(response.text)
    detail = error.message if error is not None else response.reason_phrase
    code = error.code if error is not None else None
    if code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED:
        return FleetAnswer("refused", status=response.status_code, detail=detail)
    if code == ApiErrorCode.RUNTIME_VERSION_INCOMPATIBLE:
        return FleetAnswer("version", status=response.status_code, detail=detail)
    if response.status_code == httpx.codes.UNAUTHORIZED:
        try:
            detail = response.json().get("detail", detail)  # FastAPI's {"detail": ...}
        except ValueError:
            pass
        return FleetAnswer("unauthenticated", status=401, detail=detail,
                           skew=_clock_skew(response.headers.get("date")))
    return FleetAnswer("http", status=response.status_code, detail=detail)


def _clock_skew(date_header: str | None) -> float | None:
    """How far this device's clock is ahead of the cloud's, from the answer's Date header
    (1 s resolution); None when the answer has none."""
    if not date_header:
        return None
    try:
        cloud = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return None
    return time.time() - cloud
