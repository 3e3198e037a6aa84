"""The edge node process: Flower's SuperNode with short polls, plus our task executor.

    python -m client.node.launcher --runtime-api-address 127.0.0.1:9094 --app-key op.pub \
        [--task-poll 0.05] [--node-poll 0.1] -- <flower-supernode arguments>

It checks the installed flwr (shared/platform/flower_pins.py), shortens the SuperNode's hard-coded
waits in this process only (idle poll 3 s -> --node-poll, object-pull backoff 1..10 s ->
0.05..0.5 s), makes each retried call to the cloud log its cause, starts the executor
(client/node/executor.py) as its child, and then runs Flower's own `flower-supernode` entry
point with `--isolation process`, so Flower starts no SuperExec of its own: every ClientApp
task goes through our executor's signature check.
If the executor dies, the node stops too (no node that accepts tasks nobody runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from client.node import supernode_internals
from client.node.polling import DEFAULT_HEARTBEAT, NODE_IDLE_POLL, TASK_IDLE_POLL, IdleBackoff
from shared.platform import flower_pins
from shared.errors import UnikdError
from shared.platform.processes import child_preexec


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise UnikdError("usage: launcher [options] -- <flower-supernode arguments>")
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m client.node.launcher")
    p.add_argument("--runtime-api-address", required=True)
    p.add_argument("--app-key")
    p.add_argument("--allow-unsigned-apps", action="store_true")
    p.add_argument("--task-poll", type=float, default=0.05)
    p.add_argument("--node-poll", type=float, default=0.1)
    p.add_argument("--idle-poll", type=float, default=NODE_IDLE_POLL)
    p.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT)
    p.add_argument("--metrics-file", help="the executor's task tallies, for `unikd edge`'s "
                                          "/metrics (client/node/node_metrics.py)")
    return p.parse_args(argv[:cut]), argv[cut + 1:]


def executor_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "client.node.executor", "--runtime-api-address",
           args.runtime_api_address, "--poll", str(args.task_poll), "--idle-poll",
           str(min(TASK_IDLE_POLL, args.idle_poll))]
    if args.allow_unsigned_apps:
        cmd.append("--allow-unsigned-apps")
    if args.app_key:
        cmd += ["--app-key", args.app_key]
    if args.metrics_file:
        cmd += ["--metrics-file", args.metrics_file]
    return cmd


def watch(executor: subprocess.Popen, plain_handler) -> None:
    """Stop this node when the executor ends (SIGTERM to ourselves: Flower's handlers run).

    When the whole group was stopped, the node got the same SIGTERM and is already in
    Flower's graceful exit: a second SIGTERM would kill it before it deactivates at the
    SuperLink, so give that exit its time first (it ends this process)."""
    code = executor.wait()
    if supernode_internals.supernode_exit_under_way(plain_handler):
        time.sleep(supernode_internals.supernode_exit_seconds())
    if code != 0:  # 0: it was stopped along with this node's process group
        print(f"unikd: the task executor exited with code {code}; stopping the node",
              file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    try:
        args, supernode_argv = parse_args(argv)
        flower_pins.check()
        supernode_internals.set_heartbeat_interval(args.heartbeat)
    except UnikdError as err:
        print(f"unikd: {err}", file=sys.stderr)
        return 2
    supernode_internals.patch_supernode(IdleBackoff(args.node_poll, args.idle_poll))
    supernode_internals.show_retry_causes()  # a node that cannot reach its cloud says why
    executor = subprocess.Popen(executor_command(args), stdin=subprocess.DEVNULL,
                                preexec_fn=child_preexec())  # same group: stopped with us
    plain = signal.getsignal(signal.SIGTERM)  # Flower's handler puts this back when it exits
    threading.Thread(target=watch, args=(executor, plain), daemon=True).start()
    try:
        supernode_internals.run_supernode([*supernode_argv, "--isolation", "process"])
    finally:
        if executor.poll() is None:
            executor.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
