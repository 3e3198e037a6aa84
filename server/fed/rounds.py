"""The federated run: query counts, (optionally) federated DANN teacher, UNI-KD rounds, eval.

Works against any Flower `Grid`: the real one (simulation or deployment) or the in-process
harness in server/fed/harness.py. Every round is logged with its number, losses and bytes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import Message, RecordDict
from tqdm import tqdm

from server.fed.aggregate import (norm_summary, parse_aggregator, reject_outliers, robust_combine,
                              split_replies)
from server.fed import delivery, transport
from server.fed.cloud import Clock, Cloud, SourceData, load_source, sim_setup, target_w_mean
from server.fed.ledger import Ledger
from server.fed.transport import TransportOptions
from server.fed.setup import setup_config, setup_content
from server.fed.secagg import secure_updates
from server.fed.privacy import (charge_round, check_record_noise, check_teacher_source,
                                cloud_secret, dp_aggregate, federated_teacher_rounds,
                                plan_run_privacy, replay_ledger, train_records)
from server.central.teacher import content_hash, load_teacher
from shared.protocol import wire
from shared.config import RunConfig
from shared.errors import UnikdError
from shared.unikd.metrics import macro_f1
from shared.protocol.records import bn_buffers, student_state
from shared.protocol import checkpoints
from shared.protocol.checkpoints import capture_rng, restore_rng, teacher_state
from shared.clock.steps import steps_per_epoch
from shared.clock.local_steps import LocalSteps

log = logging.getLogger(__name__)
TRAIN_RECORDS = (wire.STUDENT_GRAD, wire.D_F_GRAD, wire.D_D_GRAD, wire.STUDENT_BN)


@dataclass
class FedResult:
    cloud: Cloud
    rounds: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    wall_seconds: float = 0.0
    privacy: object | None = None  # record DP: the per-client epsilon ledger (RecordLedger)
    delivered: dict[int, int] = field(default_factory=dict)  # client id -> installed version

    @property
    def final(self) -> dict:
        return self.evals[-1] if self.evals else {}


def wait_for_nodes(grid, want: int, timeout: float = 300.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < want:
        if time.monotonic() > deadline:
            raise UnikdError(f"only {len(nodes)} of {want} clients connected within {timeout:.0f}s")
        time.sleep(0.5)
    return nodes


def _send(grid, nodes: list[int], contents: dict[int, RecordDict], mtype: str, rnd: int,
          timeout: float | None, opts: TransportOptions = TransportOptions()) -> list[Message]:
    """Replies (unpacked, sorted by node id) of the nodes that answered within `timeout`."""
    return transport.send(grid, {n: contents[n] for n in nodes}, mtype, rnd, timeout, opts)


Sender = Callable[..., list[Message]]  # (grid, nodes, contents, message type, round) -> replies


def grid_sender(timeout: float | None, opts: TransportOptions = TransportOptions()) -> Sender:
    """The one sender of a run, in the (grid, nodes, contents, type, round) form every phase
    takes: count query, teacher rounds, deliveries, UNI-KD rounds and evaluation."""
    return functools.partial(_send, timeout=timeout, opts=opts)


def obtain_fed_teacher(grid, cfg: RunConfig, source: SourceData, nodes: list[int],
                       counts: dict[int, int], progress: bool, send: Sender, privacy=None):
    """The teacher to distil from, obtained without target windows ever reaching the cloud.

    A given checkpoint wins. Otherwise `source-only` trains on source data alone, and `edge` /
    `cloud` pre-train a DANN teacher federatedly (target halves computed on the edges).
    """
    if cfg.teacher.checkpoint:
        teacher, _ = load_teacher(cfg.teacher.checkpoint, source.spec)
        return teacher
    if cfg.fed.teacher_placement == "source-only":
        from server.central.teacher import train_source_teacher

        return train_source_teacher(source.spec, source.train, cfg.teacher, cfg.seed)
    from server.fed.teacher import federated_dann_teacher

    return federated_dann_teacher(grid, send, cfg, source, nodes, sum(counts.values()), progress,
                                  privacy)


def query_counts(grid, cfg: RunConfig, source: SourceData, nodes: list[int], send: Sender,
                 model_tags: dict[int, int] | None = None) -> dict[int, int]:
    """How many training windows each client holds (round 0; nothing but counts comes back).

    `model_tags` (when given) collects, per node, the delivery tag of the student its edge
    service runs, for nodes that have one (wire.tag_number)."""
    content = setup_content(cfg, source, setup_config(cfg, source, round=0))
    replies = send(grid, nodes, {n: content for n in nodes}, "query", 0)
    counts = {}
    for r in replies:
        if r.has_error():
            log.warning("node %s failed the count query: %s", r.metadata.src_node_id, r.error.reason)
            continue
        m = r.content[wire.METRICS]
        counts[int(m["client-id"])] = int(m["num-examples"])
        if model_tags is not None and "model-tag" in m:
            model_tags[r.metadata.src_node_id] = int(m["model-tag"])
    if not counts:
        raise UnikdError("no client answered the count query; see the client logs above")
    return counts


def evaluate_round(grid, cloud: Cloud, nodes: list[int], rnd: int, send: Sender) -> dict:
    """Federated evaluation: clients return confusion counts; the cloud sums them into MF1."""
    content = cloud.down_content(rnd, with_teacher=False)
    replies = send(grid, nodes, {n: content for n in nodes}, "evaluate", rnd)
    k = cloud.source.spec.classes
    total = torch.zeros(k, k, dtype=torch.long)
    clients = 0
    per_client: dict[str, float] = {}  # MF1 on each client's own windows (per-domain: per edge)
    for r in replies:
        if r.has_error():
            log.warning("round %d: node %s evaluation failed: %s", rnd, r.metadata.src_node_id,
                        r.error.reason)
            continue
        m = r.content[wire.METRICS]
        if "confusion" in m:
            counts = list(m["confusion"])
            if len(counts) != k * k or any(not isinstance(c, int) or c < 0 for c in counts):
                log.warning("round %d: client %s sent a malformed confusion matrix (%d values, "
                            "expected %d counts); ignored", rnd, m.get("client-id"), len(counts),
                            k * k)
                continue
            own = torch.tensor(counts, dtype=torch.long).reshape(k, k)
            total += own
            clients += 1
            if "client-id" in m and int(own.sum()):
                per_client[f"mf1_client_{int(m['client-id'])}"] = confusion_scores(own)[0]
    if clients == 0:
        return {"round": rnd, "clients": 0}
    mf1, acc = confusion_scores(total)
    return {"round": rnd, "clients": clients, "mf1": mf1, "acc": acc,
            "num-examples": int(total.sum()), **dict(sorted(per_client.items()))}


def confusion_scores(confusion: torch.Tensor) -> tuple[float, float]:
    """Macro F1 and accuracy (%) of a k x k confusion matrix of counts (rows: true class)."""
    k = confusion.shape[0]
    y_true = torch.arange(k).repeat_interleave(confusion.sum(1))
    y_pred = torch.cat([torch.arange(k).repeat_interleave(row) for row in confusion])
    acc = 100.0 * float(confusion.diag().sum()) / max(int(confusion.sum()), 1)
    return macro_f1(y_true, y_pred, k), acc


@dataclass
class Federation:
    """One run's cloud side between rounds: what every round reads and writes."""

    grid: object
    cfg: RunConfig
    cloud: Cloud
    nodes: list[int]
    counts: dict[int, int]  # client id -> training windows (released counts under record DP)
    # the run's sender (`grid_sender`), in the (grid, nodes, contents, type, round) form the
    # teacher and delivery code use
    send_as_grid: Sender
    total: int  # rounds in the run
    result: FedResult
    dp_plan: object | None = None
    dp_ledger: object | None = None
    model_tags: dict[int, int] = field(default_factory=dict)  # nodes with an edge service
    has_teacher: set[int] = field(default_factory=set)  # nodes holding the teacher snapshot
    dp_secret: bytes | None = None  # key of the central-DP noise (privacy.cloud_secret)

    def send(self, nodes: list[int], contents: dict, mtype: str, rnd: int) -> list[Message]:
        return self.send_as_grid(self.grid, nodes, contents, mtype, rnd)


def check_cross_kd(cfg: RunConfig) -> None:
    """The reference's cross-domain KD (target_kd=false): split exactly, or dropped with a warning."""
    if cfg.distill.target_kd:
        return
    if cfg.distill.cross_kd == "expected":
        if cfg.fed.dp != "off" or cfg.fed.secure_aggregation:
            raise UnikdError("distill.cross_kd=expected needs each client's mean w, which DP "
                             "and secure aggregation withhold; use distill.target_kd=true there")
        log.info("distill.cross_kd=expected: the reference's cross-domain KD in expectation, "
                 "split between cloud and edges")
        return
    log.warning("distill.target_kd=false: the reference's 'target' KD pairs source sample i "
                "with target sample i and cannot be split between cloud and edge; the "
                "federation drops the target KD term instead (spec §9.2; distill.cross_kd="
                "expected splits its expectation)")


def check_cloud_hint(cfg: RunConfig) -> None:
    """Prototype hints stand in for a teacher the edges do not have: cloud placement only."""
    if cfg.fed.cloud_hint != "off" and cfg.fed.teacher_placement != "cloud":
        raise UnikdError(f"fed.cloud_hint={cfg.fed.cloud_hint} replaces the teacher's features "
                         f"on the edges when the teacher stays in the cloud; with "
                         f"fed.teacher_placement={cfg.fed.teacher_placement} it would do "
                         f"nothing: set fed.teacher_placement=cloud or fed.cloud_hint=off")


def start_federation(grid, cfg: RunConfig, progress: bool, timeout: float | None,
                     resume: Path | None, delivery_dir: Path | None) -> tuple[Federation, int]:
    """Count the nodes' windows, catch up missed deliveries, obtain the teacher, plan DP and
    (with `resume`) restore the cloud; returns the federation and its first round."""
    source = load_source(cfg)
    check_teacher_source(cfg)  # under DP no un-noised target gradient may leave a node
    check_cross_kd(cfg)
    check_cloud_hint(cfg)
    check_record_noise(cfg)
    nodes = wait_for_nodes(grid, cfg.fed.clients)
    send = grid_sender(timeout, TransportOptions.from_fed(cfg.fed))
    model_tags: dict[int, int] = {}
    counts = query_counts(grid, cfg, source, nodes, send, model_tags)
    deliver_missed(send, grid, cfg, source, model_tags, delivery_dir)
    ckpt = load_checkpoint(resume, cfg) if resume else None
    n_trg = sum(counts.values())
    clock = Clock(steps_per_epoch(len(source.train), n_trg, cfg.distill.batch_for(source.spec)),
                  cfg.distill.epochs)
    total = cfg.fed.rounds or clock.total
    parse_aggregator(cfg.fed.aggregator)  # a bad spec fails before any round
    dp_plan, dp_ledger = plan_run_privacy(cfg, total, counts, len(source.train),
                                          source.spec)  # None: off
    teacher = (checkpoints.teacher_from_state(ckpt["teacher"], source.spec) if ckpt else
               obtain_fed_teacher(grid, cfg, source, nodes, counts, progress, send, dp_ledger))
    cloud = Cloud(cfg, source, teacher, content_hash(teacher))
    cloud.clock = clock
    use_faults(grid, cfg)
    fed = Federation(grid, cfg, cloud, nodes, counts, send, total,
                     FedResult(cloud, privacy=dp_ledger), dp_plan, dp_ledger, model_tags,
                     dp_secret=cloud_secret(grid))
    first = 1
    if ckpt:
        first = restore(cloud, fed.result, ckpt) + 1
        replay_ledger(dp_ledger, federated_teacher_rounds(cfg, len(source.train), n_trg,
                                                          source.spec),
                      first - 1, LocalSteps(cfg.fed.local_steps).dp_steps())
        log.info("resuming from %s after round %d", resume, first - 1)
    log.info("federation: %d clients (%s windows), %d rounds (%d per epoch), teacher %s on %s; "
             "windows per client: %s", len(nodes), n_trg, total, clock.steps_per_epoch,
             cloud.teacher_hash[:12], cfg.fed.teacher_placement,
             " ".join(f"{c}={n}" for c, n in sorted(counts.items())))
    return fed, first


def deliver_missed(send, grid, cfg: RunConfig, source: SourceData, model_tags: dict[int, int],
                   delivery_dir: Path | None) -> None:
    """Nodes whose service does not run the last delivered student get it before training."""
    latest = delivery.load_latest(delivery_dir)
    if latest is not None and (missed := delivery.needs_delivery(model_tags, latest)):
        log.info("%d node(s) missed the last delivery (%s): sending it first", len(missed),
                 latest.tag[:12])
        delivery.deliver(send, grid, missed, latest, setup_config(cfg, source, round=0),
                         sim_setup(cfg, source))


def use_faults(grid, cfg: RunConfig) -> None:
    if hasattr(grid, "use_config_faults"):  # the in-process harness simulates the config's faults
        grid.use_config_faults(cfg.fed, cfg.seed)
    elif cfg.fed.dropout or cfg.fed.straggler_fraction or cfg.fed.corrupt_fraction:
        log.warning("fed.dropout/straggler_fraction/corrupt_fraction are simulated by the "
                    "in-process engine only; this Grid runs without injected faults")


def round_contents(fed: Federation, rnd: int) -> dict[int, RecordDict]:
    """This round's down messages: two payloads at most, nodes holding the teacher share one."""
    cloud, plan = fed.cloud, fed.dp_plan
    plain = cloud.down_content(rnd, with_teacher=False, privacy=plan)
    with_teacher = (cloud.down_content(rnd, with_teacher=True, privacy=plan)
                    if any(n not in fed.has_teacher for n in fed.nodes) else plain)
    return {n: plain if n in fed.has_teacher else with_teacher for n in fed.nodes}


def exchange(fed: Federation, rnd: int, contents: dict[int, RecordDict]):
    """Send the round, collect the replies; (valid updates, replies, errors, secagg stats)."""
    if fed.cfg.fed.secure_aggregation:  # four exchanges; the cloud learns only the sum
        send = lambda ns, cs, t: fed.send(ns, cs, t, rnd)  # noqa: E731
        updates, replies, sa_row = secure_updates(send, fed.nodes, contents, rnd, fed.cfg.fed,
                                                  fed.cloud.up_shapes())
        return updates, replies, [], sa_row
    replies = fed.send(fed.nodes, contents, "train", rnd)
    updates, errors = split_replies(replies, rnd, fed.cloud.up_shapes(),
                                    train_records(fed.dp_plan))
    return updates, replies, errors, {}


def run_round(fed: Federation, rnd: int) -> dict | None:
    """One UNI-KD round; the round's row, or None when too few valid replies came (skipped:
    nothing moves, BN statistics included)."""
    cfg, cloud, result = fed.cfg, fed.cloud, fed.result
    t0 = time.perf_counter()
    contents = round_contents(fed, rnd)
    bn_before = {k: v.clone() for k, v in bn_buffers(cloud.nets.student).items()}
    src = cloud.source_step(rnd)  # at the weights the clients receive (sent above as copies)
    cloud.announce_source_kd(contents, src)  # expected cross KD: the edges' scalar
    updates, replies, errors, sa_row = exchange(fed, rnd, contents)
    charge_round(fed.dp_ledger, rnd, fed.counts,
                 LocalSteps(cfg.fed.local_steps).dp_steps())  # record DP: every node asked
    if len(replies) < len(fed.nodes):
        log.warning("round %d: %d of %d nodes replied within the timeout", rnd, len(replies),
                    len(fed.nodes))
    recent = [r["update_norm_median"] for r in result.rounds[-5:] if "update_norm_median" in r]
    updates, outliers = reject_outliers(updates, cfg.fed.aggregator, rnd, recent)
    result.rejected += [str(e) for e in [*errors, *outliers]]
    # A node that failed (e.g. restarted and lost its cache) gets the teacher again next round.
    fed.has_teacher = {r.metadata.src_node_id for r in replies if not r.has_error()}
    if len(updates) < cfg.fed.min_clients:
        log.warning("round %d: %d valid replies < min_clients %d; round skipped", rnd,
                    len(updates), cfg.fed.min_clients)
        cloud.undo_source_step(bn_before)
        return None
    dp_row = apply_updates(fed, rnd, updates, src, bn_before)
    row = round_row(rnd, cloud, src, updates, time.perf_counter() - t0)
    row.update(dp_row)
    row.update(sa_row)
    row.update(norm_summary(updates, cfg.fed.aggregator))  # next rounds' norm reference
    result.ledger.add_round(rnd, contents, replies)
    row.update(result.ledger.round_totals(rnd))
    result.rounds.append(row)
    return row


def apply_updates(fed: Federation, rnd: int, updates, src: dict, bn_before: dict) -> dict:
    """Aggregate the valid updates (privately under DP) and step the cloud; the DP stats."""
    if fed.dp_plan is not None:  # DP modes: clipped/noised updates, source-only BN statistics
        combined, dp_row = dp_aggregate(updates, fed.dp_plan, fed.dp_ledger, fed.cfg.seed, rnd,
                                        len(fed.result.rounds), fed.cfg.fed.secure_aggregation,
                                        fed.dp_secret, fed.cfg.fed.record_noise == "shares")
        fed.cloud.apply(combined, bn_before)
        return dp_row
    fed.cloud.apply(robust_combine(updates, fed.cfg.fed.aggregator), bn_before, rnd, src,
                    target_w_mean(updates) if "cross_kd" in src else None)
    return {}


def score(fed: Federation, rnd: int, row: dict | None = None) -> None:
    """Federated evaluation after `rnd`, logged with the round's losses when it has a row."""
    ev = evaluate_round(fed.grid, fed.cloud, fed.nodes, rnd, fed.send_as_grid)
    ev["mb_total"] = fed.result.ledger.total_mb()
    fed.result.evals.append(ev)
    if row is not None:
        log.info("[ROUND %d/%d] epoch %d  loss src %.3f trg %.3f  target MF1 %s  (%.2f MB)",
                 rnd, fed.total, fed.cloud.clock.at(rnd - 1)[0], row["src_loss"],
                 row.get("trg_loss", float("nan")),
                 f"{ev['mf1']:.2f}" if "mf1" in ev else "n/a", ev["mb_total"])


def deliver_final(fed: Federation, run_dir: Path | None, delivery_dir: Path | None) -> None:
    """The run is over: every node with an edge service installs the final student."""
    cloud, source = fed.cloud, fed.cloud.source
    final = delivery.Delivery(student_state(cloud.nets), source.normalizer.mean,
                              source.normalizer.std, source.spec.name, fed.total,
                              run_dir.name if run_dir is not None else "",
                              spec=source.spec.to_dict())
    # to the nodes with an edge service (they reported a model tag at the count query)
    fed.result.delivered = delivery.deliver(fed.send_as_grid, fed.grid, sorted(fed.model_tags),
                                            final, setup_config(fed.cfg, source, round=fed.total,
                                                                bn_policy=fed.cfg.fed.bn_policy),
                                            sim_setup(fed.cfg, source))
    if delivery_dir is not None:
        delivery.save_latest(delivery_dir, final)


def federate(grid, cfg: RunConfig, progress: bool = True, timeout: float | None = None,
             on_round=None, run_dir: Path | None = None, resume: Path | None = None,
             stop_after: int | None = None, delivery_dir: Path | None = None) -> FedResult:
    """Run the federation; with `run_dir`, checkpoint the full cloud state as it goes.

    `resume` continues from a checkpoint: every random draw is a function of (seed, stream,
    step), so the resumed run ends with the same numbers as an uninterrupted one.
    `stop_after` ends the loop after that round (used to test kill-and-resume).
    When the rounds end, every node with an edge service (`model-dir`) gets the final student
    (server/fed/delivery.py); with `delivery_dir` it is kept there, and a node that missed it
    gets it at the next run's count query.
    """
    start = time.perf_counter()
    timeout = timeout if timeout is not None else cfg.fed.round_timeout
    torch.set_num_threads(cfg.threads)
    fed, first = start_federation(grid, cfg, progress, timeout, resume, delivery_dir)
    spe = fed.cloud.clock.steps_per_epoch
    eval_every, ckpt_every = spe, cfg.fed.checkpoint_every or spe
    for rnd in tqdm(range(first, fed.total + 1), desc="rounds",
                    disable=None if progress else True, dynamic_ncols=True):
        row = run_round(fed, rnd)
        if row is None:
            if rnd == fed.total and fed.result.rounds:  # the last round was skipped: still score
                score(fed, rnd)
            continue
        if on_round is not None:
            on_round(rnd, fed.cloud, row)
        if rnd % eval_every == 0 or rnd == fed.total:
            score(fed, rnd, row)
        if run_dir is not None and (rnd % ckpt_every == 0 or rnd == fed.total):
            save_checkpoint(run_dir / "checkpoints" / "last.pt", fed.cloud, fed.result, rnd)
        if stop_after is not None and rnd >= stop_after:
            break
    else:
        deliver_final(fed, run_dir, delivery_dir)
    fed.result.wall_seconds = time.perf_counter() - start
    return fed.result


def save_checkpoint(path: Path, cloud: Cloud, result: FedResult, rnd: int) -> None:
    """Everything needed to continue: weights, all optimizer moments, round, logs, teacher."""
    checkpoints.save(path, checkpoints.FED_RESUME, {
        "round": rnd, "config_hash": cloud.cfg.hash(), "nets": cloud.nets.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in cloud.opts.items()},
        "teacher": teacher_state(cloud.teacher), "teacher_hash": cloud.teacher_hash,
        "rounds": result.rounds, "evals": result.evals, "rejected": result.rejected,
        "ledger": result.ledger.rows, "rng": capture_rng()})


def load_checkpoint(path: Path, cfg: RunConfig) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    ckpt = checkpoints.load(path, checkpoints.FED_RESUME)  # weights_only: no code runs
    if ckpt.get("config_hash") != cfg.hash():
        raise UnikdError(f"{path}: written by config {ckpt.get('config_hash')}, this run's config "
                         f"is {cfg.hash()}; resume with the run's own config.yaml")
    return ckpt


def restore(cloud: Cloud, result: FedResult, ckpt: dict) -> int:
    cloud.nets.load_state_dict(ckpt["nets"])
    for k, o in cloud.opts.items():
        o.load_state_dict(ckpt["optimizers"][k])
    result.rounds, result.evals = list(ckpt["rounds"]), list(ckpt["evals"])
    result.rejected, result.ledger.rows = list(ckpt["rejected"]), list(ckpt["ledger"])
    restore_rng(ckpt["rng"])
    return int(ckpt["round"])


def round_row(rnd: int, cloud: Cloud, src: dict, updates, seconds: float) -> dict:
    row: dict = {"round": rnd, "seconds": seconds, "clients": len(updates)}
    for k in ("loss", "ce", "kd", "hint", "dom", "adv", "d_f", "w_mean"):
        if k in src:
            row[f"src_{k}"] = src[k].item()
    total = sum(u.num_examples for u in updates) or 1
    for k in ("loss", "kd", "hint", "dom", "adv", "d_f", "w_mean"):
        vals = [(u.metrics[k], u.num_examples) for u in updates if k in u.metrics]
        if vals:
            row[f"trg_{k}"] = sum(v * n for v, n in vals) / total
    for u in updates:
        row[f"w_mean_client{u.client}"] = u.metrics.get("w_mean")
    return row
