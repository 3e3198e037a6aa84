"""Edge-side commands: `unikd edge` (start this device's SuperNode) and `unikd edge-keygen`.

They import nothing from the cloud side, so they work on an edge-only install.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from shared.errors import UnikdError


def join_target(args: argparse.Namespace):
    """What `unikd edge`'s arguments dial and trust (client/node/join_check.py)."""
    from client.node.join_check import JoinTarget

    def path(value: str | None) -> Path | None:
        return Path(value).expanduser().resolve() if value else None

    return JoinTarget.of(args.superlink, ca=path(args.ca), key=path(args.key),
                         app_key=path(args.app_key), insecure=args.insecure,
                         allow_unsigned=args.allow_unsigned_apps, timeout=args.join_timeout)


def check_cmd(args: argparse.Namespace) -> int:
    """`unikd edge --check`: the join checks once; 0 and what was checked, or 1 and the first
    failure's one-line cause."""
    from client.node.join_check import run_checks, summary

    try:
        target = join_target(args)
    except UnikdError as err:
        print(f"unikd: {err}", file=sys.stderr)
        return 1
    results = run_checks(target)
    print(summary(target, results), file=sys.stdout if results[-1].ok else sys.stderr)
    return 0 if results[-1].ok else 1


def edge_cmd(args: argparse.Namespace) -> int:
    from client.node.join_check import summary, wait_until_joinable
    from client.node.supernode import EdgeConfig, start_edge, supernode_command

    if args.insecure:
        print("WARNING: --insecure: no TLS; this device's updates travel in clear text and it "
              "cannot authenticate. Use only on a trusted lab network.", file=sys.stderr)
    if args.allow_unsigned_apps:
        print("WARNING: --allow-unsigned-apps: this device runs ANY app bundle its cloud sends, "
              "i.e. code from whoever can submit a run there. Development only.",
              file=sys.stderr)
    if args.check:
        return check_cmd(args)
    if args.model_dir and not args.store:
        raise UnikdError("--model-dir goes with --store: the device's service installs the "
                         "final student")
    cfg = EdgeConfig(args.superlink, Path(args.data) if args.data else None,
                     ca=Path(args.ca) if args.ca else None,
                     key=Path(args.key) if args.key else None, insecure=args.insecure,
                     client_id=args.client_id, domain=args.domain, port=args.port,
                     home=Path(args.home) if args.home else None, max_retries=args.max_retries,
                     app_key=Path(args.app_key) if args.app_key else None,
                     allow_unsigned=args.allow_unsigned_apps,
                     store=Path(args.store) if args.store else None,
                     model_dir=Path(args.model_dir) if args.model_dir else None,
                     max_epsilon=args.max_epsilon or 0.0, dp_delta=args.dp_delta,
                     heartbeat=args.heartbeat, device=args.device,
                     **({} if args.node_poll is None else {"node_poll": args.node_poll}),
                     **({} if args.idle_poll is None else {"idle_poll": args.idle_poll}))
    cmd = supernode_command(cfg)  # validates data/store, CA and keys before anything starts
    if args.dry_run:
        print(" ".join(cmd))
        return 0

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    proc = None
    join = None
    server = None
    try:
        target = join_target(args)  # checked first, and again after each failure, with backoff
        join, server = start_metrics(args, cfg, lambda: proc is not None and proc.alive())
        results = wait_until_joinable(target, args.max_retries,
                                      say=lambda line: print(line, file=sys.stderr, flush=True),
                                      on_attempt=join.checked if join else None)
        if results is None:
            return 1
        print(summary(target, results), file=sys.stderr, flush=True)
        proc = start_edge(cfg, echo=True)
        where = (f"store {args.store}" + (f", model dir {args.model_dir}" if args.model_dir
                                          else "")) if args.store else f"data {cfg.data}"
        print(f"edge node (client {cfg.client_id}) -> {cfg.superlink}: "
              f"{'INSECURE' if cfg.insecure else 'TLS'}"
              f"{', authenticated' if cfg.key else ''}; {where}", file=sys.stderr)
        code = proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if join is not None:
            join.stopped()
        if proc is not None:
            proc.stop()  # the whole group: node, its SuperExec, any ClientApp process
        if server is not None:
            server[0].shutdown()
    why = proc.outcome() if code else ""
    if why == "refused":
        print(f"unikd: the cloud refused this node: its key is not registered. Ask the operator "
              f"to run `unikd certs register {cfg.key}.pub ...`" if cfg.key else
              "unikd: the cloud refused this node: it requires node authentication (--key)",
              file=sys.stderr)
    elif why == "tls":
        print(f"unikd: the cloud's certificate does not chain to {cfg.ca}: wrong CA file, or "
              f"not our cloud", file=sys.stderr)
    elif code:
        print(f"unikd: the SuperNode exited with code {code}", file=sys.stderr)
    return code


def start_metrics(args: argparse.Namespace, cfg, supernode_alive):
    """`--metrics-port`: this node's /metrics on 127.0.0.1 (client/node/node_metrics.py), served
    by this process, which runs the join checks and outlives the SuperNode it starts; the
    executor's task tallies reach it through `cfg.metrics_file`. (None, None) with port 0."""
    from client.node.node_metrics import (STATUS_FILE, JoinState, NodeCollector,
                                          start_node_metrics)

    if not args.metrics_port:
        return None, None
    cfg.home.mkdir(parents=True, exist_ok=True)
    cfg.metrics_file = cfg.home / STATUS_FILE
    cfg.metrics_file.unlink(missing_ok=True)  # counters start at 0 with this process
    join = JoinState()
    ledger = cfg.home / "dp-ledger.json" if cfg.max_epsilon > 0 else None
    collector = NodeCollector(join, cfg.metrics_file, ledger, cfg.max_epsilon, cfg.dp_delta,
                              cfg.model_dir, supernode_alive)
    server = start_node_metrics(collector, args.metrics_port)
    print(f"unikd: node metrics on http://127.0.0.1:{args.metrics_port}/metrics",
          file=sys.stderr, flush=True)
    return join, server


def metrics_port(text: str) -> int:
    """`--metrics-port`: 0..65535, the flag named in the error."""
    from client.node.node_metrics import check_port

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port number (0: no metrics)"
                                         ) from None
    try:
        return check_port(port)
    except UnikdError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def keygen_cmd(args: argparse.Namespace) -> int:
    from client.node.supernode import generate_key

    pub = generate_key(Path(args.path), overwrite=args.force)
    if args.pub_out:  # a second copy where the operator collects public keys
        out = Path(args.pub_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(pub.read_bytes())
    print(pub.read_text().strip())
    print(f"private key {args.path} (mode 600, stays on this device); send {pub} to the "
          f"operator, who runs: unikd certs register {pub.name} --state-dir STATE_DIR",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from client.node.node_config import DEFAULT_DEVICE
    from client.node.node_metrics import DEFAULT_NODE_METRICS_PORT
    from client.node.supernode import DEFAULT_RUNTIME_PORT
    from shared.unikd.devices import DEVICE_NAMES

    p = sub.add_parser("edge", allow_abbrev=False,
                       help="start this device's edge node (a Flower SuperNode)")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the cloud")
    p.add_argument("--data",
                   help="this device's AdaTime folder (train_<domain>.pt, optional test_*.pt); "
                        "with --store, only its labelled test windows are used (evaluation)")
    p.add_argument("--store", help="train on the window store `unikd serve --store` fills "
                                   "(each round uses the windows stored so far)")
    p.add_argument("--model-dir", help="install the run's final student here as a new version: "
                                       "the directory `unikd serve --model-dir` serves")
    p.add_argument("--domain", help="domain file to read (default: the folder's only domain)")
    p.add_argument("--ca", help="CA certificate (ca.crt) the cloud's certificate must chain to")
    p.add_argument("--key", help="this node's private key (registered on the cloud)")
    p.add_argument("--app-key", metavar="OPERATOR.pub",
                   help="the operator's app-signing public key: run only bundles it signed")
    p.add_argument("--allow-unsigned-apps", action="store_true",
                   help="development only: run any app bundle the cloud sends (warns)")
    p.add_argument("--client-id", type=int, default=0,
                   help="unique per edge: seeds and reply order (default 0)")
    p.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT,
                   help="local runtime API port (loopback; one per node on a host)")
    p.add_argument("--home", help="node state: received app bundles (default ~/.unikd/edge)")
    p.add_argument("--max-epsilon", type=float, metavar="EPS",
                   help="this device's own privacy budget: it trains only under record-level "
                        "DP, keeps its ledger in HOME/dp-ledger.json across runs, and refuses "
                        "any release past EPS (client/node/budget.py)")
    p.add_argument("--dp-delta", type=float, default=1e-5,
                   help="the delta --max-epsilon is stated at (default 1e-5)")
    p.add_argument("--max-retries", type=int,
                   help="give up after N failed connection attempts (default: retry forever)")
    p.add_argument("--node-poll", type=float, metavar="SECONDS",
                   help="how often the node asks the cloud for work while a run sends some "
                        "(default 0.1; Flower's is 3): each ask is a TLS request the cloud "
                        "answers")
    p.add_argument("--idle-poll", type=float, metavar="SECONDS",
                   help="the polls back off to this after 10 s without work (default 2.0): "
                        "an idle device costs itself and the cloud little, and a run's first "
                        "message waits at most this long")
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                   help="the node's heartbeat interval (default 30, Flower's; 10..1800): the "
                        "cloud shows this node as gone at most two intervals after it died")
    p.add_argument("--metrics-port", type=metrics_port, default=DEFAULT_NODE_METRICS_PORT,
                   metavar="PORT",
                   help=f"this node's Prometheus /metrics on 127.0.0.1:PORT (default "
                        f"{DEFAULT_NODE_METRICS_PORT}; 0: none): join state, rounds per phase, "
                        f"bytes, round latency, epsilon spent, installed version")
    p.add_argument("--device", choices=DEVICE_NAMES, default=DEFAULT_DEVICE,
                   help="where this device trains (default cpu: its GPU may serve other work, "
                        "and on the CPU a deployment reproduces the simulation bit for bit); "
                        "auto: cuda when present. The cloud never chooses it")
    p.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
    p.add_argument("--dry-run", action="store_true", help="check the setup, print the command")
    p.add_argument("--check", action="store_true",
                   help="check once that this edge can join (address, port, TLS, node key, app "
                        "key) and exit: 0, or 1 with the first failure's cause")
    p.add_argument("--join-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long each of those network checks may take (default 5)")
    p.set_defaults(func=edge_cmd)

    k = sub.add_parser("edge-keygen", allow_abbrev=False,
                       help="make this device's node key (ECDSA P-384)")
    k.add_argument("path", help="where to write the private key; PATH.pub gets the public key")
    k.add_argument("--force", action="store_true")
    k.add_argument("--pub-out", metavar="FILE",
                   help="also write the public key here (where the operator collects them)")
    k.set_defaults(func=keygen_cmd)

