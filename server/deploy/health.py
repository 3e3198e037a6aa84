"""Whether a cloud listener answers: GET /health, once or until it does.

The proxy forwards /health to the SuperLink (proxy.py), so one check through the public port
covers both; `unikd cloud --health-check` and the cloud's start-up use it.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.errors import UnikdError
from shared.platform.processes import ProcessGroup


def ssl_context(ca: Path | None) -> ssl.SSLContext | None:
    """A TLS context that trusts only `ca`; None (plain HTTP) without one."""
    return ssl.create_default_context(cafile=str(ca)) if ca is not None else None


def health(address: str, ca: Path | None, timeout: float = 2.0) -> bool:
    """GET /health over HTTPS verified against `ca` (plain HTTP when `ca` is None)."""
    url = f"{'https' if ca else 'http'}://{address}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ssl_context(ca)) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_healthy(address: str, ca: Path | None, proc: ProcessGroup | None,
                 timeout: float = 60.0) -> float:
    """Seconds until `address` is healthy; raises if `proc` exits first or `timeout` passes."""
    start = time.monotonic()
    while not health(address, ca):
        if proc is not None and not proc.alive():
            raise UnikdError(f"{proc.name} exited with code {proc.popen.returncode}:\n"
                             f"{proc.log_tail()}")
        if time.monotonic() - start > timeout:
            raise UnikdError(f"{address} not healthy after {timeout:.0f}s"
                             + (f":\n{proc.log_tail()}" if proc else ""))
        time.sleep(0.1)
    return time.monotonic() - start
