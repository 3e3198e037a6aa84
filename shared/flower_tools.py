"""Locating Flower's console scripts; both the cloud and the edge launch them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from shared.errors import UnikdError


def flwr_tool(name: str) -> str:
    """A Flower console script from this Python environment (else from PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UnikdError(f"{name} not found; install flwr==1.42.0 in this environment")
    return found
