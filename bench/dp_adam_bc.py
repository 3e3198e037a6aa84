"""Issue 27, a lever measured and not adopted: the cloud's Adam with its second moment corrected
for the known central-DP noise variance (DP-AdamBC, Tang et al., AAAI 2024).

Under `fed.dp: central` the cloud steps Adam on g_source + (clipped target mean + N(0, s^2)),
s = z C / E. The noise inflates Adam's second moment v by s^2 in every coordinate, so every step,
the source's included, shrinks. DP-AdamBC steps with max(v_hat - s^2, (f s)^2) instead of v_hat
(f: --floor, the floor as a fraction of s). This script swaps the cloud's server step for that
update for one run (it does not change the product) on the K = 1,000 cross-device HAR setting of
bench/har_cross_device.py (variant dp8, its teacher file), and scores the federated evaluation.
`--no-correction` runs the same hand-written Adam with s = 0: the control, since a hand-written
Adam does not round exactly as torch's does.

    python bench/dp_adam_bc.py --teacher bench/results/har_cross_device_ema.teacher.pt --clip 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

POOL = "+".join(str(s) for s in range(3, 24))  # bench/har_cross_device.py's pool
CLIENTS, COHORT, EPSILON, ROUNDS = 1000, 50, 8.0, 180


def corrected_adam(noise_var: float, floor_var: float):
    """A server step (server/fed/server_step.py's signature, one step) of Adam with L2 weight
    decay whose bias-corrected second moment has the noise variance taken off, floored."""

    @torch.no_grad()
    def step(opts, steps, how, after_step) -> None:
        if steps != 1:
            raise ValueError("this probe runs one step per round")
        for opt in opts.values():
            for group in opt.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = p.grad + group["weight_decay"] * p
                    state = opt.state.setdefault(p, {})
                    t = state["bc_t"] = state.get("bc_t", 0) + 1
                    m = state.setdefault("bc_m", torch.zeros_like(p))
                    v = state.setdefault("bc_v", torch.zeros_like(p))
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    v_hat = (v / (1 - b2 ** t) - noise_var).clamp_min(floor_var)
                    p.sub_(group["lr"] * (m / (1 - b1 ** t)) / (v_hat.sqrt() + group["eps"]))
        after_step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--teacher", required=True, help="bench/har_cross_device.py's teacher file")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--floor", type=float, default=0.3)
    ap.add_argument("--no-correction", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dp_adam_bc.json"))
    args = ap.parse_args()
    import server.fed.cloud as cloud
    from server.fed.dp.client_level import calibrate_noise
    from server.fed.run import run_inprocess
    from shared.config import load_config

    torch.set_num_threads(1)
    z = calibrate_noise(EPSILON, 1e-5, ROUNDS, COHORT / CLIENTS)
    noise_var = 0.0 if args.no_correction else (z * args.clip / COHORT) ** 2
    floor_var = noise_var * args.floor ** 2
    cloud.apply_server_step = corrected_adam(noise_var, floor_var)
    cfg = load_config(None, [
        f"data.path={Path(args.data).resolve()}", "data.dataset=HAR", f"data.scenario=2->{POOL}",
        f"teacher.checkpoint={args.teacher}", f"seed={args.seed}", f"fed.clients={CLIENTS}",
        f"fed.clients_per_round={COHORT}", "fed.eval_every=1000000",
        "fed.cohort_sampling=poisson", "distill.reference_compat=false", "fed.dp=central",
        f"fed.dp_epsilon={EPSILON}", f"fed.dp_clip={args.clip}"])
    t0 = time.perf_counter()
    res = run_inprocess(cfg, progress=False)
    row = {"clip": args.clip, "floor": args.floor, "correction": not args.no_correction,
           "noise_std": noise_var ** 0.5, "z": z, "seed": args.seed, "mf1": res.final.get("mf1"),
           "rounds": len(res.rounds), "wall_seconds": time.perf_counter() - t0,
           "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    out.write_text(json.dumps({"rows": [*rows, row]}, indent=2))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
