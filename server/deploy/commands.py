"""Cloud-side deployment commands: `unikd cloud`, `unikd certs`, `unikd submit`."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
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
    from server.deploy.cloud_config import CloudConfig
    from server.deploy.health import health
    from server.deploy.superlink import start_cloud

    if args.health_check:  # through the proxy: what the edges see
        info = _cloud_info(args.state_dir)
        address = info.get("public") or info["address"]
        ok = health(address, Path(info["ca"]) if info.get("ca") else None)
        print(f"{address}: {'healthy' if ok else 'NOT healthy'}")
        return 0 if ok else 1
    if args.insecure:
        print("WARNING: --insecure: no TLS and no node authentication. Model weights, gradients "
              "and metrics travel in clear text and any device can join. Use only on a trusted "
              "lab network.", file=sys.stderr)
    cfg = CloudConfig(Path(args.state_dir), host=args.host, port=args.port,
                      link_port=args.link_port, certs=Path(args.certs) if args.certs else None,
                      names=args.name or [], insecure=args.insecure, dev_certs=args.dev_certs,
                      link_state=args.link_state, dashboard_port=args.dashboard_port)

    def _term(signum, frame):  # systemd / docker stop: take both process groups down
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # before anything starts: start_cloud cleans up too
    cloud = None
    try:
        cloud = start_cloud(cfg)
        _print_cloud(cloud, cfg, args)
        return _supervise(cloud)
    except KeyboardInterrupt:
        print("stopping the proxy and the SuperLink", file=sys.stderr)
        return 0
    finally:
        if cloud is not None:
            cloud.stop()


def _supervise(cloud) -> int:
    """Wait until either process exits; then say which, and (in `finally`) stop the other."""
    while cloud.alive():
        time.sleep(0.5)
    for proc in cloud.processes:
        if not proc.alive():
            print(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}",
                  file=sys.stderr)
    return 1


def _print_cloud(cloud, cfg, args: argparse.Namespace) -> None:
    public = args.public_address or f"{(args.name or ['<this-host>'])[0]}:{cfg.port}"
    print(f"SuperLink up in {cloud.ready_seconds:.1f}s: "
          f"{'INSECURE (no TLS, no node auth)' if cfg.insecure else 'TLS on, node auth on'}, "
          f"public proxy on {cfg.host}:{cfg.port} (Fleet API + /health only), Control API on "
          f"{cfg.control_address} (loopback), state in {cfg.state_dir}")
    if not cfg.insecure:
        print(f"  edges connect with: unikd edge --superlink {public} --ca ca.crt --key NODE_KEY "
              f"--app-key OPERATOR_APP.pub --data DIR --client-id N")
        print(f"  register a node:    unikd certs register NODE_KEY.pub "
              f"--state-dir {cfg.state_dir}")
    if cfg.dashboard_address:
        print(f"  live dashboard:     http://{cfg.dashboard_address}/ (loopback; /metrics for "
              f"Prometheus; `unikd watch --state-dir {cfg.state_dir}` in a terminal; remotely: "
              f"ssh -N -L {cfg.dashboard_port}:127.0.0.1:{cfg.dashboard_port} CLOUD)")
    print(f"  run FedUNI-KD:      unikd submit --state-dir {cfg.state_dir} "
          f"--app-signature app.sig [--config F] [--set k=v]")
    print(f"  remote operator:    ssh -N -L {cfg.link_port}:127.0.0.1:{cfg.link_port} CLOUD, then "
          f"unikd submit --superlink 127.0.0.1:{cfg.link_port} --ca ca.crt --sign-key app.key")
    sys.stdout.flush()


def _watch_cmd(args: argparse.Namespace) -> int:
    from server.watch.terminal import watch_cmd

    if args.runs is None and not (Path(args.state_dir) / "cloud.json").is_file():
        raise UnikdError(f"{args.state_dir}/cloud.json: not found; give the cloud's --state-dir "
                         f"(or --runs DIR for run folders without a cloud)")
    return watch_cmd(args)


# ---------------------------------------------------------------- unikd certs


def certs_init_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import DEFAULT_NAMES, cloud_files, describe, init_all

    names = list(dict.fromkeys((args.name or []) + list(DEFAULT_NAMES)))
    init_all(Path(args.dir), names, overwrite=args.force)
    if args.cloud_dir:
        cloud_files(Path(args.dir), Path(args.cloud_dir))
    if args.edge_dir:
        cloud_files(Path(args.dir), Path(args.edge_dir), edge=True)
    print(json.dumps(describe(Path(args.dir)), indent=2))
    where = f"{args.cloud_dir} (ca.crt, server.pem, server.key)" if args.cloud_dir else \
        "ca.crt, server.pem and server.key"
    print(f"copy {where} to the cloud's STATE_DIR/certs and ca.crt to every edge; ca.key "
          f"stays here, off the network", file=sys.stderr)
    return 0


def _cli_from(args: argparse.Namespace):
    """A flwr CLI for --superlink/--ca, or the cloud recorded in --state-dir."""
    from server.deploy.flwr_cli import FlwrCli

    if getattr(args, "superlink", None):
        if not args.insecure and not args.ca:
            raise UnikdError("--superlink needs --ca CA.crt (or --insecure)")
        home = Path.home() / ".unikd" / "flwr-cli" / re.sub(r"[^A-Za-z0-9_.-]", "_", args.superlink)
        return FlwrCli(args.superlink, None if args.insecure else Path(args.ca), home,
                       **_signing(args))
    if getattr(args, "state_dir", None):
        info = _cloud_info(Path(args.state_dir))
        return FlwrCli(info["address"], Path(info["ca"]) if info.get("ca") else None,
                       Path(args.state_dir) / "cli-home", **_signing(args))
    raise UnikdError("say which cloud: --state-dir DIR (on the cloud) or --superlink HOST:PORT "
                     "--ca ca.crt")


def _signing(args: argparse.Namespace) -> dict:
    key, sig = getattr(args, "sign_key", None), getattr(args, "app_signature", None)
    if key and sig:
        raise UnikdError("give --sign-key or --app-signature, not both")
    return {"sign_key": Path(key) if key else None, "signature": Path(sig) if sig else None}


def check_node_public_key(path: Path) -> None:
    """Registration takes a node's PUBLIC key (OpenSSH ECDSA); never a private one."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if not path.is_file():
        raise UnikdError(f"{path}: public key not found")
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise UnikdError(f"{path} is a PRIVATE key: register the .pub file; the private key "
                         f"stays on its device")
    try:
        key = load_ssh_public_key(data.strip())
    except (ValueError, TypeError) as err:
        raise UnikdError(f"{path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UnikdError(f"{path}: Flower node keys are ECDSA (NIST curve); make one with "
                         f"`unikd edge-keygen` on the device")


def certs_register_cmd(args: argparse.Namespace) -> int:
    keys = [Path(p) for p in args.public_key]
    for pub in keys:
        check_node_public_key(pub)
    cli = _cli_from(args)
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


def certs_show_cmd(args: argparse.Namespace) -> int:
    from server.deploy.certs import describe

    print(json.dumps(describe(Path(args.dir)), indent=2))
    return 0


# ---------------------------------------------------------------- unikd submit


def submit_cmd(args: argparse.Namespace) -> int:
    from server.deploy.run_overrides import config_overrides
    from server.deploy.submit import submit

    cli = _cli_from(args)
    if cli.sign_key is None and cli.signature is None:
        print("WARNING: submitting an UNSIGNED app: edges started with --app-key refuse it "
              "(sign with --sign-key KEY or --app-signature FILE)", file=sys.stderr)
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


# ---------------------------------------------------------------- unikd app


def app_keygen_cmd(args: argparse.Namespace) -> int:
    from shared.platform.app_signing import generate_key

    pub = generate_key(Path(args.path), overwrite=args.force)
    if args.pub_out:  # a second copy where the edges' public files are collected
        Path(args.pub_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.pub_out).write_bytes(pub.read_bytes())
    print(f"app signing key {args.path} (mode 600: keep it on your machine, off the cloud)\n"
          f"public key {pub}: copy it to every edge (`unikd edge --app-key {pub.name}`)")
    return 0


def app_sign_cmd(args: argparse.Namespace) -> int:
    from server.deploy import control_internals
    from server.deploy.submit import app_dir
    from shared.platform import app_signing, flower_pins

    flower_pins.check()
    app = app_dir(Path(args.app) if args.app else None)
    fab_hash = control_internals.fab_hash(app)
    signature = app_signing.sign(app_signing.load_private_key(Path(args.key)), fab_hash)
    out = Path(args.out)
    out.write_text(json.dumps({"fab_hash": fab_hash, "signature": signature,
                               "app": str(app)}, indent=2) + "\n")
    print(f"signed bundle {fab_hash} of {app} -> {out}; on the cloud: unikd submit "
          f"--app-signature {out.name} ... (the cloud's app folder must be the same files)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from server.deploy.cloud_config import DEFAULT_DASHBOARD_PORT, DEFAULT_LINK_PORT, DEFAULT_PORT

    p = sub.add_parser("cloud", allow_abbrev=False,
                       help="start the cloud SuperLink (TLS + node auth by default)")
    p.add_argument("--state-dir", default="cloud-state",
                   help="certs, state.db, run folders, logs (persists across restarts)")
    p.add_argument("--host", default="0.0.0.0",
                   help="the proxy's public listen address (default all interfaces)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--link-port", type=int, default=DEFAULT_LINK_PORT,
                   help="the SuperLink's port on 127.0.0.1 (Control API for operators; "
                        f"default {DEFAULT_LINK_PORT}); never exposed")
    p.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT,
                   help="the live run dashboard and Prometheus /metrics on 127.0.0.1 (default "
                        f"{DEFAULT_DASHBOARD_PORT}; 0 turns them off); never exposed")
    p.add_argument("--certs", help="certificate folder (default STATE_DIR/certs): ca.crt, "
                                   "server.pem, server.key made with `unikd certs init`")
    p.add_argument("--dev-certs", action="store_true",
                   help="development only: make a CA in the state dir when none is there "
                        "(its key then sits on the cloud; warns)")
    p.add_argument("--name", action="append", metavar="HOST_OR_IP",
                   help="name or IP the edges dial (for --dev-certs and the printed hints)")
    p.add_argument("--public-address", metavar="HOST:PORT", help="the address to print for edges")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no node authentication (prints a warning; lab use only)")
    p.add_argument("--link-state", choices=("disk", "memory"), default="disk",
                   help="the SuperLink's state: disk (STATE_DIR/state.db, default) survives a "
                        "restart; memory makes rounds faster (BENCHMARKS.md) but node "
                        "registrations and runs are lost when the cloud restarts")
    p.add_argument("--health-check", action="store_true",
                   help="only check that the cloud recorded in STATE_DIR answers /health "
                        "through its proxy")
    p.set_defaults(func=cloud_cmd)

    c = sub.add_parser("certs", allow_abbrev=False,
                       help="CA and server certificate (operator's machine); register nodes")
    csub = c.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    i = csub.add_parser("init", allow_abbrev=False,
                        help="a CA and a server certificate, on the operator's machine")
    i.add_argument("--dir", required=True, help="where the CA lives (stays on this machine)")
    i.add_argument("--name", action="append", metavar="HOST_OR_IP",
                   help="server name or IP for the certificate (repeatable; localhost and "
                        "127.0.0.1 are always added)")
    i.add_argument("--cloud-dir", help="also copy what the cloud needs (ca.crt, server.pem, "
                                       "server.key) here, nothing more")
    i.add_argument("--edge-dir", help="also copy what every edge needs (ca.crt) here")
    i.add_argument("--force", action="store_true", help="replace existing files")
    i.set_defaults(func=certs_init_cmd)

    r = csub.add_parser("register", allow_abbrev=False,
                        help="register node public keys (made on the devices) on a running cloud")
    r.add_argument("public_key", nargs="+", help="NODE.pub file(s) (OpenSSH ECDSA, from "
                                                 "`unikd edge-keygen`)")
    r.add_argument("--node-name", help="name to show in `flwr supernode ls` (one key)")
    _add_cloud_args(r)
    r.set_defaults(func=certs_register_cmd)

    s = csub.add_parser("show", allow_abbrev=False, help="what a certificate folder holds")
    s.add_argument("--dir", required=True)
    s.set_defaults(func=certs_show_cmd)

    a = sub.add_parser("app", allow_abbrev=False,
                       help="the operator's app-signing key; sign the app bundle")
    asub = a.add_subparsers(dest="app_command", metavar="ACTION", required=True)
    k = asub.add_parser("keygen", allow_abbrev=False, help="an Ed25519 app-signing key pair")
    k.add_argument("path", help="private key file (0600); PATH.pub gets the public key")
    k.add_argument("--force", action="store_true")
    k.add_argument("--pub-out", metavar="FILE", help="also write the public key here")
    k.set_defaults(func=app_keygen_cmd)
    g = asub.add_parser("sign", allow_abbrev=False,
                        help="sign the bundle `flwr run` builds from an app folder")
    g.add_argument("--key", required=True, help="the operator's private app key")
    g.add_argument("--app", help="Flower app folder (default: this project)")
    g.add_argument("--out", default="app.sig", help="signature file for `unikd submit "
                                                    "--app-signature` (default app.sig)")
    g.set_defaults(func=app_sign_cmd)

    w = sub.add_parser("watch", allow_abbrev=False,
                       help="the live run dashboard in this terminal (runs, phase, rounds, MF1, "
                            "edges)")
    w.add_argument("--state-dir", default="cloud-state",
                   help="the cloud's state dir: its runs/ and, through cloud.json, its edges")
    w.add_argument("--runs", metavar="DIR", help="watch run folders here instead (e.g. a "
                   "simulation's `runs/`; edges only with a cloud's --state-dir)")
    w.add_argument("--run", default="latest", help="run folder name (default: the newest)")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    w.add_argument("--once", action="store_true", help="print the view once and exit")
    w.set_defaults(func=_watch_cmd)

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
    m.add_argument("--sign-key", metavar="APP_KEY",
                   help="sign the app bundle with the operator's key (from your machine, "
                        "through an SSH tunnel)")
    m.add_argument("--app-signature", metavar="FILE",
                   help="a signature made offline with `unikd app sign` (on the cloud)")
    m.set_defaults(func=submit_cmd)


def _add_cloud_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="the cloud's state dir (on the cloud machine)")
    p.add_argument("--superlink", metavar="HOST:PORT",
                   help="the cloud's Control API: 127.0.0.1:9093 on the cloud, or the local "
                        "end of an SSH tunnel to it")
    p.add_argument("--ca", help="CA certificate for --superlink")
    p.add_argument("--insecure", action="store_true", help="the cloud runs without TLS")
