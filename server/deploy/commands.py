"""Cloud-side deployment commands: `unikd cloud`, `unikd certs`, `unikd submit`."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from pathlib import Path

from shared.errors import UnikdError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- unikd cloud


def _cloud_info(state_dir: Path) -> dict:
    f = Path(state_dir) / "cloud.json"
    if not f.is_file():
        raise UnikdError(f"{f}: not found; is `unikd cloud --state-dir {state_dir}` running?")
    return json.loads(f.read_text())


def cloud_cmd(args: argparse.Namespace) -> int:
    from server.deploy.superlink import CloudConfig, health, start_cloud

    if args.health_check:
        info = _cloud_info(args.state_dir)
        ok = health(info["address"], Path(info["ca"]) if info.get("ca") else None)
        print(f"{info['address']}: {'healthy' if ok else 'NOT healthy'}")
        return 0 if ok else 1
    if args.insecure:
        print("WARNING: --insecure: no TLS and no node authentication. Model weights, gradients "
              "and metrics travel in clear text and any device can join. Use only on a trusted "
              "lab network.", file=sys.stderr)
    cfg = CloudConfig(Path(args.state_dir), host=args.host, port=args.port,
                      certs=Path(args.certs) if args.certs else None, names=args.name or [],
                      insecure=args.insecure)

    def _term(signum, frame):  # systemd / docker stop: take the whole group down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # before anything starts: start_cloud cleans up too
    cloud = None
    try:
        cloud = start_cloud(cfg)
        _print_cloud(cloud, cfg, args)
        code = cloud.superlink.popen.wait()
        print(f"SuperLink exited with code {code}:\n{cloud.superlink.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the SuperLink", file=sys.stderr)
        return 0
    finally:
        if cloud is not None:
            cloud.stop()


def _print_cloud(cloud, cfg, args: argparse.Namespace) -> None:
    public = args.public_address or f"{(args.name or ['<this-host>'])[0]}:{cfg.port}"
    print(f"SuperLink up in {cloud.ready_seconds:.1f}s: "
          f"{'INSECURE (no TLS, no node auth)' if cfg.insecure else 'TLS on, node auth on'}, "
          f"listening on {cfg.host}:{cfg.port}, state in {cfg.state_dir}")
    if not cfg.insecure:
        print(f"  edges connect with: unikd edge --superlink {public} --ca ca.crt --key NODE_KEY "
              f"--data DIR --client-id N")
        print(f"  copy to each edge:  {cfg.paths.ca_crt} (and that node's private key only)")
        print(f"  register a node:    unikd certs register NODE_KEY.pub "
              f"--state-dir {cfg.state_dir}")
    print(f"  run FedUNI-KD:      unikd submit --state-dir {cfg.state_dir} "
          f"[--config F] [--set k=v]")
    sys.stdout.flush()


# ---------------------------------------------------------------- unikd certs


def certs_init_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import DEFAULT_NAMES, describe, init_all

    names = list(dict.fromkeys((args.name or []) + list(DEFAULT_NAMES)))
    init_all(Path(args.dir), names, args.node or [], overwrite=args.force)
    if args.bundle_dir:
        from server.deploy.certs import make_bundle

        for node in args.node or []:
            make_bundle(Path(args.dir), node, Path(args.bundle_dir) / node)
    print(json.dumps(describe(Path(args.dir)), indent=2))
    print(f"copy {Path(args.dir) / 'ca.crt'} to every edge; keep ca.key off the network",
          file=sys.stderr)
    return 0


def certs_node_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import make_node_key

    priv, pub = make_node_key(Path(args.dir), args.name, overwrite=args.force)
    print(f"node key {priv} (copy to the device, mode 600)\npublic key {pub}")
    if args.register:
        return certs_register_cmd(argparse.Namespace(**{**vars(args), "public_key": [str(pub)],
                                                        "node_name": args.name}))
    return 0


def _cli_from(args: argparse.Namespace):
    """A flwr CLI for --superlink/--ca, or the cloud recorded in --state-dir."""
    from server.deploy.superlink import FlwrCli

    if getattr(args, "superlink", None):
        if not args.insecure and not args.ca:
            raise UnikdError("--superlink needs --ca CA.crt (or --insecure)")
        home = Path.home() / ".unikd" / "flwr-cli" / re.sub(r"[^A-Za-z0-9_.-]", "_", args.superlink)
        return FlwrCli(args.superlink, None if args.insecure else Path(args.ca), home)
    if getattr(args, "state_dir", None):
        info = _cloud_info(Path(args.state_dir))
        return FlwrCli(info["address"], Path(info["ca"]) if info.get("ca") else None,
                       Path(args.state_dir) / "cli-home")
    raise UnikdError("say which cloud: --state-dir DIR (on the cloud) or --superlink HOST:PORT "
                     "--ca ca.crt")


def certs_register_cmd(args: argparse.Namespace) -> int:
    cli = _cli_from(args)
    keys = [Path(p) for p in args.public_key]
    for pub in keys:
        if not pub.is_file():
            raise UnikdError(f"{pub}: public key not found")
    for pub in keys:
        name = args.node_name if args.node_name and len(keys) == 1 else pub.stem
        try:
            node_id = cli.register(pub, name)
            print(f"registered {pub} as node {node_id} ({name})")
        except UnikdError as err:
            if "already" not in str(err).lower():
                raise
            print(f"already registered: {pub}")
    return 0


def certs_bundle_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import make_bundle

    dest = make_bundle(Path(args.dir), args.name, Path(args.out))
    print(f"{dest}: ca.crt + node.key for {args.name}; copy it to the device "
          f"(e.g. /etc/unikd) and keep node.key mode 600")
    return 0


def certs_show_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import describe

    print(json.dumps(describe(Path(args.dir)), indent=2))
    return 0


# ---------------------------------------------------------------- unikd submit


def submit_cmd(args: argparse.Namespace) -> int:
    from server.deploy.superlink import config_overrides, submit

    cli = _cli_from(args)
    overrides = [] if args.resume and not (args.config or args.set) else \
        config_overrides(args.config, args.set)
    state_dir = Path(args.state_dir) if args.state_dir else None
    res = submit(cli, overrides, Path(args.out), state_dir=state_dir,
                 app=Path(args.app) if args.app else None, timeout=args.timeout,
                 resume=args.resume,
                 on_status=lambda s: print(f"run status: {s}", file=sys.stderr))
    summary = res.run_dir / "results.json" if res.run_dir else None
    print(f"run {res.run_id}: {res.status} in {res.seconds:.1f}s -> {res.run_dir}")
    if summary is not None and summary.is_file():
        r = json.loads(summary.read_text())
        print(f"target MF1 {r.get('mf1')}, accuracy {r.get('acc')}, {r.get('rounds')} rounds, "
              f"{r.get('clients')} clients")
    elif res.ok:
        print("the run folder stays on the cloud (pass --state-dir on the cloud machine to "
              "copy it); its log is in server.log")
    if not res.ok:
        log_file = res.run_dir / "server.log" if res.run_dir else None
        tail = log_file.read_text().splitlines()[-30:] if log_file and log_file.is_file() else []
        print("\n".join(tail), file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from server.deploy.superlink import DEFAULT_PORT

    p = sub.add_parser("cloud", allow_abbrev=False,
                       help="start the cloud SuperLink (TLS + node auth by default)")
    p.add_argument("--state-dir", default="cloud-state",
                   help="certs, state.db, run folders, logs (persists across restarts)")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default all interfaces)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--certs", help="certificate folder (default STATE_DIR/certs; made if absent)")
    p.add_argument("--name", action="append", metavar="HOST_OR_IP",
                   help="name or IP the edges dial; goes into a new server certificate "
                        "(repeatable)")
    p.add_argument("--public-address", metavar="HOST:PORT", help="the address to print for edges")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no node authentication (prints a warning; lab use only)")
    p.add_argument("--health-check", action="store_true",
                   help="only check that the cloud recorded in STATE_DIR answers /health")
    p.set_defaults(func=cloud_cmd)

    c = sub.add_parser("certs", allow_abbrev=False,
                       help="CA, server certificate, node keys; register nodes")
    csub = c.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    i = csub.add_parser("init", allow_abbrev=False,
                        help="a CA, a server certificate and (optionally) node keys")
    i.add_argument("--dir", required=True)
    i.add_argument("--name", action="append", metavar="HOST_OR_IP",
                   help="server name or IP for the certificate (repeatable; localhost and "
                        "127.0.0.1 are always added)")
    i.add_argument("--node", action="append", metavar="NAME", help="also make this node's key")
    i.add_argument("--bundle-dir", help="also write BUNDLE_DIR/<node>/{ca.crt,node.key}: "
                                       "what each device needs, nothing more")
    i.add_argument("--force", action="store_true", help="replace existing files")
    i.set_defaults(func=certs_init_cmd)

    n = csub.add_parser("node", allow_abbrev=False,
                        help="a node's ECDSA key pair (optionally register it)")
    n.add_argument("name")
    n.add_argument("--dir", required=True)
    n.add_argument("--force", action="store_true")
    n.add_argument("--register", action="store_true", help="register the new key on the cloud")
    _add_cloud_args(n)
    n.set_defaults(func=certs_node_cmd)

    r = csub.add_parser("register", allow_abbrev=False,
                        help="register node public keys on a running cloud")
    r.add_argument("public_key", nargs="+", help="NODE.pub file(s) (OpenSSH ECDSA)")
    r.add_argument("--node-name", help="name to show in `flwr supernode ls` (one key)")
    _add_cloud_args(r)
    r.set_defaults(func=certs_register_cmd)

    b = csub.add_parser("bundle", allow_abbrev=False,
                        help="one device's files (ca.crt + node.key) in one folder")
    b.add_argument("name")
    b.add_argument("--dir", required=True)
    b.add_argument("--out", required=True)
    b.set_defaults(func=certs_bundle_cmd)

    s = csub.add_parser("show", allow_abbrev=False, help="what a certificate folder holds")
    s.add_argument("--dir", required=True)
    s.set_defaults(func=certs_show_cmd)

    m = sub.add_parser("submit", allow_abbrev=False,
                       help="run FedUNI-KD on a running cloud, wait, fetch the results")
    m.add_argument("--config", help="YAML run config (sent as values: need not exist on the "
                                    "cloud)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_cloud_args(m)
    m.add_argument("--out", default="runs", help="parent folder of the fetched run folder")
    m.add_argument("--app", help="Flower app folder to send (default: this project)")
    m.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait")
    m.add_argument("--resume", metavar="CLOUD_RUN_DIR",
                   help="continue a run folder on the cloud from its last checkpoint")
    m.set_defaults(func=submit_cmd)


def _add_cloud_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="the cloud's state dir (on the cloud machine)")
    p.add_argument("--superlink", metavar="HOST:PORT", help="a remote cloud")
    p.add_argument("--ca", help="CA certificate for --superlink")
    p.add_argument("--insecure", action="store_true", help="the cloud runs without TLS")
