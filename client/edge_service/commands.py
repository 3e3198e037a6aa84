"""Edge-device subcommands: `unikd serve`, `unikd export`, `unikd edge-pull`, `unikd edge-rollback`,
`unikd edge-status`.

(`unikd edge` itself starts the device's Flower SuperNode: client/node/commands.py.)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from shared.errors import UnikdError

log = logging.getLogger(__name__)


def serve_cmd(args: argparse.Namespace) -> int:
    import torch

    from client.edge_service.server import ServeOptions, TlsFiles, serve

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UnikdError("--tls-cert and --tls-key go together")
    tls = (TlsFiles(Path(args.tls_cert), Path(args.tls_key),
                    Path(args.tls_client_ca) if args.tls_client_ca else None)
           if args.tls_cert else None)
    torch.set_num_threads(args.threads)  # the PyTorch format answers on this many threads
    serve(ServeOptions(
        store=Path(args.store).expanduser(), model=Path(args.model) if args.model else None,
        model_dir=Path(args.model_dir).expanduser() if args.model_dir else None,
        dataset=args.dataset, data=Path(args.data) if args.data else None,
        address=args.address, max_windows=args.max_windows,
        max_mb=args.max_mb, max_age_days=args.max_age_days, threads=args.threads,
        watch_s=args.watch, tls=tls, insecure_remote=args.insecure_remote,
        metrics_port=args.metrics_port))
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from client.edge_service.export import describe, export_student

    result = export_student(args.run, args.format, args.int8,
                            Path(args.out) if args.out else None,
                            Path(args.calib) if args.calib else None,
                            Path(args.labelled) if args.labelled else None, args.max_mf1_drop)
    print(describe(result))
    return 0


def pull_cmd(args: argparse.Namespace) -> int:
    """Export the run's student onto the path the service watches (or, with --model-dir, as the
    directory's next version), then ask the service to reload."""
    from client.edge_service.export import describe, export_student

    if bool(args.model) == bool(args.model_dir):
        raise UnikdError("give --model FILE or --model-dir DIR")
    if args.model_dir:
        from client.edge_service.delivery import install_run_student

        installed, result = install_run_student(Path(args.run), Path(args.model_dir))
        print(describe(result))
        print(f"{args.model_dir}: version {installed.version} in service"
              + ("" if installed.new else " (already installed)"))
    else:
        model = Path(args.model)
        fmt = "onnx" if model.suffix == ".onnx" else "torch"
        result = export_student(args.run, fmt, args.int8, model,
                                Path(args.calib) if args.calib else None,
                                Path(args.labelled) if args.labelled else None,
                                args.max_mf1_drop)
        print(describe(result))
    if args.address:
        info = _call(args.address, "ReloadModel")
        print(f"service at {args.address}: generation {info.generation} "
              f"({info.format}, sha256 {info.sha256[:12]})")
    return 0


def rollback_cmd(args: argparse.Namespace) -> int:
    """Put the model directory's previous version back in service."""
    from client.edge_service.versions import rollback

    old, new = rollback(Path(args.model_dir))
    print(f"{args.model_dir}: version {new} in service (was {old}; {old} stays on disk)")
    if args.address:
        info = _call(args.address, "ReloadModel")
        print(f"service at {args.address}: generation {info.generation}, version "
              f"{info.installed_version}")
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(_call(args.address, "Status")), indent=2))
    return 0


def _call(address: str, method: str):
    import grpc

    from protos import edge_pb2, edge_pb2_grpc

    requests = {"Status": edge_pb2.StatusRequest(), "ReloadModel": edge_pb2.ReloadModelRequest()}
    with grpc.insecure_channel(address) as channel:
        stub = edge_pb2_grpc.EdgeDeviceStub(channel)
        try:
            return getattr(stub, method)(requests[method], timeout=30)
        except grpc.RpcError as err:
            raise UnikdError(f"{method} at {address}: {err.code().name}: {err.details()}") from None


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True,
                   help="run folder (unikd distill or federate) or its checkpoint file")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantisation with ONNX Runtime, calibrated on local windows")
    p.add_argument("--calib", help="calibration windows: a window store (.db) or an AdaTime "
                                   "train_<domain>.pt (default: the run's target train split)")
    p.add_argument("--labelled", help="labelled windows for the MF1 parity check: a store with "
                                      "labels or test_<domain>.pt (default: the run's target "
                                      "test split)")
    p.add_argument("--max-mf1-drop", type=float, metavar="POINTS",
                   help="refuse the export when int8 loses more MF1 than this")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the on-device gRPC service (ingest, predict, status)")
    p.add_argument("--store", default="~/.unikd/edge/store.db",
                   help="window store, SQLite (created; default ~/.unikd/edge/store.db)")
    p.add_argument("--model", help="student to serve: .onnx or .pt bundle from unikd export; "
                                   "watched and hot-swapped when the file changes")
    p.add_argument("--model-dir", help="a versioned model directory: serves its current.pt "
                                       "(federated deliveries, edge-pull and edge-rollback "
                                       "switch it); created when missing")
    p.add_argument("--dataset", help="window shape when no model is given (HAR, HHAR, FD, SSC, "
                                     "or GENERIC with --data)")
    p.add_argument("--data", help="window shape when no model is given, read from this AdaTime "
                                  "folder's files (GENERIC)")
    p.add_argument("--address", default="127.0.0.1:50071",
                   help="host:port (port 0 picks one) or unix:PATH; default loopback only")
    p.add_argument("--max-windows", type=int, help="keep at most this many windows")
    p.add_argument("--max-mb", type=float, help="keep at most this many MiB of windows")
    p.add_argument("--max-age-days", type=float, help="drop windows older than this")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--watch", type=float, default=2.0, metavar="SECONDS",
                   help="poll the model file this often; 0 = only on ReloadModel")
    p.add_argument("--metrics-port", type=int, default=9096, metavar="PORT",
                   help="Prometheus /metrics on 127.0.0.1:PORT (windows stored, ingested and "
                        "predicted, installed version; default 9096; 0: none)")
    p.add_argument("--tls-cert", help="PEM certificate: serve TLS (for a gateway)")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed")
    p.add_argument("--insecure-remote", action="store_true",
                   help="allow a non-loopback address without TLS (not recommended)")
    p.set_defaults(func=serve_cmd)

    p = sub.add_parser("export", help="export a run's student to ONNX (optionally int8) or a "
                                      "PyTorch edge bundle, with a parity check")
    _add_export_args(p)
    p.add_argument("--format", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--out", help="output file (default RUN/export/student[-int8].onnx|.pt)")
    p.set_defaults(func=export_cmd)

    e = sub.add_parser("edge-pull", help="install a run's student at the path `unikd serve` "
                                         "watches (exported and checked first)")
    _add_export_args(e)
    e.add_argument("--model", help="the path `unikd serve --model` watches (.onnx or .pt)")
    e.add_argument("--model-dir", help="or: install as the next version of the directory "
                                       "`unikd serve --model-dir` serves (PyTorch bundle)")
    e.add_argument("--address", help="also call ReloadModel on this service")
    e.set_defaults(func=pull_cmd)
    e = sub.add_parser("edge-rollback", help="put the model directory's previous version "
                                             "back in service")
    e.add_argument("--model-dir", required=True, help="the directory `unikd serve` serves")
    e.add_argument("--address", help="also call ReloadModel on this service (else its file "
                                     "watcher swaps within --watch seconds)")
    e.set_defaults(func=rollback_cmd)
    e = sub.add_parser("edge-status", help="print an edge service's Status as JSON")
    e.add_argument("--address", default="127.0.0.1:50071")
    e.set_defaults(func=status_cmd)
