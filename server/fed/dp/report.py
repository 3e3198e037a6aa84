"""What a DP run's folder says about its privacy: the epsilon ledger and its summary.

Client-level DP (`central`, `local`) writes `privacy.csv` (epsilon after every applied round)
and `privacy.json`; record-level DP writes `privacy_ledger.csv` (epsilon per client per round,
teacher phase then student phase) and `privacy.json`. Both return the keys results.json takes.
"""

from __future__ import annotations

from pathlib import Path

from server.fed.dp.record_level import RecordLedger
from server.fed.dp.w_coordinate import w_coordinate_summary
from shared.config import RunConfig
from shared.platform.runs import write_csv, write_json


def write_privacy_ledger(run_dir: Path, cfg: RunConfig, result) -> dict:
    """privacy.csv (epsilon after every round) and privacy.json; {} keys for results.json."""
    f = cfg.fed
    if f.dp == "off":  # secure aggregation alone: the w coordinate's derived values, if any
        summary = w_coordinate_summary(cfg)
        return {"dp": "off", **({"w_coordinate": summary} if summary else {})}
    if f.dp == "record":
        return write_record_ledger(run_dir, cfg, result.privacy)
    rows = [{"round": r["round"], "epsilon": r.get("dp_epsilon"), "delta": f.dp_delta,
             "noise_multiplier": r.get("dp_noise_multiplier"), "clip": f.dp_clip,
             "clients": r.get("clients"), "clipped": r.get("dp_clipped"),
             "noise_std": r.get("dp_noise_std")} for r in result.rounds]
    write_csv(run_dir / "privacy.csv", rows)
    spent = rows[-1]["epsilon"] if rows else 0.0
    z = rows[-1]["noise_multiplier"] if rows else None
    write_json(run_dir / "privacy.json", {
        "mode": f.dp, "clip": f.dp_clip, "target_epsilon": f.dp_epsilon, "delta": f.dp_delta,
        "noise_multiplier": z, "epsilon_spent": spent, "rounds": len(rows),
        "accountant": "dp_accounting.rdp.RdpAccountant (Gaussian, sampling rate 1)",
        "bn_statistics": "not released (cloud keeps source-only BN statistics)",
        "w_coordinate": w_coordinate_summary(cfg)})
    return {"dp": f.dp, "dp_epsilon_spent": spent, "dp_delta": f.dp_delta,
            "dp_noise_multiplier": z, "epsilon": spent, "delta": f.dp_delta}


def write_record_ledger(run_dir: Path, cfg: RunConfig, ledger: RecordLedger | None) -> dict:
    """privacy_ledger.csv (epsilon per client per round, teacher then student phase) and
    privacy.json; the results.json keys (`epsilon` is the largest any node spent)."""
    f = cfg.fed
    rows = ledger.rows if ledger is not None else []
    write_csv(run_dir / "privacy_ledger.csv", rows)
    spent = ledger.max_spent() if ledger is not None else 0.0
    plan = ledger.plan if ledger is not None else None
    per_client = {}
    for r in rows:
        per_client[r["client"]] = r["epsilon"]
    write_json(run_dir / "privacy.json", {
        "mode": "record", "unit": "one window (add/remove) on one node",
        "clip": f.dp_clip, "target_epsilon": f.dp_epsilon, "delta": f.dp_delta,
        "noise_multiplier": plan.noise_multiplier if plan else None,
        "count_noise_std": f.dp_count_std, "released_counts": plan.counts if plan else {},
        "planned_steps": {"teacher": plan.teacher_steps, "student": plan.student_steps}
        if plan else {},
        "epsilon_spent": spent, "epsilon_per_client": per_client,
        "accountant": "dp_accounting RDP: Poisson-subsampled Gaussian per DP-SGD step + "
                      "Gaussian count release, composed per node",
        "withheld": "BN statistics, losses, the w_mean metric; counts released once with "
                    "noise",
        # the expected cross KD: each window's w rides noised inside its clipped vector
        "w_coordinate": w_coordinate_summary(cfg),
        "evaluation": "confusion matrices on labelled test windows, disjoint from the "
                      "training windows, outside the accounting (docs/privacy.md)"})
    return {"dp": "record", "epsilon": spent, "delta": f.dp_delta,
            "dp_noise_multiplier": plan.noise_multiplier if plan else None}

