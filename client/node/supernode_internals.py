"""Flower internals the edge uses: the SuperNode's polls and exit, and the executor's tasks.

The launcher (launcher.py) patches Flower's SuperNode in its own process and then runs Flower's
entry point; the executor (executor.py) asks the SuperNode's Runtime API for ClientApp tasks and
runs each through Flower's own per-task runner, with our bundle check first and an install that
is skipped for a bundle already installed. Every internal used here is pinned and checked in
shared/platform/flower_pins.py (SUPERNODE_SIDE).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.errors import UnikdError
from shared.platform.flower_pins import TimeStandIn
from shared.platform.flower_pulls import shorten_object_backoff
from shared.platform.runs import atomic_write_bytes

# ---------------------------------------------------------------- SuperNode speed-ups


class ShortSleeps(TimeStandIn):
    """Stands in for `time` inside flwr.supernode.start_client_internal only, where every
    sleep is a poll wait: 3 s when no message came (the idle poll), 0.5 s while a pulled
    message's reply is pending. Both become `backoff`'s waits (an object with `busy()` and
    `next_wait()`, client/node/polling.py): a pending reply is work, so polls stay short
    while a run sends messages and grow when none come."""

    IDLE_POLL = 3.0  # Flower's idle wait; shorter ones are reply waits

    def __init__(self, backoff):
        """`backoff`: the poll waits (client/node/polling.py IdleBackoff)."""
        self.backoff = backoff

    def sleep(self, seconds: float) -> None:
        """The idle poll waits `backoff`'s next wait; a reply wait marks the node busy."""
        if seconds >= self.IDLE_POLL:
            time.sleep(self.backoff.next_wait())
        else:
            self.backoff.busy()
            time.sleep(min(seconds, self.backoff.fast))

    def __getattr__(self, name: str):
        """Everything but `sleep` is the time module's own."""
        return getattr(time, name)


def patch_supernode(backoff) -> None:
    """Apply the speed-ups in this (the SuperNode's) process; `flower_pins.check()` first.
    `backoff`: the poll waits (`ShortSleeps`)."""
    import flwr.supernode.start_client_internal as sci

    sci.time = ShortSleeps(backoff)  # type: ignore[assignment]
    shorten_object_backoff()


def set_heartbeat_interval(seconds: float) -> None:
    """The node's heartbeat interval (Flower: 30 s, a constant): the SuperLink marks a node
    offline after two intervals without a heartbeat, so a shorter one shows a dead edge sooner
    on the cloud's dashboard, for a heartbeat every ~0.8 x (interval - 5 s). Within the
    SuperLink's accepted range (HEARTBEAT_MIN_INTERVAL..HEARTBEAT_MAX_INTERVAL)."""
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    from flwr.common.constant import HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MIN_INTERVAL

    if not HEARTBEAT_MIN_INTERVAL <= seconds <= HEARTBEAT_MAX_INTERVAL:
        raise UnikdError(f"--heartbeat {seconds:g}: the SuperLink accepts "
                         f"{HEARTBEAT_MIN_INTERVAL}..{HEARTBEAT_MAX_INTERVAL} seconds")
    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds  # what the node tells the SuperLink
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = seconds  # how often its sender beats


class RetryCause(logging.Filter):
    """Shows why Flower's SuperNode retries a call to the cloud. Its retry loop logs only
    "Connection attempt failed, retrying in N seconds" at WARNING, and the failure itself at
    DEBUG (flwr/supercore/retry/http_retry.py), which its console does not print: that record
    becomes one WARNING line naming the error, just before the retry line."""

    FLOWER_TEXT = "Connection attempt failed with exception: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite Flower's DEBUG record of a failed call; let every record through."""
        if record.msg == self.FLOWER_TEXT and record.levelno < logging.WARNING:
            err = record.args[0] if isinstance(record.args, tuple) and record.args else None
            text = (str(err) or type(err).__name__).splitlines()[0]  # httpx adds a help line
            record.msg, record.args = "unikd: a call to the cloud failed: %s: %s", (
                type(err).__name__, text)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def show_retry_causes() -> None:
    """In the SuperNode's process: every retried call to the cloud logs its cause."""
    from flwr.supercore.logger import FLOWER_LOGGER

    FLOWER_LOGGER.addFilter(RetryCause())


def supernode_exit_under_way(plain_handler) -> bool:
    """Whether the SuperNode in this process may be in its graceful exit: Flower's SIGTERM
    handler first puts back the handler it replaced (`plain_handler`, what SIGTERM had before
    `run_supernode`), then deactivates the node at the SuperLink and exits. A second SIGTERM
    in that window ends the process before the SuperLink hears of it, so the node stays
    "online" there until its heartbeat expires (2 x 30 s). Also True before Flower installed
    its handler (the node is not connected then)."""
    import signal

    return signal.getsignal(signal.SIGTERM) is plain_handler


def supernode_exit_seconds() -> float:
    """An upper bound of Flower's graceful exit: it forces the exit after this long."""
    from flwr.supercore.constant import FORCE_EXIT_TIMEOUT_SECONDS

    return float(FORCE_EXIT_TIMEOUT_SECONDS) + 1.0


def run_supernode(argv: list[str]) -> None:
    """Flower's own `flower-supernode` entry point, with `argv` as its arguments."""
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


# ---------------------------------------------------------------- the edge executor


def runtime_client(address: str):
    """A client of the SuperNode's local Runtime API (plain HTTP on loopback), without
    Flower's retry-forever invoker: the executor's own loop retries on its short poll."""
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])


def acquire_clientapp_task(client) -> tuple[str, int, int] | None:
    """(token, task id, run id) of a pending ClientApp task, or None."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    if res.HasField("task") and res.token:
        return res.token, int(res.task.task_id), int(res.task.run_id)
    return None


# check(run_fab_hash, fab_hash, fab_content, override_config) -> None, or why it is refused
BundleCheck = Callable[[str, str, bytes, dict], "str | None"]


BUNDLE_MARK = ".unikd-bundle-sha256"  # in an app folder: the full hash it was installed from


def install_once(install: Callable, app_dir: Callable[[str], Path],
                 on_installed: Callable[[str, Path], None] | None = None) -> Callable:
    """Flower's `install_from_fab`, skipped when `app_dir(sha256)` is a complete install of
    the same bundle. Flower extracts and hash-checks the whole bundle into a temporary folder
    on every task (0.3-0.4 s for ours on the 2-core box), then keeps an existing app folder
    named by the hash's first 8 hex digits. We write the full sha256 into the folder after
    an install that created it, and trust only that mark. `on_installed(sha256, folder)` is
    told where a bundle given as bytes is installed, whether just now or before."""

    def _install(fab_file, install_dir=None, skip_prompt=False):
        """Flower's `install_from_fab(fab_file, install_dir, skip_prompt)`, skipped if done."""
        target = None
        if isinstance(fab_file, bytes) and install_dir is None:
            digest = hashlib.sha256(fab_file).hexdigest()
            target = app_dir(digest)
            mark = target / BUNDLE_MARK
            if mark.is_file() and mark.read_text() == digest:
                if on_installed is not None:
                    on_installed(digest, target)
                return target
        fresh = target is not None and not target.exists()
        path = install(fab_file, install_dir=install_dir, skip_prompt=skip_prompt)
        if fresh and Path(path) == target:
            atomic_write_bytes(mark, digest.encode())
        if target is not None and on_installed is not None:
            on_installed(digest, Path(path))
        return path

    return _install


class AppRefused(Exception):
    """The task's app bundle failed our check; the ClientApp was never installed or loaded."""


def run_clientapp_checked(address: str, token: str, parent_pid: int,
                          bundle_check: BundleCheck,
                          on_installed: Callable[[str, Path], None] | None = None,
                          on_reply: Callable | None = None) -> None:
    """Flower's own per-task ClientApp runner (what `flwr-clientapp` calls), with
    `bundle_check` run right after the task's input arrives and before the bundle is
    installed. A refusal answers the server with an error reply (so its round goes on
    without this node) and ends the task as failed. Call in a fresh (forked) process.
    `on_reply(message, reply, received)`: told of each reply once it was pushed, with the
    message it answers and when (time.time()) that message arrived (the node's metrics)."""
    from flwr.app import Error, Message
    from flwr.common.config import get_project_dir
    from flwr.common.constant import ErrorCode
    from flwr.supernode.runtime import run_clientapp as rc

    pull, push = rc.pull_task_input, rc.push_message
    task_run = {}

    def pull_checked(client):
        """Flower's `pull_task_input`, then `bundle_check`; a refusal replies and raises."""
        message, context, run, fab = pull(client)
        task_run.update(run=run, message=message, received=time.time())
        why = bundle_check(run.fab_hash, fab.hash_str, fab.content, dict(run.override_config))
        if why is not None:
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=f"app refused: {why}"),
                            reply_to=message)
            rc.push_message(client, reply, context)
            raise AppRefused(why)
        return message, context, run, fab

    def push_told(client, message, context):
        """Flower's `push_message`, then `on_reply` (a failure there never fails the task)."""
        result = push(client, message, context)
        if on_reply is not None and "message" in task_run:
            try:
                on_reply(task_run["message"], message, task_run["received"])
            except Exception as err:  # noqa: BLE001  metrics are never worth a lost reply
                logging.getLogger("unikd.executor").warning("node metrics: %s", err)
        return result

    rc.pull_task_input = pull_checked
    rc.push_message = push_told
    rc.install_from_fab = install_once(
        rc.install_from_fab, lambda digest: get_project_dir(task_run["run"].fab_id,
                                                            task_run["run"].fab_version, digest),
        on_installed)
    rc.run_clientapp(runtime_api_address=address, token=token, insecure=True,
                     certificates=None, parent_pid=parent_pid,
                     runtime_dependency_install=False)


def preload_clientapp(app_dir: Path) -> None:
    """Import an installed bundle's ClientApp as a task does (Flower's `load_app`, with the
    bundle's folder put on sys.path), so that tasks forked afterwards find it imported:
    `load_app` imports a module only when it is not in sys.modules yet."""
    from flwr.clientapp import ClientApp
    from flwr.common.config import get_project_config
    from flwr.supercore.object_ref import load_app

    try:
        ref = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise UnikdError(f"{app_dir}: no ClientApp named in its pyproject.toml: {err}") from None
    app = load_app(ref, UnikdError, app_dir)
    if not isinstance(app, ClientApp):
        raise UnikdError(f"{app_dir}: {ref} is not a ClientApp")


def content_bytes(message) -> int:
    """A message's records serialized as Flower sends them (0 for an error reply)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(message.content).ByteSize() if message.has_content() else 0
