"""Flower's console scripts and environment; both the cloud and the edge launch them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from shared.errors import UnikdError

# Every Flower process we start: no telemetry, no update check, and never a per-run `uv sync`
# (flower-notes §0.4: it pulls CUDA torch and gigabytes). A SuperNode has it off by default.
FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flwr_tool(name: str) -> str:
    """A Flower console script from this Python environment (else from PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UnikdError(f"{name} not found; install flwr==1.42.0 in this environment")
    return found


def flwr_env(flwr_home: Path | None = None, extra: dict | None = None) -> dict[str, str]:
    env = {**os.environ, **FLWR_ENV}
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


# What a cloud process inherits from the operator's shell; nothing else (no tokens, no proxies,
# no cloud credentials that happen to be exported there).
MINIMAL_ENV_KEYS = ("HOME", "LANG", "LC_ALL", "PYTHONPATH")


def minimal_env(flwr_home: Path | None = None, extra: dict | None = None) -> dict[str, str]:
    """PATH (this Python's bin/ first, so Flower finds flower-superexec), HOME, LANG,
    PYTHONPATH if set, and our FLWR_* settings; not the caller's whole environment."""
    env = {k: os.environ[k] for k in MINIMAL_ENV_KEYS if k in os.environ}
    path = [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
    env["PATH"] = os.pathsep.join(path)
    env.update(FLWR_ENV)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env
