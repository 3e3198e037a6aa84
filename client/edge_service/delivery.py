"""Installing a student into the service's model directory as its next version.

Two ways in: a federated run's final delivery (the ClientApp's `train.deliver` handler calls
`install_delivered` with the weights that came down), and `unikd edge-pull --model-dir` with a
run folder copied onto the device (`install_run_student`, exported and parity-checked first).
Both write an edge bundle (checkpoints.EDGE_BUNDLE) through the export helpers and switch the
directory's `current.pt` atomically (versions.py); the service's watcher or ReloadModel swaps it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from client.edge_service import versions
from client.edge_service.export import (ExportResult, export_student, find_checkpoint,
                                        load_run_student, write_round_bundle)
from client.edge_service.versions import Installed
from client.edge_service.windows import WindowShape
from shared.data.loaders import Normalizer
from shared.data.datasets import DatasetSpec


def install_delivered(model_dir: str | Path, state: dict[str, torch.Tensor], norm: Normalizer,
                      spec: DatasetSpec, round_: int, tag: str, run: str = "") -> Installed:
    """The delivered student (wire state: "student." / "adapter." keys) as the next version;
    a delivery whose tag is already in service installs nothing."""
    label = f"{run or 'federated'}@round{round_}"
    return versions.install(
        model_dir, lambda path: write_round_bundle(path, state, norm, spec, round_, label),
        WindowShape(spec.channels, spec.length),
        {"source": "delivery", "run": run, "round": round_}, tag)


def installed_tag(model_dir: str | Path) -> str:
    """The tag of the newest version received ("" when none). The newest, not the one in
    service: after `unikd edge-rollback` the node still has the latest delivery, so the cloud
    does not send it again at the next contact and the rollback holds until the next run ends."""
    newest = max(versions.versions(model_dir), default=0)
    return str(versions.history(model_dir).get(str(newest), {}).get("tag", "")) if newest else ""


def install_run_student(run: Path, model_dir: Path) -> tuple[Installed, ExportResult]:
    """`unikd edge-pull --model-dir`: a run folder's student, exported with its parity check,
    as the next version (the same checkpoint twice installs once)."""
    checkpoint = find_checkpoint(Path(run))
    spec = load_run_student(run).spec
    tag = "pull-" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    box: dict = {}

    def write(path: Path) -> None:
        box["result"] = export_student(run, "torch", out=path)

    installed = versions.install(model_dir, write, WindowShape(spec.channels, spec.length),
                                 {"source": "edge-pull", "run": str(run)}, tag)
    if "result" not in box:  # already in service: report on the file that is
        from client.edge_service.models import load_predictor

        meta = load_predictor(installed.path).meta
        box["result"] = ExportResult(installed.path, meta.format, installed.path.stat().st_size,
                                     {"windows": 0, "max_logit_diff": 0.0, "agreement": 1.0})
    return installed, box["result"]
