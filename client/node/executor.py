"""The edge's task executor: runs only operator-signed app bundles, from a warm process.

It replaces Flower's SuperExec on the edge (the SuperNode runs with `--isolation process`, so
it starts none). One long-lived process imports torch and Flower once, polls the SuperNode's
local Runtime API for ClientApp tasks every ~0.05 s, and forks per task into Flower's own
`run_clientapp` (what `flwr-clientapp` runs), instead of spawning a fresh `flwr-clientapp`
that re-imports torch for every message.

Before the bundle is installed, the forked task checks it (`check_bundle`):
  - the bundle's bytes hash to the hash the run names,
  - the run's `app-signature` is the operator's Ed25519 signature over that hash.
A refused task answers the server with an error reply ("app refused: ...") and is logged here;
the bundle's code is never installed or imported.

The warm parent has imported our own packages (this module is one), so the forked task drops
every module the bundle provides before Flower imports the ClientApp: the code that runs is
the bundle's, the one that was signed, never a copy already loaded here.

After a task has checked, installed and run a bundle, later tasks are forked from a process
that has that bundle's ClientApp imported already (warm_bundle.py), and still check their own
bundle first: only the import is saved.

    python -m client.node.executor --runtime-api-address 127.0.0.1:9094 --app-key op.pub
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

from client.node import node_metrics, supernode_internals
from client.node.polling import TASK_IDLE_POLL, IdleBackoff
from client.node.warm_bundle import WarmBundle, forget_modules
from shared.platform import app_signing, flower_pins, flower_pulls
from shared.errors import UnikdError

log = logging.getLogger("unikd.executor")

DEFAULT_TASK_POLL = 0.05  # seconds between AcquireTask calls (loopback, a few ms each)
METRICS_RECORD = "metrics"  # shared/protocol/wire.py METRICS: every reply's MetricRecord


def reply_report(message, reply, received: float) -> bytes:
    """What a task tells the executor about the reply it sent (client/node/node_metrics.py):
    phase, outcome, round, bytes each way, seconds from arrival to reply, windows used and an
    installed version where the reply's metrics say so. Counts and numbers only."""
    metrics = reply.content[METRICS_RECORD] if (
        reply.has_content() and METRICS_RECORD in reply.content) else {}

    def number(key: str) -> int | None:
        value = metrics.get(key) if hasattr(metrics, "get") else None
        return int(value) if isinstance(value, (int, float)) else None

    round_ = number("round")
    if round_ is None and str(message.metadata.group_id).isdigit():
        round_ = int(message.metadata.group_id)
    return node_metrics.task_report(
        str(message.metadata.message_type), not reply.has_error(), round_, received,
        time.time() - received, supernode_internals.content_bytes(message),
        supernode_internals.content_bytes(reply), number("num-examples"),
        number("model-version"))


def bundle_modules(fab_content: bytes) -> set[str]:
    """Top-level module and package names an app bundle provides."""
    names = set()
    with zipfile.ZipFile(io.BytesIO(fab_content)) as z:
        for name in z.namelist():
            top, _, rest = name.partition("/")
            if rest and rest.endswith(".py") and not top.startswith("."):
                names.add(top)
            elif not rest and top.endswith(".py"):
                names.add(top[:-3])
    return names


def check_bundle(public, allow_unsigned: bool, preloaded: tuple[str, Path] | None = None):
    """The check each task runs on its bundle (see supernode_internals.run_clientapp_checked).
    `preloaded`: (sha256, folder) of the bundle a warm process imported before forking this
    task (warm_bundle.py); its modules are kept only when the task runs that same bundle."""

    def _check(run_fab_hash: str, fab_hash: str, content: bytes, run_config: dict) -> str | None:
        actual = hashlib.sha256(content).hexdigest()
        if not (actual == fab_hash == run_fab_hash):
            return (f"bundle bytes hash to {actual[:12]}, the run names {run_fab_hash[:12]}: "
                    f"not the bundle that was submitted")
        if not allow_unsigned:
            why = app_signing.check(public, actual,
                                    str(run_config.get(app_signing.RUN_CONFIG_KEY, "")))
            if why is not None:
                return why
        if preloaded is None or actual != preloaded[0]:
            forget_modules(bundle_modules(content))  # import this bundle's code, not ours
            if preloaded is not None and str(preloaded[1].absolute()) in sys.path:
                sys.path.remove(str(preloaded[1].absolute()))
        return None

    return _check


def warm_up() -> None:
    """Import what every task needs, once: torch (seconds), Flower's ClientApp runtime, and the
    modules torch loads lazily on an optimizer's first step (torch._dynamo, sympy: ~2.7 s, which
    every forked task would otherwise pay again). Only third-party code is loaded here; the
    bundle's own modules are still imported fresh from the bundle in each task."""
    import flwr.clientapp  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import torch
    import torch.func  # noqa: F401  (record DP's per-sample gradients)

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight])
    weight.grad = torch.ones(1)
    optimizer.step()


def run_task(address: str, token: str, task_id: int, run_id: int, bundle_check,
             report_fd: int | None = None, trusted: str = "") -> int:
    """In the forked child: Flower's ClientApp runner for this one task; never returns.
    Once its bundle is checked and installed, the task tells the executor on `report_fd`
    (one JSON line), so that a warm process can be started for that bundle. A refusal is
    logged in one line that names what this edge trusts (`trusted`, e.g. the --app-key file):
    Flower's traceback of the same refusal follows it, but this line is the cause."""
    code = 1
    modules: list[str] = []

    def check_and_say(*bundle) -> str | None:
        why = bundle_check(*bundle)
        if why is not None:  # Flower then logs the refusal as a ClientApp exception, too
            log.error("task %d of run %d refused: %s%s", task_id, run_id, why,
                      f"; this edge runs only {trusted}" if trusted else "")
        else:
            modules[:] = sorted(bundle_modules(bundle[2]))
        return why

    def report(digest: str, app_dir: Path) -> None:
        if report_fd is not None:  # one write under PIPE_BUF: never interleaved with another
            line = json.dumps({"pid": os.getpid(), "sha256": digest, "dir": str(app_dir),
                               "modules": modules}) + "\n"
            os.write(report_fd, line.encode())

    def replied(message, reply, received: float) -> None:
        if report_fd is not None:  # the node's metrics (node_metrics.NodeTally)
            os.write(report_fd, reply_report(message, reply, received))

    started = time.perf_counter()
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # run_clientapp installs its own handlers
        supernode_internals.run_clientapp_checked(address, token, os.getppid(), check_and_say,
                                                  report, replied)
        code = 0
    except SystemExit as done:  # Flower ends its task process with sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # a crash: the SuperNode sends an error reply when the token expires
        log.exception("task %d of run %d crashed", task_id, run_id)
    finally:
        log.info("task %d of run %d: done in %.2f s", task_id, run_id,
                 time.perf_counter() - started)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never run the warm parent's cleanup in a child
    return code


class Executor:
    """Polls the SuperNode for tasks and forks each one, from the bundle's warm process when
    there is one for the last bundle that ran well here (warm_bundle.py), else from itself."""

    def __init__(self, address: str, public, allow_unsigned: bool,
                 poll: float = DEFAULT_TASK_POLL, idle_poll: float = TASK_IDLE_POLL,
                 trusted: str = "", metrics_file: Path | None = None):
        self.address, self.public, self.allow_unsigned = address, public, allow_unsigned
        # each task's outcome, for `unikd edge`'s /metrics (client/node/node_metrics.py)
        self.tally = node_metrics.NodeTally(metrics_file) if metrics_file else None
        self.trusted = trusted  # what a refusal's log line names: "apps signed by FILE"
        self.backoff = IdleBackoff(poll, idle_poll)
        self.children: dict[int, int] = {}  # pid -> task id
        self.installs: dict[int, dict] = {}  # pid -> what that task reported it installed
        self.warm: WarmBundle | None = None
        self.retired: list[WarmBundle] = []  # told to stop; reaped once they have ended
        self.failed_warm: set[str] = set()  # bundles whose warm process could not import them
        self.reports_in, self.reports_out = os.pipe()
        os.set_blocking(self.reports_in, False)
        self.pending_report = b""
        self.stopping = False

    def check(self, preloaded: tuple[str, Path] | None = None):
        return check_bundle(self.public, self.allow_unsigned, preloaded)

    def read_reports(self) -> None:
        try:
            self.pending_report += os.read(self.reports_in, 65536)
        except BlockingIOError:
            return
        while b"\n" in self.pending_report:
            line, self.pending_report = self.pending_report.split(b"\n", 1)
            self.note_install(json.loads(line))

    def note_install(self, report: dict) -> None:
        if "task" in report:  # a task's reply, for the node's metrics
            if self.tally is not None:
                self.tally.add(report["task"])
        elif "warm_failed" in report:  # its tasks fork from here again, and it is not retried
            if self.warm is not None and self.warm.digest == report["warm_failed"]:
                self.failed_warm.add(self.warm.digest)
                self.retire_warm()
        elif report["pid"] in self.children:  # acted on when that task has ended well
            self.installs[report["pid"]] = report
        elif self.warm is not None and report["sha256"] != self.warm.digest:
            # a task of the warm process ran another bundle: that bundle is in use now
            log.info("bundle %s in use: retiring the warm process of %s",
                     report["sha256"][:12], self.warm.digest[:12])
            self.retire_warm()

    def retire_warm(self) -> None:
        """Send no more tasks to the warm process; it exits once its tasks have ended."""
        if self.warm is not None:
            self.warm.retire()
            self.retired.append(self.warm)
            self.warm = None

    def reap(self) -> None:
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                task = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:  # a refusal or a ClientApp error: its reason is logged above
                    log.info("task %d ended with exit code %d", task, code)
                installed = self.installs.pop(pid, None)
                if code == 0 and installed is not None:
                    self.warm_up_bundle(installed)
        if self.warm is not None and (code := self.warm.ended()) is not None:
            self.failed_warm.add(self.warm.digest)  # it should have lived until retired
            log.warning("the warm process of bundle %s ended (exit code %d); its tasks fork "
                        "from the executor", self.warm.digest[:12], code)
            self.warm = None
        self.retired = [w for w in self.retired if w.ended() is None]

    def warm_up_bundle(self, installed: dict) -> None:
        digest = installed["sha256"]
        if digest in self.failed_warm or (
                self.warm is not None and self.warm.digest == digest):
            return
        self.retire_warm()  # only one bundle is kept warm
        app_dir = Path(installed["dir"])
        warm_check, cold_check = self.check(preloaded=(digest, app_dir)), self.check()

        def launch(token: str, task_id: int, run_id: int, warm: bool) -> None:
            run_task(self.address, token, task_id, run_id, warm_check if warm else cold_check,
                     self.reports_out, self.trusted)

        def failed(digest: str) -> None:
            os.write(self.reports_out, (json.dumps({"warm_failed": digest}) + "\n").encode())

        self.warm = WarmBundle.start(digest, app_dir, set(installed["modules"]), launch, failed,
                                     close_in_child=(self.reports_in,))

    def launch(self, token: str, task_id: int, run_id: int) -> None:
        if self.warm is not None and self.warm.send(token, task_id, run_id):
            log.info("task %d of run %d: forked by the warm process of bundle %s", task_id,
                     run_id, self.warm.digest[:12])
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(self.reports_in)
            run_task(self.address, token, task_id, run_id, self.check(), self.reports_out,
                     self.trusted)
        self.children[pid] = task_id
        log.info("task %d of run %d: started in process %d", task_id, run_id, pid)

    def loop(self) -> None:
        client = supernode_internals.runtime_client(self.address)
        waiting_since = None
        try:
            while not self.stopping:
                self.read_reports()
                self.reap()
                try:
                    task = supernode_internals.acquire_clientapp_task(client)
                    waiting_since = None
                except Exception as err:  # the SuperNode is (re)starting: keep polling
                    waiting_since = waiting_since or time.monotonic()
                    if time.monotonic() - waiting_since > 30:
                        log.warning("SuperNode runtime API at %s unreachable for 30 s: %s",
                                    self.address, err)
                        waiting_since = time.monotonic()
                    task = None
                if task is not None:
                    self.backoff.busy()
                    self.launch(*task)
                    continue  # more may be waiting
                time.sleep(self.backoff.next_wait())
        finally:
            client.close()

    def stop(self, *_: object) -> None:
        self.stopping = True
        for warm in [self.warm, *self.retired]:
            if warm is not None:
                warm.stop()
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m client.node.executor",
                                description="run operator-signed ClientApp tasks")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's runtime API")
    p.add_argument("--app-key", help="the operator's Ed25519 public key (PEM)")
    p.add_argument("--allow-unsigned-apps", action="store_true",
                   help="dev only: run any bundle the cloud sends")
    p.add_argument("--poll", type=float, default=DEFAULT_TASK_POLL,
                   help="seconds between task polls while tasks come")
    p.add_argument("--idle-poll", type=float, default=TASK_IDLE_POLL,
                   help="the poll backs off to this after 10 s without a task")
    p.add_argument("--metrics-file", type=Path,
                   help="keep each task's outcome here for `unikd edge`'s /metrics")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler()  # our lines only: Flower logs through its own handler
    handler.setFormatter(logging.Formatter("%(levelname)s unikd-executor: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    args = parse_args(argv)
    try:
        flower_pins.check()
        if args.allow_unsigned_apps:
            public = None
            log.warning("--allow-unsigned-apps: this edge runs ANY app bundle its cloud sends")
        elif args.app_key:
            public = app_signing.load_public_key(Path(args.app_key))
        else:
            raise UnikdError("--app-key OPERATOR.pub is required (or --allow-unsigned-apps)")
    except UnikdError as err:
        print(f"unikd-executor: {err}", file=sys.stderr)
        return 2
    warm_up()
    # Tasks pull their message's objects from the SuperNode, which may still be fetching them
    # from the SuperLink: retry within milliseconds, not after Flower's 1 s first backoff.
    flower_pulls.shorten_object_backoff()
    trusted = "" if public is None else f"apps signed by --app-key {args.app_key}"
    ex = Executor(args.runtime_api_address, public, args.allow_unsigned_apps, args.poll,
                  args.idle_poll, trusted, args.metrics_file)
    signal.signal(signal.SIGTERM, ex.stop)
    signal.signal(signal.SIGINT, ex.stop)
    log.info("ready: polling %s every %.2fs (%.1fs when idle); %s", args.runtime_api_address,
             args.poll, args.idle_poll, trusted or "ANY app")
    ex.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
