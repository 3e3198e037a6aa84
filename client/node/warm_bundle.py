"""A warm process per verified app bundle: it imports the bundle's ClientApp once and forks tasks.

The executor (executor.py) keeps torch and Flower imported, never the bundle's own code: each
task it forks checks its bundle, drops our copies of the bundle's packages and imports the
bundle's. That import is paid by every task (0.05-0.1 s on the 2-core box with cached bytecode,
about twice that without). Once a task has checked and installed a bundle and ended well, the
executor forks one process for that bundle (`WarmBundle.start`), which imports the bundle's
ClientApp from its installed folder, as a task would, and then forks the later tasks itself.

Nothing is trusted for being warm: every task forked here still checks its own bundle (hash and
operator signature) before it runs. A task whose run names another bundle drops the preloaded
modules and imports its own, exactly as a task forked by the executor does, and the executor
retires this process when it hears of that bundle (executor.Executor.note_install).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from client.node import supernode_internals

log = logging.getLogger("unikd.executor")

# (token, task id, run id, whether the bundle is preloaded) in a forked child; never returns
Launch = Callable[[str, int, int, bool], None]


def forget_modules(names: set[str]) -> list[str]:
    """Drop these packages (and their submodules) from sys.modules; the dropped names."""
    gone = [m for m in sys.modules if m.split(".")[0] in names]
    for m in gone:
        del sys.modules[m]
    return gone


class WarmBundle:
    """The executor's handle on one bundle's warm process: a pipe of task lines and a pid."""

    def __init__(self, digest: str, pid: int, pipe: int):
        self.digest, self.pid, self.pipe = digest, pid, pipe

    @classmethod
    def start(cls, digest: str, app_dir: Path, modules: set[str], launch: Launch,
              on_failure: Callable[[str], None], close_in_child: tuple[int, ...] = ()
              ) -> WarmBundle:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            for fd in close_in_child:
                os.close(fd)
            code = 1
            try:
                code = serve(read_end, digest, app_dir, modules, launch, on_failure)
            except BaseException:
                log.exception("warm process of bundle %s failed", digest[:12])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # never run the executor's cleanup here
        os.close(read_end)
        return cls(digest, pid, write_end)

    def send(self, token: str, task_id: int, run_id: int) -> bool:
        """Hand a task over; False if the process is gone (the caller forks the task itself)."""
        if self.pipe < 0:
            return False
        try:
            os.write(self.pipe, f"{token} {task_id} {run_id}\n".encode())
            return True
        except OSError:
            return False

    def ended(self) -> int | None:
        """Its exit code once it has ended (reaped here), else None."""
        done, status = os.waitpid(self.pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if done else None

    def retire(self) -> None:
        """No more tasks: it lets the running ones finish, then exits (reaped by `ended`)."""
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1  # the number may be reused by the next pipe: never write to it

    def stop(self) -> None:
        self.retire()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def serve(tasks: int, digest: str, app_dir: Path, modules: set[str], launch: Launch,
          on_failure: Callable[[str], None]) -> int:
    """The warm process: import the bundle, then fork `launch` per task line until EOF.
    If the import fails, the tasks already handed over still run, each importing the bundle
    itself (as from the executor), and `on_failure` tells the executor to stop sending more."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the executor decides when we stop
    started = time.perf_counter()
    forget_modules(modules)
    try:
        supernode_internals.preload_clientapp(app_dir)
        warm = True
        log.info("bundle %s: its ClientApp imported once in %.2f s; later tasks fork from here",
                 digest[:12], time.perf_counter() - started)
    except Exception as err:  # a bundle that imports only in a task's context, say
        forget_modules(modules)  # no half-imported module is inherited by a task
        warm = False
        log.warning("bundle %s: its ClientApp cannot be imported ahead of a task (%s); tasks "
                    "import it themselves", digest[:12], err)
        on_failure(digest)
    children: set[int] = set()
    pending = b""
    while not stopping:
        _reap(children)
        ready, _, _ = select.select([tasks], [], [], 0.5)
        if not ready:
            continue
        data = os.read(tasks, 4096)
        if not data:  # retired: no more tasks
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            token, task_id, run_id = line.decode().split()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(tasks)
                launch(token, int(task_id), int(run_id), warm)
                os._exit(1)  # launch never returns
            children.add(pid)
    for pid in children if stopping else ():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    while children:  # let running tasks finish (or die of the SIGTERM just sent)
        pid, status = os.wait()
        children.discard(pid)
        _say_exit(pid, status)
    return 0 if warm else 1


def _reap(children: set[int]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            _say_exit(pid, status)


def _say_exit(pid: int, status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code != 0:  # a refusal or a ClientApp error: its reason is logged by the task
        log.info("task process %d ended with exit code %d", pid, code)
