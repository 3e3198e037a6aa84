"""What every real-deployment fixture starts from: a tiny trained teacher, the offline CA with
the cloud's and the edges' certificate files, and the operator's app-signing key."""

from __future__ import annotations

from pathlib import Path

from shared.cli.main import main
from shared.config import load_config


def prepare_operator(root: Path) -> tuple[Path, Path]:
    """Under `root`: teacher.pt, pki/ (the CA stays there), cloud/certs, trust/ (the edges')
    and op.key. Returns (teacher path, operator key path)."""
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    tcfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(tcfg.data)
    save_teacher(root / "teacher.pt", train_teacher(tcfg, data, False, []), tcfg, data)
    assert main(["certs", "init", "--dir", str(root / "pki"), "--name", "localhost",
                 "--cloud-dir", str(root / "cloud" / "certs"),
                 "--edge-dir", str(root / "trust")]) == 0
    assert main(["app", "keygen", str(root / "op.key")]) == 0
    return root / "teacher.pt", root / "op.key"
