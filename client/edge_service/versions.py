"""The service's model directory: numbered student versions, one of them in service.

    DIR/service.json    the window shape the service takes (written by `unikd serve --model-dir`)
    DIR/v0001.pt ...    edge bundles (shared.protocol.checkpoints EDGE_BUNDLE), never rewritten
    DIR/versions.json   per version: where it came from (delivery tag, run, round), when
    DIR/current.pt      a symlink to the version in service; `unikd serve` watches it

Installing writes the next version's file atomically, then swaps the `current.pt` link in one
rename, so the service sees the old version or the new one, never a half-written file. Earlier
versions stay on disk: `rollback` points `current.pt` at the version before the one in service.
A file lock serialises installers (a delivery and an `unikd edge-pull` at the same time).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from client.edge_service.windows import WindowShape
from shared.errors import UnikdError
from shared.platform.runs import atomic_write_bytes

CURRENT = "current.pt"
SERVICE = "service.json"
HISTORY = "versions.json"
VERSION_FILE = re.compile(r"v(\d{4,})\.pt")


class VersionError(UnikdError):
    """A model directory that cannot take this install or rollback."""


def version_file(version: int) -> str:
    return f"v{version:04d}.pt"


def version_of(path: str | Path) -> int:
    """The version number of a model file named vNNNN.pt (0: not a versioned file)."""
    match = VERSION_FILE.fullmatch(Path(path).name)
    return int(match.group(1)) if match else 0


def versions(model_dir: str | Path) -> list[int]:
    folder = Path(model_dir)
    return sorted(v for p in folder.glob("v*.pt") if (v := version_of(p))) if folder.is_dir() \
        else []


def current_version(model_dir: str | Path) -> int:
    """The version in service (0: none installed yet)."""
    link = Path(model_dir) / CURRENT
    return version_of(os.readlink(link)) if link.is_symlink() else 0


def write_service_shape(model_dir: str | Path, shape: WindowShape) -> None:
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_text(folder / SERVICE, json.dumps({"channels": shape.channels,
                                               "length": shape.length}) + "\n")


def service_shape(model_dir: str | Path) -> WindowShape | None:
    file = Path(model_dir) / SERVICE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
        return WindowShape(int(info["channels"]), int(info["length"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise VersionError(f"{file}: unreadable ({exc}); restart `unikd serve --model-dir`"
                           ) from None


def history(model_dir: str | Path) -> dict[str, dict]:
    file = Path(model_dir) / HISTORY
    if not file.is_file():
        return {}
    try:
        return dict(json.loads(file.read_text()))
    except ValueError as exc:
        raise VersionError(f"{file}: unreadable ({exc})") from None


@dataclass(frozen=True)
class Installed:
    version: int
    path: Path
    new: bool  # False: this delivery (same tag) was already the version in service


@contextlib.contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(model_dir: str | Path, write: Callable[[Path], None], shape: WindowShape,
            info: dict, tag: str = "") -> Installed:
    """Write the next version with `write(path)` and put it in service.

    `shape` is the window shape of the student being installed: it must be the service's
    (service.json), else VersionError and nothing changes. A `tag` equal to the version in
    service's tag installs nothing (a delivery that arrives twice).
    """
    folder = Path(model_dir)
    with locked(folder):
        wanted = service_shape(folder)
        if wanted is not None and wanted != shape:
            raise VersionError(f"{folder}: the service takes windows of shape {wanted}, this "
                               f"student takes {shape}; not installed")
        past = history(folder)
        now = current_version(folder)
        if tag and now and past.get(str(now), {}).get("tag") == tag:
            return Installed(now, folder / version_file(now), False)
        version = max(versions(folder), default=0) + 1
        path = folder / version_file(version)
        write(path)
        past[str(version)] = {**info, "tag": tag, "installed_at": time.time()}
        _atomic_text(folder / HISTORY, json.dumps(past, indent=1, sort_keys=True) + "\n")
        point_current(folder, version)
    return Installed(version, path, True)


def point_current(folder: Path, version: int) -> None:
    """current.pt -> vNNNN.pt in one rename (a relative link: the folder may move)."""
    tmp = folder / f".{CURRENT}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(version_file(version), tmp)
    os.replace(tmp, folder / CURRENT)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable
    finally:
        os.close(fd)


def rollback(model_dir: str | Path) -> tuple[int, int]:
    """Put the version before the one in service back in service: (from, to)."""
    folder = Path(model_dir)
    with locked(folder):
        now = current_version(folder)
        if not now:
            raise VersionError(f"{folder}: no version in service, nothing to roll back")
        older = [v for v in versions(folder) if v < now]
        if not older:
            raise VersionError(f"{folder}: version {now} is the oldest kept; nothing to roll "
                               f"back to")
        point_current(folder, older[-1])
    return now, older[-1]


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
