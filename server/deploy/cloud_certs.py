"""The cloud's TLS files at start-up: present and private, or made here with `--dev-certs`.

The CA is offline: the state dir receives ca.crt, server.pem and server.key, made on the
operator's machine with `unikd certs init` (certs.py); `--dev-certs` keeps the old make-it-here
shortcut, with a warning.
"""

from __future__ import annotations

import logging
import socket

from server.deploy.certs import describe, init_all, make_server_cert
from server.deploy.cloud_config import CloudConfig
from shared.errors import UnikdError

log = logging.getLogger(__name__)


def default_names() -> list[str]:
    """The names a dev certificate is issued for without `--name`: this host and loopback."""
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def offline_ca_hint(cfg: CloudConfig) -> str:
    """How to make the cloud's certificates on the operator's machine (for error messages)."""
    names = " ".join(f"--name {n}" for n in (cfg.names or ["CLOUD_HOST_OR_IP"]))
    return (f"on your own machine (the CA stays there): `unikd certs init --dir pki {names} "
            f"--cloud-dir cloud-certs`, then copy cloud-certs/ (ca.crt, server.pem, server.key) "
            f"to {cfg.paths.dir} on the cloud; or pass --dev-certs to make a throw-away CA here")


def ensure_certs(cfg: CloudConfig) -> list[str]:
    """Check the cloud's TLS files; returns what was created (only with `dev_certs`).

    The cloud needs ca.crt + server.pem + server.key and nothing else: the CA key stays on
    the operator's machine.
    """
    p = cfg.paths
    if p.ca_crt.is_file() and p.server_crt.is_file() and p.server_key.is_file():
        if p.server_key.stat().st_mode & 0o077:
            raise UnikdError(f"{p.server_key}: readable by others; chmod 600 it")
        if p.ca_key.is_file():
            log.warning("%s is on the cloud: move it to the operator's machine; the cloud "
                        "needs only ca.crt, server.pem and server.key", p.ca_key)
        return []
    missing = [f.name for f in (p.ca_crt, p.server_crt, p.server_key) if not f.is_file()]
    if not cfg.dev_certs:
        raise UnikdError(f"{p.dir}: missing {', '.join(missing)}. Make them {offline_ca_hint(cfg)}")
    log.warning("--dev-certs: making a CA in %s; its key sits on the cloud, so whoever reads "
                "the state dir can impersonate this cloud. Use an offline CA for real devices.",
                p.dir)
    names = list(dict.fromkeys(cfg.names + ["localhost", "127.0.0.1"])) if cfg.names \
        else default_names()
    if p.ca_crt.is_file() and p.ca_key.is_file():
        make_server_cert(p.dir, names)
        return [str(p.server_crt)]
    if p.ca_crt.is_file() or p.ca_key.is_file() or p.server_crt.is_file():
        raise UnikdError(f"{p.dir}: incomplete certificate folder (need ca.crt, server.pem and "
                         f"server.key, or ca.crt + ca.key to issue them); see `unikd certs init`")
    init_all(p.dir, names)
    return [str(p.ca_crt), str(p.server_crt)]


def check_server_names(cfg: CloudConfig) -> None:
    """The proxy and the local tools dial 127.0.0.1: the certificate must name it."""
    names = describe(cfg.paths.dir).get("server", {}).get("names", [])
    if "127.0.0.1" not in names:
        raise UnikdError(f"{cfg.paths.server_crt} names {names}, not 127.0.0.1: the proxy "
                         f"verifies the SuperLink on loopback by that name; reissue it with "
                         f"`unikd certs init` (it always adds 127.0.0.1)")
