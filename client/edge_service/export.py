"""`unikd export`: a run's student as an edge bundle (.pt) or ONNX (fp32 or int8), checked
against the PyTorch student before it replaces anything.

Both formats take raw windows: the source-statistics z-scoring is baked in front of the
student, so a device needs no source data. A candidate file is written next to the output,
loaded back the way the service loads it, compared with the PyTorch student (largest logit
difference; MF1 change on a labelled set) and only then renamed over the output, so a service
watching that path never sees a model that failed its check.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from client.edge_service.models import BUNDLE_KIND, NormalizedStudent, Predictor, load_predictor
from client.edge_service.store import store_labelled, store_windows
from shared.config import RunConfig, load_config
from shared.data.adatime import load_domain
from shared.data.loaders import Normalizer
from shared.data.scenario import load_split, resolve_spec
from shared.data.datasets import DatasetSpec, get_spec, parse_scenario
from shared.errors import UnikdError
from shared.unikd.metrics import macro_f1
from shared.unikd.models import CNN1d
from shared.unikd.models.cnn1d import STUDENT_FEATURES, STUDENT_WIDTH
from shared.protocol import checkpoints
from shared.platform.runs import atomic_write_bytes, write_json

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torch")
FP32_TOLERANCE = 1e-3  # largest logit difference an fp32 export may show; more is a bug
CALIBRATION_WINDOWS = 1024  # int8 ranges settle long before this on the paper's datasets


@dataclass
class RunStudent:
    model: NormalizedStudent  # eval mode: raw windows in, logits out
    arch: dict[str, Any]  # CNN1d keyword arguments
    props: dict[str, str]  # the metadata both formats carry (ModelMeta.from_props)
    spec: DatasetSpec
    cfg: RunConfig | None
    run_dir: Path


# ---------------------------------------------------------------- reading a run folder


def find_checkpoint(run: Path) -> Path:
    """A checkpoint file, or the student of a run folder (central or federated)."""
    if run.is_file():
        return run
    for candidate in (run / "student.pt", run / "checkpoints" / "final.pt"):
        if candidate.is_file():
            return candidate
    raise UnikdError(f"{run}: no student.pt (unikd distill) or checkpoints/final.pt "
                     "(unikd federate) in this run folder")


def run_dir_of(checkpoint: Path) -> Path:
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


STUDENT_KINDS = (checkpoints.CENTRAL_STUDENT, checkpoints.FED_FINAL)


def student_weights(ckpt: dict) -> tuple[dict[str, torch.Tensor], int, dict]:
    """(student state dict, federated round or -1, run meta) of a student checkpoint."""
    if ckpt["kind"] == checkpoints.CENTRAL_STUDENT:
        return ckpt["state_dict"], -1, dict(ckpt.get("meta", {}))
    # federated: student + adapter, keys prefixed "student." (the adapter is training-only)
    state = {k.split(".", 1)[1]: v for k, v in ckpt["student"].items() if k.startswith("student.")}
    return state, int(ckpt.get("round", -1)), {"method": "fedunikd",
                                               "config_hash": ckpt.get("config_hash", "")}


def run_config(run_dir: Path) -> RunConfig | None:
    file = run_dir / "config.yaml"
    return load_config(file) if file.is_file() else None


def source_normalizer(ckpt: dict, cfg: RunConfig | None, spec: DatasetSpec) -> Normalizer:
    """The z-scoring the student was trained behind: stored, or refitted on the source split."""
    if "norm" in ckpt:
        return Normalizer(ckpt["norm"]["mean"], ckpt["norm"]["std"])
    if cfg is None:
        raise UnikdError("the checkpoint holds no normalisation statistics and its run folder "
                         "has no config.yaml to recompute them from")
    if not cfg.data.normalize:
        return Normalizer.identity(spec.channels)
    source, _ = parse_scenario(cfg.data.scenario)
    try:
        return Normalizer.fit(load_split(cfg.data, spec, "train", source).x)
    except UnikdError as err:
        raise UnikdError(f"the source statistics are needed to bake normalisation into the "
                         f"model: {err} (run export where the run's data.path is readable)"
                         ) from None


def run_spec(ckpt: dict, cfg: RunConfig | None, meta: dict) -> DatasetSpec:
    """The student's dataset shape: stored in the checkpoint (GENERIC needs no data files),
    else from the run's config, else the registry name of older checkpoints."""
    if "spec" in ckpt:
        return DatasetSpec.from_dict(ckpt["spec"], "the checkpoint's spec")
    return resolve_spec(cfg.data) if cfg else get_spec(str(meta.get("dataset", "")))


def student_arch(spec: DatasetSpec) -> dict[str, Any]:
    return {"in_channels": spec.channels, "num_classes": spec.classes, "width": STUDENT_WIDTH,
            "features": STUDENT_FEATURES, "kernel": spec.kernel, "stride": spec.stride,
            "dropout": spec.dropout}


def load_run_student(run: str | Path) -> RunStudent:
    path = find_checkpoint(Path(run))
    ckpt = checkpoints.load(path, STUDENT_KINDS)
    state, round_, meta = student_weights(ckpt)
    run_dir = run_dir_of(path)
    cfg = run_config(run_dir)
    spec = run_spec(ckpt, cfg, meta)
    arch = student_arch(spec)
    student = CNN1d(**arch)
    student.load_state_dict(state)
    norm = source_normalizer(ckpt, cfg, spec)
    props = model_props(spec, cfg, meta, round_, f"{run_dir.name}" +
                        (f"@round{round_}" if round_ >= 0 else ""))
    return RunStudent(NormalizedStudent(student, norm.mean, norm.std).eval(), arch, props,
                      spec, cfg, run_dir)


def model_props(spec: DatasetSpec, cfg: RunConfig | None, meta: dict, round_: int,
                version: str) -> dict[str, str]:
    return {"dataset": spec.name, "scenario": cfg.data.scenario if cfg else
            str(meta.get("scenario", "")), "method": str(meta.get("method", "")),
            "round": str(round_), "version": version, "channels": str(spec.channels),
            "length": str(spec.length), "classes": str(spec.classes),
            "class_names": ",".join(spec.class_names) or ",".join(map(str, range(spec.classes))),
            "config_hash": str(meta.get("config_hash", ""))}


# ---------------------------------------------------------------- the two formats


def bundle_bytes(student: RunStudent) -> bytes:
    """The PyTorch edge bundle: tensors, ints and strings only (weights_only loads it)."""
    return checkpoints.to_bytes(BUNDLE_KIND, {
        "arch": student.arch, "state_dict": student.model.student.state_dict(),
        "norm": {"mean": student.model.mean.flatten(), "std": student.model.std.flatten()},
        "meta": {**student.props, "format": "torch"}})


def write_round_bundle(path: str | Path, state: dict[str, torch.Tensor], norm: Normalizer,
                       spec: DatasetSpec, round_: int, version: str = "") -> None:
    """The student a round delivered, as a bundle at the path the service watches.

    `state` is the wire's student state (keys "student." / "adapter."); the adapter is a
    training-time module and is dropped.
    """
    arch = student_arch(spec)
    student = CNN1d(**arch)
    student.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                             if k.startswith("student.")})
    props = model_props(spec, None, {"method": "fedunikd"}, round_,
                        version or f"round{round_}")
    rs = RunStudent(NormalizedStudent(student, norm.mean, norm.std).eval(), arch, props, spec,
                    None, Path(path).parent)
    atomic_write_bytes(path, bundle_bytes(rs))


def onnx_proto(student: RunStudent) -> onnx.ModelProto:
    """fp32 ONNX with a dynamic batch axis, weights embedded, node debug info stripped."""
    sample = torch.zeros(2, student.spec.channels, student.spec.length)
    # The exporter logs every pass and warns that torchvision (not used here) is missing.
    for name, level in (("torch.onnx", logging.ERROR), ("onnxscript", logging.WARNING),
                        ("onnx_ir", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(student.model, (sample,), dynamo=True, verbose=False,
                                    input_names=["x"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces of the tracer: not needed to run the model
        del node.metadata_props[:]
        node.doc_string = ""
    return with_props(proto, {**student.props, "format": "onnx"})


def with_props(proto: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "unikd export"
    return proto


def quantize_int8(proto: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """Static int8 (QDQ, per-channel weights) calibrated on local windows.

    The first conv and the classifier head stay fp32: the first conv sees z-scored raw sensor
    values whose outliers stretch an int8 range (on the HAR main-5 it caused most of the
    logit error), and together they are ~14% of the student's MACs.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter({"x": calibration[i:i + 1]} for i in range(len(calibration)))

        def get_next(self) -> dict | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory(prefix="unikd-int8-") as tmp:
        fp32, pre, int8 = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
        quant_pre_process(str(fp32), str(pre))
        layers = [n.name for n in onnx.load(pre).graph.node if n.op_type in ("Conv", "Gemm")]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
            quantize_static(str(pre), str(int8), Windows(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True, calibrate_method=CalibrationMethod.Percentile,
                            nodes_to_exclude=[layers[0], layers[-1]])
        quantized = onnx.load(int8)
    props = {p.key: p.value for p in proto.metadata_props}
    return with_props(quantized, {**props, "format": "onnx-int8"})


# ---------------------------------------------------------------- calibration and parity windows


def read_windows(path: Path, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw windows (and labels where known) from a window store or an AdaTime file."""
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        x_lab, y_lab = store_labelled(path)
        return (x_lab, y_lab) if len(y_lab) else (store_windows(path), None)
    match = re.fullmatch(r"(train|test)_(.+)\.pt", path.name)
    if match is None:
        raise UnikdError(f"{path}: give a window store (.db) or an AdaTime file "
                         "train_<domain>.pt / test_<domain>.pt")
    domain = load_domain(path.parent, match.group(1), match.group(2), spec)
    return domain.x, domain.y


def target_split(student: RunStudent, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The run's target-domain split, raw, when this machine can read the run's data."""
    if student.cfg is None:
        return None
    _, target = parse_scenario(student.cfg.data.scenario)
    try:
        domain = load_split(student.cfg.data, student.spec, split, target)
    except UnikdError as err:
        log.info("target %s split unavailable: %s", split, err)
        return None
    return domain.x, domain.y


def calibration_windows(student: RunStudent, calib: Path | None) -> np.ndarray:
    """Local windows: a store or file given with --calib, else the run's target train split."""
    if calib is not None:
        x = read_windows(calib, student.spec)[0]
    else:
        found = target_split(student, "train")
        if found is None:
            raise UnikdError("int8 needs calibration windows: give --calib STORE.db or an "
                             "AdaTime train_<domain>.pt file")
        x = found[0]
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:CALIBRATION_WINDOWS]
    return x[keep.sort().values].numpy()


def parity_set(student: RunStudent, labelled: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Labelled windows for the MF1 change; without any, random windows for the logit check."""
    found = read_windows(labelled, student.spec) if labelled else target_split(student, "test")
    if found is not None:
        return found[0].numpy(), None if found[1] is None else found[1].numpy()
    gen = torch.Generator().manual_seed(0)
    return torch.randn(64, student.spec.channels, student.spec.length, generator=gen).numpy(), None


# ---------------------------------------------------------------- parity and the export itself


@torch.inference_mode()
def parity(reference: NormalizedStudent, exported: Predictor, x: np.ndarray,
           y: np.ndarray | None, classes: int, batch: int = 256) -> dict[str, Any]:
    """Largest |logit| difference, argmax agreement and (with labels) MF1 of both."""
    ref = np.concatenate([reference(torch.from_numpy(x[i:i + batch])).numpy()
                          for i in range(0, len(x), batch)])
    out = np.concatenate([exported.logits(np.ascontiguousarray(x[i:i + batch]))
                          for i in range(0, len(x), batch)])
    report: dict[str, Any] = {"windows": len(x),
                              "max_logit_diff": float(np.abs(ref - out).max()),
                              "agreement": float((ref.argmax(1) == out.argmax(1)).mean())}
    if y is not None:
        yt = torch.from_numpy(y)
        mf1_ref = macro_f1(yt, torch.from_numpy(ref.argmax(1)), classes)
        mf1_out = macro_f1(yt, torch.from_numpy(out.argmax(1)), classes)
        report.update(mf1_pytorch=mf1_ref, mf1_export=mf1_out, mf1_change=mf1_out - mf1_ref)
    return report


@dataclass
class ExportResult:
    path: Path
    format: str  # torch | onnx | onnx-int8
    bytes: int
    parity: dict[str, Any]


def default_output(student: RunStudent, fmt: str, int8: bool) -> Path:
    name = "student-int8.onnx" if int8 else ("student.onnx" if fmt == "onnx" else "student.pt")
    return student.run_dir / "export" / name


def model_bytes(student: RunStudent, fmt: str, int8: bool, calib: Path | None) -> bytes:
    if fmt == "torch":
        return bundle_bytes(student)
    proto = onnx_proto(student)
    if int8:
        proto = quantize_int8(proto, calibration_windows(student, calib))
    return proto.SerializeToString()


def export_student(run: str | Path, fmt: str = "onnx", int8: bool = False,
                   out: Path | None = None, calib: Path | None = None,
                   labelled: Path | None = None, max_mf1_drop: float | None = None,
                   threads: int = 1) -> ExportResult:
    """Export, load back, check parity, then rename into place and write `<out>.parity.json`."""
    if fmt not in FORMATS:
        raise UnikdError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise UnikdError("--int8 applies to --format onnx (ONNX Runtime quantisation)")
    student = load_run_student(run)
    out = out or default_output(student, fmt, int8)
    if out.suffix != (".onnx" if fmt == "onnx" else ".pt"):
        raise UnikdError(f"{out}: a {fmt} model file must end in "
                         f"{'.onnx' if fmt == 'onnx' else '.pt'}")
    candidate = out.with_name(f".{out.stem}.candidate{os.getpid()}{out.suffix}")
    atomic_write_bytes(candidate, model_bytes(student, fmt, int8, calib))
    try:
        exported = load_predictor(candidate, threads)
        x, y = parity_set(student, labelled)
        report = parity(student.model, exported, x, y, student.spec.classes)
        check_parity(report, int8, max_mf1_drop)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, out)
    result = ExportResult(out, exported.meta.format, out.stat().st_size, report)
    write_json(out.with_name(out.name + ".parity.json"),
               {"model": str(out), "format": result.format, "bytes": result.bytes,
                "version": exported.meta.version, **report})
    return result


def check_parity(report: dict[str, Any], int8: bool, max_mf1_drop: float | None) -> None:
    if not int8 and report["max_logit_diff"] > FP32_TOLERANCE:
        raise UnikdError(f"the export differs from the PyTorch student by up to "
                         f"{report['max_logit_diff']:.2e} in the logits (tolerance "
                         f"{FP32_TOLERANCE:.0e}); nothing was written")
    if max_mf1_drop is None:
        return
    if "mf1_change" not in report:
        raise UnikdError("--max-mf1-drop needs labelled windows: give --labelled STORE.db or "
                         "test_<domain>.pt; nothing was written")
    drop = -report["mf1_change"]
    if drop > max_mf1_drop:
        raise UnikdError(f"int8 loses {drop:.2f} MF1 points on the labelled set (allowed "
                         f"{max_mf1_drop}); nothing was written")


def describe(result: ExportResult) -> str:
    p = result.parity
    line = (f"{result.path} ({result.format}, {result.bytes / 1024:.1f} KiB): max logit diff "
            f"{p['max_logit_diff']:.2e}, argmax agreement {100 * p['agreement']:.2f}% on "
            f"{p['windows']} windows")
    if "mf1_change" in p:
        line += (f"; MF1 {p['mf1_pytorch']:.2f} -> {p['mf1_export']:.2f} "
                 f"({p['mf1_change']:+.2f} points)")
    return line


__all__ = ["ExportResult", "RunStudent", "describe", "export_student", "load_run_student",
           "parity", "write_round_bundle"]
