"""Child processes that never outlive us: own session, whole-group stop, die with the parent.

The cloud starts a SuperLink (which starts a SuperExec and ServerApps in sessions of their own)
and the edge starts a SuperNode; both stop them by signalling every process group seen under
the child, so nothing is left running after `unikd cloud`, `unikd edge` or a test ends.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class ProcessGroup:
    """A process we started in its own session; `stop()` signals its whole process group and
    the groups of its descendants (the SuperLink starts its SuperExec in a session of its own,
    and a ServerApp left behind by a killed SuperLink does not always exit by itself)."""

    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    groups: set[int] = field(default_factory=set)  # every process group seen under us

    def __post_init__(self) -> None:
        self.groups.add(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def refresh(self) -> set[int]:
        """Record the process groups of our live descendants (never our caller's group)."""
        table = process_table()
        mine = os.getpgrp()
        todo, seen = [self.pid], set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            todo += [c for c, (ppid, _) in table.items() if ppid == p]
        self.groups |= {table[p][1] for p in seen if p in table and table[p][1] != mine}
        return self.groups

    def leftovers(self) -> dict[int, list[int]]:
        return {g: m for g in sorted(self.groups) if (m := group_members(g))}

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM every group, then SIGKILL what is left; reaps the leader."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is None:
                self.refresh()
            for g in sorted(self.groups):
                try:
                    os.killpg(g, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not self.leftovers():
                    return self.popen.returncode
                time.sleep(0.1)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of live (non-zombie) processes, read from /proc (Linux)."""
    out: dict[int, tuple[int, int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "(comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != "Z":
            out[int(d.name)] = (int(fields[1]), int(fields[2]))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [pid for pid, (_, g) in process_table().items() if g == pgid]


def pdeathsig_ok() -> bool:
    """PR_SET_PDEATHSIG fires when the creating *thread* exits: use it from the main thread only."""
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies (even by SIGKILL),
    so a killed `unikd cloud`, `unikd edge` or test never leaves an orphan behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_preexec(umask: int | None = None):
    """The preexec_fn for children that must die with us, where that is safe (else None);
    with `umask`, the child (and everything it starts) also creates files with that mask."""
    dies = pdeathsig_ok()
    if umask is None:
        return die_with_parent if dies else None

    def _pre() -> None:
        os.umask(umask)
        if dies:
            die_with_parent()

    return _pre


def start_group(name: str, cmd: list[str], log_path: Path | None, env: dict[str, str],
                cwd: Path | None = None, umask: int | None = None) -> ProcessGroup:
    out: int | object = subprocess.DEVNULL
    if log_path is not None:  # created owner-only when a umask is asked for
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o600 if umask is not None else 0o644)
    try:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(cwd) if cwd else None, start_new_session=True,
                                 stdin=subprocess.DEVNULL,
                                 preexec_fn=child_preexec(umask))
    finally:
        if log_path is not None:
            os.close(out)  # type: ignore[arg-type]  # the child holds its own descriptor
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(cmd))
    return ProcessGroup(name, popen, log_path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
