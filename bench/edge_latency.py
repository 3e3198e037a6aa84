"""Issue 7 edge benchmark: per-window latency (1 CPU thread) of the student as PyTorch, ONNX and
ONNX int8 beside the teacher, model size on disk per format, the MF1 change after int8 on the
HAR main-5, and the edge service's throughput (Ingest, StreamPredict) on loopback.

    # quick students for the HAR main-5 (a few minutes), then the benchmark
    python bench/edge_latency.py --train-into bench/out/edge-students --data ../shared/data/HAR
    python bench/edge_latency.py --runs 'bench/out/edge-students/*' \
        --out bench/results/edge_latency.json

The students come from `unikd distill --config configs/har.yaml` with teacher.ensemble=1,
teacher.epochs=20, distill.epochs=10 (short, so the whole benchmark fits in minutes). Latency is
timed per call with batch 1 through the predictors the service uses (raw window in, logits out,
normalisation included), formats interleaved in rounds so a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from client.edge_service.models import (NormalizedStudent, OnnxPredictor,  # noqa: E402
                                        TorchPredictor)
from client.edge_service.windows import encode_window  # noqa: E402
from client.edge_service.export import RunStudent, export_student, load_run_student, onnx_proto  # noqa: E402
from protos import edge_pb2, edge_pb2_grpc  # noqa: E402
from server.central.teacher import load_teacher  # noqa: E402
from shared.data.scenario import load_split  # noqa: E402
from shared.data.datasets import parse_scenario  # noqa: E402

MAIN5 = ("2:11", "7:13", "12:16", "9:18", "6:23")
RECIPE = ["--set", "teacher.ensemble=1", "--set", "teacher.epochs=20", "--set", "distill.epochs=10"]


def train_students(out: Path, data: str) -> None:
    """One quick UNI-KD student per main-5 scenario, one process at a time."""
    for sc in MAIN5:
        subprocess.run([sys.executable, "-m", "shared.cli.main", "distill", "--config",
                        str(REPO_ROOT / "configs" / "har.yaml"), *RECIPE,
                        "--set", f"data.scenario={sc}",
                        "--set", f"data.path={Path(data).resolve()}",
                        "--set", f"out={out}", "--quiet"], check=True, cwd=REPO_ROOT)


# ---------------------------------------------------------------- exports and MF1 change


def export_all(run: Path) -> dict:
    """torch bundle, ONNX fp32 and ONNX int8 of one run, with their parity reports."""
    rows = {}
    for name, fmt, int8 in (("torch", "torch", False), ("onnx", "onnx", False),
                            ("onnx-int8", "onnx", True)):
        result = export_student(run, fmt, int8)
        rows[name] = {"path": str(result.path), "bytes": result.bytes, **result.parity}
    return rows


def teacher_models(run: Path, student: RunStudent, workdir: Path) -> dict:
    """The run's DANN teacher, as PyTorch and as fp32 ONNX, behind the same normalisation."""
    teacher, _ = load_teacher(run / "teacher.pt", student.spec)
    wrapped = NormalizedStudent(teacher, student.model.mean.flatten(), student.model.std.flatten())
    as_run = RunStudent(wrapped.eval(), {}, {**student.props, "method": "teacher"}, student.spec,
                        student.cfg, run)
    onnx_path = workdir / "teacher.onnx"
    onnx_path.write_bytes(onnx_proto(as_run).SerializeToString())
    return {"module": wrapped.eval(), "onnx": onnx_path,
            "pt_bytes": (run / "teacher.pt").stat().st_size}


# ---------------------------------------------------------------- latency


class ModulePredictor:
    """The PyTorch teacher through the same numpy-in, numpy-out path as the student."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(x)).numpy()


def latency(predictors: dict, windows: np.ndarray, calls: int, rounds: int) -> dict:
    """p50/p99/mean per-window latency in ms; formats interleaved round by round."""
    times: dict[str, list[float]] = {k: [] for k in predictors}
    for p in predictors.values():  # warm-up: allocations, ORT kernels, torch dispatch caches
        for i in range(200):
            p.logits(windows[i % len(windows)][None])
    per_round = calls // rounds
    for r in range(rounds):
        for name, p in predictors.items():
            for i in range(per_round):
                x = windows[(r * per_round + i) % len(windows)][None]
                t0 = time.perf_counter_ns()
                p.logits(x)
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                "mean_ms": statistics.fmean(v), "calls": len(v)} for k, v in times.items()}


# ---------------------------------------------------------------- service throughput


def start_serve(store: Path, model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "--store", str(store), "--model", str(model),
         "--address", "127.0.0.1:0", "--watch", "0", "--metrics-port", "0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log.open("a"), text=True,
        start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=120):
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"unikd serve did not start: {log.read_text()}")
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].split()[0]


def throughput(model: Path, windows: np.ndarray, ingest_calls: int, per_call: int,
               predict_windows: int) -> dict:
    """Windows per second through a `unikd serve` process (client here, server there)."""
    import grpc

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        proc, address = start_serve(Path(tmp) / "store.db", model, Path(tmp) / "serve.log")
        try:
            with grpc.insecure_channel(address) as channel:
                stub = edge_pb2_grpc.EdgeDeviceStub(channel)
                ingest = [edge_pb2.IngestRequest(source="bench", window=encode_window(w),
                                                 captured_at=1.0) for w in windows[:per_call]]
                stub.Ingest(iter(ingest[:10]))  # warm-up
                t0 = time.perf_counter()
                for _ in range(ingest_calls):
                    stub.Ingest(iter(ingest))
                ingest_s = time.perf_counter() - t0
                predict = [edge_pb2.PredictRequest(window=encode_window(w), request_id=str(i))
                           for i, w in enumerate(windows[:predict_windows])]
                list(stub.StreamPredict(iter(predict[:50])))  # warm-up
                t0 = time.perf_counter()
                replies = list(stub.StreamPredict(iter(predict)))
                stream_s = time.perf_counter() - t0
                unary = []
                for req in predict[:500]:
                    t1 = time.perf_counter_ns()
                    stub.Predict(req)
                    unary.append((time.perf_counter_ns() - t1) / 1e6)
                status = stub.Status(edge_pb2.StatusRequest())
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            proc.stdout.close()
    assert len(replies) == len(predict)
    n_ingest = ingest_calls * per_call
    return {"model": status.model.format,
            "ingest": {"windows": n_ingest, "calls": ingest_calls, "windows_per_call": per_call,
                       "seconds": ingest_s, "windows_per_s": n_ingest / ingest_s,
                       "store_bytes": status.store_bytes},
            "stream_predict": {"windows": len(predict), "seconds": stream_s,
                               "windows_per_s": len(predict) / stream_s},
            "unary_predict_roundtrip_ms": {"p50": float(np.percentile(unary, 50)),
                                           "p99": float(np.percentile(unary, 99))}}


# ---------------------------------------------------------------- the report


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    import grpc
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__,
            "platform": platform.platform()}


def mf1_section(runs: list[Path]) -> dict:
    """Export every run in the three formats; per-scenario parity and the int8 MF1 change."""
    scenarios = {}
    for run in runs:
        exports = export_all(run)
        sc = load_run_student(run).props["scenario"]
        scenarios[sc] = {"run": str(run), **{k: {m: v[m] for m in (
            "bytes", "max_logit_diff", "agreement", "mf1_pytorch", "mf1_export", "mf1_change")}
            for k, v in exports.items()}}
        print(sc, json.dumps({k: round(v["mf1_change"], 3) for k, v in exports.items()}),
              flush=True)
    changes = [s["onnx-int8"]["mf1_change"] for s in scenarios.values()]
    return {"scenarios": scenarios,
            "int8_mf1_change": {"mean": statistics.fmean(changes),
                                "mean_abs": statistics.fmean(abs(c) for c in changes),
                                "max_abs": max(abs(c) for c in changes)}}


def latency_section(run: Path, x: np.ndarray, calls: int, rounds: int) -> dict:
    """Latency and size on disk of the run's student formats and its teacher."""
    student, export_dir = load_run_student(run), run / "export"
    with tempfile.TemporaryDirectory(prefix="edge-teacher-") as tmp:
        teacher = teacher_models(run, student, Path(tmp))
        predictors = {"student_pytorch": TorchPredictor(export_dir / "student.pt"),
                      "student_onnx": OnnxPredictor(export_dir / "student.onnx"),
                      "student_onnx_int8": OnnxPredictor(export_dir / "student-int8.onnx"),
                      "teacher_pytorch": ModulePredictor(teacher["module"]),
                      "teacher_onnx": OnnxPredictor(teacher["onnx"])}
        timed = latency(predictors, x, calls, rounds)
        size = {k: (export_dir / f).stat().st_size for k, f in (
            ("student_pytorch_bundle", "student.pt"), ("student_onnx", "student.onnx"),
            ("student_onnx_int8", "student-int8.onnx"))}
        size.update(teacher_pytorch_checkpoint=teacher["pt_bytes"],
                    teacher_onnx=teacher["onnx"].stat().st_size)
    return {"latency": {"scenario": student.props["scenario"], "batch": 1, **timed},
            "size_bytes": size}


def target_test_windows(run: Path) -> np.ndarray:
    student = load_run_student(run)
    _, trg = parse_scenario(student.cfg.data.scenario)
    return load_split(student.cfg.data, student.spec, "test", trg).x.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="bench/out/edge-students/*",
                    help="glob of `unikd distill` run folders (one per scenario)")
    ap.add_argument("--train-into", help="first train the quick main-5 students into this folder")
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--calls", type=int, default=3000, help="timed calls per format")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ingest-calls", type=int, default=20)
    ap.add_argument("--per-call", type=int, default=500)
    ap.add_argument("--predict-windows", type=int, default=5000)
    ap.add_argument("--out", default="bench/results/edge_latency.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train_into:
        train_students(Path(args.train_into), args.data)
        return
    runs = sorted(Path(p) for p in glob.glob(args.runs) if (Path(p) / "student.pt").is_file())
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                    "recipe": "unikd distill --config configs/har.yaml " + " ".join(RECIPE),
                    "threads": 1, **mf1_section(runs)}
    x = target_test_windows(runs[0])
    report.update(latency_section(runs[0], x, args.calls, args.rounds))
    print(json.dumps(report["latency"], indent=1), flush=True)
    x_all = np.concatenate([x] * (1 + args.predict_windows // len(x)))
    report["service"] = {fmt: throughput(runs[0] / "export" / name, x_all, args.ingest_calls,
                                         args.per_call, args.predict_windows)
                         for fmt, name in (("onnx", "student.onnx"),
                                           ("onnx-int8", "student-int8.onnx"))}
    print(json.dumps(report["service"], indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
