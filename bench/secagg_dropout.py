"""Issue 13: secure aggregation with 30% of the nodes dropping out mid-protocol.

K nodes (default 10) run our SecAgg stages (server/fed/secagg.py, client/node/secagg.py) through
the in-process Grid (every message serialised to Flower's protobuf and back) for several rounds.
Each node's update is a real HAR gradient at the model's real update size: the UNI-KD
target-side loss (cloud-placed teacher: the D_d domain term) of the HAR student, adapter, D_f and
D_d on a batch of 32 windows of that node's own subject, a new batch every round (36,473
coordinates). Every round, 30% of the nodes (3 of 10) vanish after sharing their keys: some
before they get the mask request, the others while sending their masked input (they compute it,
the reply is lost). The run checks that every round completes above the threshold and that the
unmasked sum equals the plain sum of the survivors' (node-clipped) updates; it reports the max
absolute error against the quantisation bound, wall time per round and the bytes of every stage.
A last control round drops 50% (below the threshold of 6) and must be skipped cleanly.

    python bench/secagg_dropout.py --data ../shared/data/HAR --out bench/results/secagg_dropout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

SUBJECTS = ["2", "6", "7", "9", "11", "12", "13", "16", "18", "23", "1", "3", "4", "5"]


class MidProtocolDropout:
    """The harness's fault hook for the mask stage: round -> {node: 'dropout' | 'straggler'}.

    'dropout': the node never receives the mask request (gone after sharing its keys);
    'straggler': it computes and sends its masked input, which never arrives (gone while sending).
    """

    def __init__(self, plan: dict[int, dict[int, str]], message_type: str):
        self.plan, self.message_types = plan, (message_type,)

    def draw(self, rnd: int, node: int) -> str | None:
        return self.plan.get(rnd, {}).get(node)


def har_updates(data: Path, clients: int, rounds: int, batch: int, seed: int):
    """{client: [one flattened gradient per round]} and the record layout (real HAR windows)."""
    import torch

    from shared.data.datasets import get_spec
    from shared.unikd.engine import KDHparams, StepSchedule, UniKDNets, target_terms
    from shared.protocol import wire
    from shared.privacy.secagg_math import flatten

    torch.manual_seed(seed)
    spec = get_spec("HAR")
    nets = UniKDNets.for_spec(spec)
    nets.train()
    out: dict[int, list] = {}
    layout = None
    for c in range(clients):
        x = torch.load(data / f"train_{SUBJECTS[c]}.pt", weights_only=True)["samples"].float()
        x = (x - x.mean((0, 2), keepdim=True)) / x.std((0, 2), keepdim=True).clamp_min(1e-6)
        gen = torch.Generator().manual_seed(seed * 1000 + c)
        out[c] = []
        for _ in range(rounds):
            idx = torch.randperm(len(x), generator=gen)[:batch]
            nets.zero_grad(set_to_none=True)
            loss = target_terms(nets, x[idx], None, StepSchedule(beta=0.5, alpha=0.5),
                                KDHparams())["loss"]
            loss.backward()
            groups = {"student": {}, "d_f": {}, "d_d": {}}
            for name, p in nets.named_parameters():
                member, rest = name.split(".", 1)
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                if member in ("student", "adapter"):
                    groups["student"][f"{member}.{rest}"] = g.detach().clone()
                else:
                    groups[member][rest] = g.detach().clone()
            vec, layout = flatten({wire.STUDENT_GRAD: groups["student"],
                                   wire.D_F_GRAD: groups["d_f"], wire.D_D_GRAD: groups["d_d"]})
            out[c].append((groups, vec))
    return out, layout


def make_app(updates):
    """A ClientApp whose `train` advertises this node's real HAR update of the round."""
    from flwr.app import Context, Message, MetricRecord
    from flwr.clientapp import ClientApp

    from client.node import secagg
    from shared.protocol import wire
    from shared.protocol.records import RoundConfig

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rc = RoundConfig.from_record(msg.content[wire.CONFIG])
        cid = int(context.node_config["partition-id"])
        groups, _ = updates[cid][(rc.round - 1) % len(updates[cid])]
        reply = secagg.advertise(context.state, rc, cid, groups)
        reply[wire.METRICS] = MetricRecord({"client-id": cid, "round": rc.round})
        wire.check_outgoing(reply, wire.expected_secagg_shapes(wire.SECAGG_KEYS),
                            wire.SECAGG_METRICS)
        return Message(reply, reply_to=msg)

    secagg.add_stage_handlers(app)

    return app


def round_config(rnd: int, clip: float, bits: int):
    from shared.protocol.records import RoundConfig
    from shared.unikd.settings import KDHparams, StepSchedule

    return RoundConfig(round=rnd, epoch=1, step=rnd - 1, global_step=rnd - 1,
                       schedule=StepSchedule(beta=0.5, alpha=0.5), lr=1e-3, local_steps=1,
                       seed=0, batch_size=32, hparams=KDHparams(detach_weights=True),
                       bn_policy="averaged", dataset="HAR", secagg=True, secagg_clip=clip,
                       secagg_bits=bits)


def run(data: Path, clients: int, rounds: int, drop: float, fraction: float, clip: float,
        bits: int, seed: int) -> dict:
    import numpy as np
    import torch
    from flwr.app import Message, RecordDict

    from server.fed.harness import InProcessGrid
    from server.fed.ledger import record_bytes
    from server.fed.secagg import layout_of, secure_round
    from shared.protocol import wire
    from shared.privacy.secagg_math import clip_and_check, flatten, threshold_for

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    updates, layout = har_updates(data, clients, rounds, 32, seed)
    prep_seconds = time.perf_counter() - t0
    shapes: dict = defaultdict(dict)
    for rec, name, shape in layout:
        shapes[rec][name] = shape
    assert [tuple(x) for x in layout_of(shapes)] == [tuple(x) for x in layout]
    n_drop = round(drop * clients)
    rng = np.random.default_rng(seed)
    plan: dict[int, dict[int, str]] = {}
    for rnd in range(1, rounds + 1):
        gone = sorted(int(c) for c in rng.choice(clients, n_drop, replace=False))
        plan[rnd] = {1000 + c: ("dropout" if k % 2 == 0 else "straggler")
                     for k, c in enumerate(gone)}
    control = rounds + 1  # below the threshold: 50% vanish after sharing
    plan[control] = {1000 + c: "dropout" for c in range(clients // 2)}
    grid = InProcessGrid(make_app(updates), clients,
                         faults=MidProtocolDropout(plan, wire.SECAGG_MASK_TYPE))
    nodes = sorted(grid.get_node_ids())
    rows = []
    for rnd in range(1, control + 1):
        stage_bytes: dict = defaultdict(lambda: {"down": 0, "up": 0, "messages": 0})

        def send(ns, contents, mtype, rnd=rnd, stage_bytes=stage_bytes):
            msgs = [Message(contents[m], dst_node_id=m, message_type=mtype, group_id=str(rnd))
                    for m in ns]
            for m in msgs:
                stage_bytes[mtype]["down"] += sum(record_bytes(m.content).values())
                stage_bytes[mtype]["messages"] += 1
            got = list(grid.send_and_receive(msgs))
            for r in got:
                if not r.has_error():
                    stage_bytes[mtype]["up"] += sum(record_bytes(r.content).values())
            return got

        content = RecordDict({wire.CONFIG: round_config(rnd, clip, bits).to_record()})
        start = time.perf_counter()
        update, _, stats = secure_round(send, nodes, {m: content for m in nodes}, rnd, fraction,
                                        clip, bits, shapes)
        seconds = time.perf_counter() - start
        row = {"round": rnd, "seconds": seconds, "threshold": stats.get("secagg_threshold"),
               "u0": stats.get("secagg_u0"), "u1": stats.get("secagg_u1"),
               "u2": stats.get("secagg_u2"), "dropped": stats.get("secagg_dropped"),
               "dropped_nodes": {str(k - 1000): v for k, v in plan[rnd].items()},
               "completed": update is not None, "skipped": stats.get("secagg_skipped"),
               "bytes": {k: dict(v) for k, v in stage_bytes.items()}}
        if update is not None:
            survivors = [c for c in range(clients) if 1000 + c not in plan[rnd]]
            idx = (rnd - 1) % rounds
            clipped = [clip_and_check(updates[c][idx][1], clip) for c in survivors]
            plain_sum = np.sum([v for v, _ in clipped], axis=0)
            got, _ = flatten({k: update.arrays[k] for k in wire.GRAD_KEYS})
            got_sum = got * len(survivors)  # the cloud applies the survivors' uniform mean
            err = float(np.abs(got_sum - plain_sum).max())
            # each survivor's rounding <= C / 2^(bits+1); the cloud's mean is float32 (2^-24)
            bound = (len(survivors) * clip / 2 ** (bits + 1)
                     + float(np.abs(plain_sum).max()) * 2.0 ** -23)
            row.update(survivors=len(survivors), sum_max_abs_error=err, sum_error_bound=bound,
                       quantisation_bound=len(survivors) * clip / 2 ** (bits + 1),
                       sum_max_abs=float(np.abs(plain_sum).max()),
                       norms_before_clip=[round(n, 3) for _, n in clipped],
                       nodes_clipped=sum(n > clip for _, n in clipped))
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("round", "seconds", "u2", "dropped", "completed")
                          if k in row} | ({"err": row["sum_max_abs_error"]}
                                          if "sum_max_abs_error" in row else {})), flush=True)
    dropout_rows = rows[:-1]
    per_round_bytes = [sum(s["down"] + s["up"] for s in r["bytes"].values())
                       for r in dropout_rows]
    d = sum(int(np.prod(s)) for _, _, s in layout)
    return {
        "clients": clients, "rounds": rounds, "dropout_fraction": drop,
        "dropped_per_round": n_drop, "threshold_fraction": fraction,
        "threshold": threshold_for(clients, fraction), "clip": clip, "bits": bits,
        "update_coordinates": d, "update": "real HAR gradients: UNI-KD target-side loss (D_d "
        "domain term, cloud-placed teacher) of student+adapter+D_f+D_d, 32 windows of the "
        "node's own subject per round, fresh init (seed)",
        "all_dropout_rounds_completed": all(r["completed"] for r in dropout_rows),
        "control_round_below_threshold_skipped": not rows[-1]["completed"],
        "sum_max_abs_error": max(r["sum_max_abs_error"] for r in dropout_rows),
        "sum_error_bound": min(r["sum_error_bound"] for r in dropout_rows),
        "every_sum_within_bound": all(r["sum_max_abs_error"] <= r["sum_error_bound"]
                                      for r in dropout_rows),
        "quantisation_bound": min(r["quantisation_bound"] for r in dropout_rows),
        "stage_bytes_median": {k: {d: statistics.median(r["bytes"][k][d] for r in dropout_rows)
                                   for d in ("down", "up", "messages")}
                               for k in dropout_rows[0]["bytes"]},
        "round_seconds": [round(r["seconds"], 3) for r in dropout_rows],
        "round_seconds_median": statistics.median(r["seconds"] for r in dropout_rows),
        "round_bytes_median": statistics.median(per_round_bytes),
        "plain_update_bytes_per_node": 4 * d,
        "prep_seconds": prep_seconds, "wall_seconds": time.perf_counter() - t0,
        "rows": rows,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/HAR")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--threshold", type=float, default=0.6)  # fed.secagg_threshold's default
    ap.add_argument("--clip", type=float, default=8.0)  # fed.secagg_clip's default
    ap.add_argument("--bits", type=int, default=24)  # fed.secagg_bits's default
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/secagg_dropout.json")
    a = ap.parse_args()
    result = run(Path(a.data), a.clients, a.rounds, a.dropout, a.threshold, a.clip, a.bits,
                 a.seed)
    result.update(machine=cpu_model(), cpus=os.cpu_count(), load_average=os.getloadavg(),
                  python=platform.python_version(), command=" ".join(
                      ["python bench/secagg_dropout.py", f"--data {a.data}",
                       f"--out {a.out}"]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
