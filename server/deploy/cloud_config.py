"""What `unikd cloud` is asked to run: its state directory, ports, certificates and options.

The SuperLink binds 127.0.0.1 only (`link_port`: Fleet, Control and Runtime APIs); the public
port is the proxy's (`port`: Fleet API and /health only). See superlink.py for the processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.deploy.certs import CertPaths
from shared.errors import UnikdError

DEFAULT_PORT = 8000  # the public port: the proxy (Fleet API + /health only)
DEFAULT_LINK_PORT = 9093  # the SuperLink on 127.0.0.1: Fleet + Control + Runtime APIs
DEFAULT_DASHBOARD_PORT = 9095  # the run dashboard and /metrics on 127.0.0.1 (server/watch/)
LINK_STATES = ("disk", "memory")


def local_address(host: str, port: int) -> str:
    """How processes on the cloud machine itself reach a listener on `host`."""
    if host in ("0.0.0.0", "", "::", "[::]"):
        return f"127.0.0.1:{port}"
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def listen_address(host: str, port: int) -> str:
    """`host:port` to listen on, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class CloudConfig:
    """The cloud's settings (`unikd cloud` flags), checked and resolved when made."""

    state_dir: Path
    host: str = "0.0.0.0"  # the proxy's (public) address
    port: int = DEFAULT_PORT
    link_port: int = DEFAULT_LINK_PORT  # the SuperLink, always on 127.0.0.1
    certs: Path | None = None  # default: <state_dir>/certs
    names: list[str] = field(default_factory=list)  # SANs if certs are made here (dev)
    insecure: bool = False
    auth: bool = True
    dev_certs: bool = False  # make a CA in the state dir when none is there (warns)
    link_state: str = "disk"  # "disk": D/state.db survives restarts; "memory": faster, volatile
    dashboard_port: int = DEFAULT_DASHBOARD_PORT  # on 127.0.0.1; 0: no dashboard, no /metrics

    def __post_init__(self) -> None:
        """Absolute paths, a known link state, two ports; no node auth without TLS."""
        self.state_dir = Path(self.state_dir).resolve()
        if self.link_state not in LINK_STATES:
            raise UnikdError(f"--link-state {self.link_state!r}: expected one of "
                             f"{', '.join(LINK_STATES)}")
        self.certs = Path(self.certs).resolve() if self.certs else self.state_dir / "certs"
        if self.insecure and self.auth:
            self.auth = False  # Flower refuses node auth without TLS (flower-notes §5.3)
        if self.port == self.link_port:
            raise UnikdError(f"--port {self.port} and --link-port {self.link_port} must differ: "
                             f"the proxy and the SuperLink each need their own port")
        if not 0 <= self.dashboard_port <= 65535:
            raise UnikdError(f"--dashboard-port {self.dashboard_port}: expected 0 (off) or a "
                             f"port 1..65535")
        if self.dashboard_port in (self.port, self.link_port):
            raise UnikdError(f"--dashboard-port {self.dashboard_port} must differ from --port "
                             f"{self.port} and --link-port {self.link_port}")

    @property
    def paths(self) -> CertPaths:
        """The files of the cloud's certificate folder."""
        return CertPaths(self.certs)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """The public (proxy) address as seen from this machine: what edges dial."""
        return local_address(self.host, self.port)

    @property
    def control_address(self) -> str:
        """The SuperLink itself, loopback only: the Control API for operators."""
        return f"127.0.0.1:{self.link_port}"

    @property
    def dashboard_address(self) -> str | None:
        """The run dashboard and /metrics, loopback only (plain HTTP); None when off."""
        return f"127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None

    @property
    def ca(self) -> Path | None:
        """The CA certificate clients verify the cloud with; None when insecure."""
        return None if self.insecure else self.paths.ca_crt
