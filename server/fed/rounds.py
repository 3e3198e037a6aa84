"""The federated run: query counts, (optionally) federated DANN teacher, UNI-KD rounds, eval.

Works against any Flower `Grid`: the real one (simulation or deployment) or the in-process
harness in server/fed/harness.py. Every round is logged with its number, losses and bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import Message, RecordDict
from tqdm import tqdm

from server.fed.aggregate import (ClientUpdate, norm_summary, parse_aggregator, reject_outliers,
                                  robust_combine, split_replies)
from server.fed import delivery
from server.fed.cohort import CohortPolicy, Roster, eval_sample
from server.fed.cloud import (Clock, Cloud, CloudRound, SourceData, load_source, round_plan,
                              private_w_mean, sim_setup, target_w_mean)
from server.fed.ledger import Ledger
from server.fed import live_status
from server.fed.live_status import LiveStatus
from server.fed.transport import Sender, TransportOptions
from server.fed.setup import setup_config, setup_content
from server.fed.stopping import PlateauRule, epoch_signals
from server.fed.secagg import secure_updates
from server.fed.dp.client_level import cloud_secret
from server.fed.dp.federation import (RunPrivacy, check_clip_scope, check_record_noise,
                                      check_record_terms, check_teacher_source, plan_run_privacy,
                                      teacher_round_charges, train_records)
from server.fed.dp.record_level import RecordLedger
from server.fed.dp.w_coordinate import w_coordinate_summary
from server.central.teacher import content_hash, load_teacher
from shared.protocol import wire
from shared.config import RunConfig
from shared.errors import ReplyError, UnikdError
from shared.unikd.compute import describe, resolve_device, to_device
from shared.unikd.metrics import macro_f1
from shared.protocol.records import student_state
from shared.protocol.reply_shapes import up_shapes
from shared.protocol import checkpoints
from shared.protocol.checkpoints import capture_rng, restore_rng, teacher_state
from shared.clock.steps import steps_per_epoch

log = logging.getLogger(__name__)


@dataclass
class FedResult:
    cloud: Cloud
    rounds: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    wall_seconds: float = 0.0
    privacy: RecordLedger | None = None  # record DP: the per-client epsilon ledger
    delivered: dict[int, int] = field(default_factory=dict)  # client id -> installed version
    exchanges: int = 0  # message round trips of the whole run (transport.Sender.exchanges)
    # cross-device runs (server/fed/cohort.py): per round drawn, {"round", "available",
    # "cohort", "replied"} by client id; empty for a cross-silo run
    cohorts: list[dict] = field(default_factory=list)

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


def obtain_fed_teacher(send: Sender, cfg: RunConfig, source: SourceData, nodes: list[int],
                       counts: dict[int, int], progress: bool,
                       privacy: RecordLedger | None = None, status: LiveStatus | None = None):
    """The teacher to distil from, obtained without target windows ever reaching the cloud.

    A given checkpoint wins. Otherwise `source-only` trains on source data alone, and `edge` /
    `cloud` pre-train a DANN teacher federatedly (target halves computed on the edges).
    """
    if cfg.teacher.checkpoint:
        teacher, _ = load_teacher(cfg.teacher.checkpoint, source.spec)
        return teacher
    if cfg.fed.teacher_placement == "source-only":
        from server.central.teacher import train_source_teacher

        return train_source_teacher(source.spec, source.train, cfg.teacher, cfg.seed,
                                    device=resolve_device(cfg.device))
    from server.fed.teacher import federated_dann_teacher

    return federated_dann_teacher(send, cfg, source, nodes, sum(counts.values()), progress,
                                  privacy, status)


def query_counts(send: Sender, cfg: RunConfig, source: SourceData, nodes: list[int],
                 model_tags: dict[int, int] | None = None,
                 node_clients: dict[int, int] | None = None, roster: Roster | None = None,
                 required: bool = True) -> dict[int, int]:
    """How many training windows each client holds (round 0; nothing but counts comes back).

    `model_tags` (when given) collects, per node, the delivery tag of the student its edge
    service runs, for nodes that have one (wire.tag_number); `node_clients` (when given) each
    node's client id; `roster` (when given) learns which client each answering node is.
    `required`: no answer at all is an error."""
    content = setup_content(cfg, source, setup_config(cfg, source, round=0))
    replies = send.to_all(nodes, content, wire.QUERY, 0)
    counts = {}
    for r in replies:
        if r.has_error():
            log.warning("node %s failed the count query: %s", r.metadata.src_node_id, r.error.reason)
            continue
        m = r.content[wire.METRICS]
        counts[int(m["client-id"])] = int(m["num-examples"])
        if node_clients is not None:
            node_clients[r.metadata.src_node_id] = int(m["client-id"])
        if model_tags is not None and "model-tag" in m:
            model_tags[r.metadata.src_node_id] = int(m["model-tag"])
        if roster is not None:
            roster.admit(r.metadata.src_node_id, int(m["client-id"]))
    if not counts and required:
        raise UnikdError("no client answered the count query; see the client logs above")
    return counts


def evaluate_round(send: Sender, cloud: Cloud, nodes: list[int], rnd: int) -> dict:
    """Federated evaluation: clients return confusion counts; the cloud sums them into MF1."""
    replies = send.to_all(nodes, cloud.eval_content(rnd), wire.EVALUATE, rnd)
    return confusion_eval(replies, cloud.source.spec.classes, rnd)


def confusion_eval(replies: list[Message], k: int, rnd: int) -> dict:
    """The evaluation of round `rnd`'s weights from the replies that carry confusion counts (an
    evaluation's, or a training round's under `fed.evaluation: piggyback`)."""
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

    cfg: RunConfig
    cloud: Cloud
    nodes: list[int]
    counts: dict[int, int]  # client id -> training windows (released counts under record DP)
    send: Sender  # every phase's one sender (server/fed/transport.py)
    total: int  # rounds in the run
    result: FedResult
    privacy: RunPrivacy | None = None  # None: fed.dp=off
    model_tags: dict[int, int] = field(default_factory=dict)  # nodes with an edge service
    has_teacher: set[int] = field(default_factory=set)  # nodes holding the teacher snapshot
    status: LiveStatus = field(default_factory=lambda: LiveStatus(None))  # the live records
    policy: CohortPolicy = field(default_factory=CohortPolicy)  # who takes part in a round
    roster: Roster = field(default_factory=Roster)  # node id <-> client id of every known node
    cohort: list[int] = field(default_factory=list)  # this round's nodes (cross-silo: all)
    available: int = 0  # known nodes available for this round (cross-device)
    # fed.evaluation=piggyback: the evaluation the next round's replies complete (`score`)
    pending_eval: dict | None = None


def check_cross_kd(cfg: RunConfig) -> None:
    """The reference's cross-domain KD (target_kd=false): split exactly, or dropped with a warning."""
    if cfg.distill.target_kd:
        return
    private = cfg.fed.dp != "off" or cfg.fed.secure_aggregation
    if cfg.distill.cross_kd == "expected":
        log.info("distill.cross_kd=expected: the reference's cross-domain KD in expectation, "
                 "split between cloud and edges")
        summary = w_coordinate_summary(cfg)
        if summary is not None:  # derived values, stated (also in privacy.json)
            log.info("the clients' mean w rides in the private update (fed.dp=%s, secure "
                     "aggregation %s): one coordinate s*w with s = sqrt(fed.w_share=%g) * C = "
                     "%.4g, gradients clipped to sqrt(1 - %g) * C = %.4g, C = %s = %g (%s)",
                     cfg.fed.dp, cfg.fed.secure_aggregation, summary["w_share"],
                     summary["w_scale"], summary["w_share"], summary["gradient_bound"],
                     summary["source"], summary["bound"], summary["bound_of"])
        return
    if private:
        raise UnikdError(f"distill.cross_kd=paired with distill.target_kd=false: the reference's "
                         f"cross-domain KD pairs source window i with target window i, a "
                         f"per-window product that cannot be split between cloud and edge "
                         f"without sending per-window values, which fed.dp={cfg.fed.dp} / "
                         f"fed.secure_aggregation={cfg.fed.secure_aggregation} forbid. Use "
                         f"distill.cross_kd=expected (its expectation, which they carry) or "
                         f"distill.target_kd=true")
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


def check_teacher_steps(cfg: RunConfig) -> None:
    """The teacher's own local steps and server step exist in both mode only: edge mode trains
    the teacher member after member, one step per exchange (server/fed/teacher.py)."""
    f = cfg.fed
    if f.local_steps_mode == "edge" and (f.teacher_local_steps or f.teacher_server_step != "same"):
        raise UnikdError(f"fed.teacher_local_steps={f.teacher_local_steps} / "
                         f"fed.teacher_server_step={f.teacher_server_step} apply to "
                         f"fed.local_steps_mode=both only; in edge mode the federated teacher "
                         f"takes one step per exchange: set fed.local_steps_mode=both or leave "
                         f"them at 0 / same")


def check_pseudo_labels(cfg: RunConfig) -> None:
    """Say where the pseudo-labels come from when it is not the teacher (engine.py)."""
    if cfg.distill.pl_weight > 0 and cfg.fed.teacher_placement == "cloud":
        log.info("distill.pl_weight=%g with the teacher in the cloud: each edge labels its "
                 "windows with the student's own confident predictions (self-training), not "
                 "the teacher's", cfg.distill.pl_weight)


def start_federation(grid, cfg: RunConfig, progress: bool, timeout: float | None,
                     resume: Path | None, delivery_dir: Path | None,
                     status: LiveStatus | None = None) -> tuple[Federation, int]:
    """Count the nodes' windows, catch up missed deliveries, obtain the teacher, plan DP and
    (with `resume`) restore the cloud; returns the federation and its first round."""
    use_device(grid, cfg)  # before the first message: a simulated node's config is fixed then
    source = load_source(cfg)
    check_teacher_source(cfg)  # under DP no un-noised target gradient may leave a node
    check_cross_kd(cfg)
    check_cloud_hint(cfg)
    check_teacher_steps(cfg)
    check_record_noise(cfg)
    check_clip_scope(cfg)
    check_record_terms(cfg)
    check_pseudo_labels(cfg)
    policy = CohortPolicy.from_fed(cfg.fed)
    nodes = wait_for_nodes(grid, policy.start_with)
    send = Sender(grid, timeout, TransportOptions.from_fed(cfg.fed))
    model_tags: dict[int, int] = {}
    status = status or LiveStatus(None)
    status.write(live_status.Phase("count-query"))
    node_clients: dict[int, int] = {}
    roster = Roster()
    counts = query_counts(send, cfg, source, nodes, model_tags, node_clients, roster)
    status.write(live_status.Nodes({str(n): c for n, c in node_clients.items()},
                                   {str(c): n for c, n in counts.items()}))
    deliver_missed(send, cfg, source, model_tags, delivery_dir)
    ckpt = load_checkpoint(resume, cfg) if resume else None
    n_trg = sum(counts.values())
    clock = Clock(steps_per_epoch(len(source.train), n_trg, cfg.distill.batch_for(source.spec)),
                  cfg.distill.epochs)
    plan = round_plan(cfg, clock)  # which steps of the clock each round covers
    total = plan.rounds
    parse_aggregator(cfg.fed.aggregator)  # a bad spec fails before any round
    privacy = plan_run_privacy(cfg, plan, counts, len(source.train), source.spec,
                               cloud_secret(grid))  # None: off
    ledger = privacy.ledger if privacy is not None else None
    teacher = (checkpoints.teacher_from_state(ckpt["teacher"], source.spec) if ckpt else
               obtain_fed_teacher(send, cfg, source, nodes, counts, progress, ledger, status))
    cloud = Cloud(cfg, source, teacher, content_hash(teacher), clock,
                  privacy.plan if privacy is not None else None)
    use_faults(grid, cfg)
    fed = Federation(cfg, cloud, nodes, counts, send, total, FedResult(cloud, privacy=ledger),
                     privacy, model_tags, status=status, policy=policy, roster=roster)
    first = 1
    if ckpt:
        first = restore(cloud, fed.result, ckpt) + 1
        fed.pending_eval = ckpt.get("pending_eval")
        send.exchanges += int(ckpt.get("exchanges", 0))  # before the interruption
        if privacy is not None:
            privacy.replay(teacher_round_charges(cfg, len(source.train), n_trg, source.spec),
                           first - 1, plan)
        log.info("resuming from %s after round %d", resume, first - 1)
    log.info("federation: %d clients (%s windows), %d rounds of %d step(s) (%s mode; %d steps "
             "per epoch), teacher %s on %s; windows per client: %s", len(nodes), n_trg, total,
             plan.steps.count if plan.both else 1, plan.mode, clock.steps_per_epoch,
             cloud.teacher_hash[:12], cfg.fed.teacher_placement,
             " ".join(f"{c}={n}" for c, n in sorted(counts.items())))
    return fed, first


def deliver_missed(send: Sender, cfg: RunConfig, source: SourceData,
                   model_tags: dict[int, int], delivery_dir: Path | None) -> None:
    """Nodes whose service does not run the last delivered student get it before training."""
    latest = delivery.load_latest(delivery_dir)
    if latest is not None and (missed := delivery.needs_delivery(model_tags, latest)):
        log.info("%d node(s) missed the last delivery (%s): sending it first", len(missed),
                 latest.tag[:12])
        delivery.deliver(send, missed, latest, setup_config(cfg, source, round=0),
                         sim_setup(cfg, source))


def use_device(grid, cfg: RunConfig) -> None:
    """The in-process harness's simulated nodes compute on the run's device (their node config's
    `device`); a real Grid's nodes are devices that choose their own (`unikd edge --device`)."""
    if hasattr(grid, "use_device"):
        grid.use_device(resolve_device(cfg.device).type)


def use_faults(grid, cfg: RunConfig) -> None:
    if hasattr(grid, "use_config_faults"):  # the in-process harness simulates the config's faults
        grid.use_config_faults(cfg.fed, cfg.seed)
    elif (cfg.fed.dropout or cfg.fed.straggler_fraction or cfg.fed.corrupt_fraction
          or cfg.fed.availability < 1.0 or cfg.fed.availability_period):
        log.warning("fed.dropout/straggler_fraction/corrupt_fraction/availability* are "
                    "simulated by the in-process engine only; this Grid runs without injected "
                    "faults, its nodes online as they are")


def available_nodes(grid, rnd: int) -> list[int]:
    """The nodes online for round `rnd`: the simulator's availability model where the Grid has
    one (server/fed/harness.py), else the nodes connected now."""
    if hasattr(grid, "nodes_at"):
        return sorted(grid.nodes_at(rnd))
    return sorted(grid.get_node_ids())


def draw_cohort(fed: Federation, rnd: int) -> list[int] | None:
    """Round `rnd`'s nodes: every node of a cross-silo run; in a cross-device run a seeded
    sample of the nodes available now, after asking any newcomer its count (server/fed/
    cohort.py). None when fewer than fed.min_available are available (the round is skipped)."""
    if not fed.policy.dynamic:
        return fed.nodes
    grid, pol = fed.send.grid, fed.policy
    available = available_nodes(grid, rnd)
    deadline = time.monotonic() + fed.cfg.fed.round_timeout
    # A real Grid: wait for enough devices to come online; a simulated one answers at once.
    while (len(available) < pol.min_available and not hasattr(grid, "nodes_at")
           and time.monotonic() < deadline):
        time.sleep(0.5)
        available = available_nodes(grid, rnd)
    admit_newcomers(fed, fed.roster.unknown(available), rnd)
    known = [n for n in available if n in fed.roster.client_of]
    fed.available = len(known)
    if len(known) < max(pol.min_available, 1):
        log.warning("round %d: %d node(s) available < fed.min_available %d; round skipped",
                    rnd, len(known), pol.min_available)
        fed.result.cohorts.append({"round": rnd, "available": len(known), "cohort": [],
                                   "replied": []})
        return None
    rate = pol.rate if pol.sampling == "poisson" else None
    return fed.roster.cohort(known, pol.per_round, fed.cfg.seed, rnd, rate=rate)


def admit_newcomers(fed: Federation, nodes: list[int], rnd: int) -> None:
    """Nodes seen for the first time (connected after round 1, or back with a new node id):
    their counts, their edge service's model tag (so they get the final delivery); the teacher
    follows with their first train message (they are not in `has_teacher`)."""
    if not nodes:
        return
    if fed.privacy is not None and fed.cfg.fed.dp == "record":
        log.warning("round %d: %d new node(s) not admitted: record DP's plan covers the nodes "
                    "counted before round 1", rnd, len(nodes))
        return
    counts = query_counts(fed.send, fed.cfg, fed.cloud.source, nodes, fed.model_tags,
                          roster=fed.roster, required=False)
    fed.counts.update(counts)
    fed.nodes = sorted({*fed.nodes, *nodes})
    fed.status.write(live_status.Nodes({str(n): c for n, c in fed.roster.client_of.items()},
                                       {str(c): n for c, n in fed.counts.items()}))
    log.info("round %d: %d new node(s) joined (clients %s)", rnd, len(counts),
             " ".join(str(c) for c in sorted(counts)))


def run_round(fed: Federation, rnd: int) -> dict | None:
    """One UNI-KD round (server/fed/cloud.py); the round's row, or None when too few valid
    replies came (skipped: nothing moves, BN statistics included)."""
    t0, started = time.perf_counter(), time.time()
    rejected_before = len(fed.result.rejected)
    cohort = draw_cohort(fed, rnd)  # 0. who takes part (cross-silo: every node)
    if cohort is None:  # too few devices available: skipped before anything moved
        write_round_status(fed, rnd, None, [], started, rejected_before)
        return None
    fed.cohort = cohort
    # 1. the weights the clients get (and score, when an evaluation rides along); the source
    # step at them
    opened = fed.cloud.begin_round(rnd, evaluate=fed.pending_eval is not None)
    contents = fed.cloud.round_messages(fed.cohort, fed.has_teacher)  # 2. built once, as sent
    updates, replies, errors, sa_row = exchange(fed, opened, contents)  # 3. send and collect
    if fed.pending_eval is not None:  # the previous round's weights, scored by these replies
        complete_eval(fed, replies)
    updates = check_updates(fed, rnd, updates, replies, errors)  # 4. refuse what cannot count
    record_cohort(fed, rnd, replies)
    if len(updates) < fed.cfg.fed.min_clients:
        log.warning("round %d: %d valid replies < min_clients %d; round skipped", rnd,
                    len(updates), fed.cfg.fed.min_clients)
        fed.cloud.abort_round()
        write_round_status(fed, rnd, None, replies, started, rejected_before)
        return None
    dp_row = finish_round(fed, opened, updates)  # 5. aggregate, compose BN, step
    row = record_round(fed, opened, contents, replies, updates, {**dp_row, **sa_row},
                       time.perf_counter() - t0)
    write_round_status(fed, rnd, row, replies, started, rejected_before)
    return row


def write_round_status(fed: Federation, rnd: int, row: dict | None, replies: list[Message],
                       started: float, rejected_before: int) -> None:
    """The round's live status record (server/fed/live_status.py): its rounds.csv numbers,
    the updates refused in it, each node's reply time and the epsilon each client spent."""
    eps: dict[str, float] = {}
    if fed.privacy is not None and fed.privacy.ledger is not None:  # record DP: per client
        eps = {str(r["client"]): float(r["epsilon"]) for r in fed.privacy.ledger.rows}
    elif row is not None and row.get("dp_epsilon") is not None:  # client-level: one for all
        eps = {str(c): float(row["dp_epsilon"]) for c in fed.counts}
    latency = {str(r.metadata.src_node_id): max(0.0, r.metadata.created_at - started)
               for r in replies if not r.has_error()}
    record = live_status.Round(rnd, fed.total, fed.send.exchanges, skipped=row is None,
                               rejected=fed.result.rejected[rejected_before:], latency=latency,
                               epsilon=eps)
    if row is not None:
        record.seconds, record.clients = float(row["seconds"]), int(row["clients"])
        record.bytes_up, record.bytes_down = int(row["bytes_up"]), int(row["bytes_down"])
    fed.status.write(record)


def exchange(fed: Federation, opened: CloudRound, contents: dict[int, RecordDict]):
    """Send the round, collect the replies; (valid updates, replies, errors, secagg stats)."""
    rnd, shapes = opened.number, up_shapes(fed.cloud.nets)
    with_w = opened.config.w_share is not None  # the mean w inside the private update
    if fed.cfg.fed.secure_aggregation:  # four exchanges; the cloud learns only the sum
        updates, replies, sa_row = secure_updates(fed.send, fed.cohort, contents, rnd,
                                                  fed.cfg.fed, shapes, with_w)
        errors: list[ReplyError] = []
    else:
        replies = fed.send(contents, wire.TRAIN, rnd)
        records = train_records(fed.privacy) + ((wire.TARGET_W,) if with_w else ())
        updates, errors = split_replies(replies, rnd, shapes, records,
                                        echo={"local-steps": opened.config.local_steps})
        sa_row = {}
    if fed.privacy is not None:  # record DP: every node asked spent its steps
        asked = (fed.counts if not fed.policy.dynamic else
                 [fed.roster.client_of[n] for n in fed.cohort])
        fed.privacy.charge_round(rnd, asked, opened.config.local_steps)
    return updates, replies, errors, sa_row


def check_updates(fed: Federation, rnd: int, updates: list[ClientUpdate], replies: list[Message],
                  errors: list[ReplyError]) -> list[ClientUpdate]:
    """The updates that may count: outliers (by the robust aggregator) out, refusals logged."""
    result = fed.result
    if len(replies) < len(fed.cohort):
        log.warning("round %d: %d of %d nodes replied within the timeout", rnd, len(replies),
                    len(fed.cohort))
    recent = [r["update_norm_median"] for r in result.rounds[-5:] if "update_norm_median" in r]
    updates, outliers = reject_outliers(updates, fed.cfg.fed.aggregator, rnd, recent)
    result.rejected += [str(e) for e in [*errors, *outliers]]
    # A node that failed (e.g. restarted and lost its cache) gets the teacher again next time;
    # the nodes outside this round's cohort keep what they hold.
    fed.has_teacher = ((fed.has_teacher - set(fed.cohort))
                       | {r.metadata.src_node_id for r in replies if not r.has_error()})
    return updates


def record_cohort(fed: Federation, rnd: int, replies: list[Message]) -> None:
    """A cross-device round's cohort and who of it answered, by client id (the run folder's
    cohorts.jsonl; rounds.csv gets the cohort too)."""
    if not fed.policy.dynamic:
        return
    client = fed.roster.client_of
    fed.result.cohorts.append({
        "round": rnd, "available": fed.available,
        "cohort": [client[n] for n in fed.cohort],
        "replied": sorted(client[r.metadata.src_node_id] for r in replies
                          if not r.has_error() and r.metadata.src_node_id in client)})


def finish_round(fed: Federation, opened: CloudRound, updates: list[ClientUpdate]) -> dict:
    """Aggregate the valid updates (privately under DP) and close the cloud's round; the DP
    stats."""
    scale = fed.cloud.w_scale  # None: the metric w_mean; else the private update's coordinate
    if fed.privacy is not None:  # DP modes: clipped/noised updates, source-only BN statistics
        combined, dp_row = fed.privacy.aggregate(updates, fed.cfg.seed, opened.number,
                                                 len(fed.result.rounds))
        target_w = private_w_mean(combined, scale) if opened.cross_kd else None
        fed.cloud.finish_round(combined, target_w)
        if target_w is not None:
            dp_row["w_mean_private"] = target_w
        return dp_row
    if opened.cross_kd:  # secure aggregation: the coordinate of the one summed update
        target_w = target_w_mean(updates) if scale is None else private_w_mean(updates, scale)
    else:
        target_w = None
    fed.cloud.finish_round(robust_combine(updates, fed.cfg.fed.aggregator), target_w)
    return {} if scale is None or target_w is None else {"w_mean_private": target_w}


def record_round(fed: Federation, opened: CloudRound, contents: dict[int, RecordDict],
                 replies: list[Message], updates: list[ClientUpdate], stats: dict,
                 seconds: float) -> dict:
    """The applied round's row (losses, DP and secure-aggregation stats, norms, bytes), kept."""
    rnd, result = opened.number, fed.result
    row = round_row(rnd, opened.source, updates, seconds)
    row.update(stats)
    row.update(norm_summary(updates, fed.cfg.fed.aggregator))  # next rounds' norm reference
    result.ledger.add_round(rnd, contents, replies)
    row.update(result.ledger.round_totals(rnd))
    if fed.policy.dynamic:  # who took part (cohorts.jsonl has who answered too)
        row["available"] = fed.available
        row["cohort"] = " ".join(str(fed.roster.client_of[n]) for n in fed.cohort)
    result.rounds.append(row)
    return row


def score(fed: Federation, rnd: int, row: dict | None = None, final: bool = False) -> None:
    """Federated evaluation after `rnd`, logged with the round's losses when it has a row.

    Under `fed.evaluation: piggyback` (where the run allows it: `piggybacks`) an evaluation
    before the `final` one costs no exchange: the next round's messages carry the same weights
    and ask the nodes to score them (`complete_eval`)."""
    fed.status.write(live_status.Phase("evaluation", fed.total))
    ev = {"round": rnd, "mb_total": fed.result.ledger.total_mb(),
          "exchanges": fed.send.exchanges,  # so far (an evaluation exchange adds itself)
          "steps": fed.cloud.plan.steps_done(rnd)}  # steps of the clock applied by then
    if piggybacks(fed) and not final:
        fed.pending_eval = {**ev, "row": row}
        return
    scored = evaluate_round(fed.send, fed.cloud, scored_nodes(fed, rnd), rnd)
    ev["exchanges"] = fed.send.exchanges
    add_eval(fed, {**scored, **ev}, row)


def piggybacks(fed: Federation) -> bool:
    """An evaluation rides on the next training round only where that round asks the nodes an
    evaluation would: cross-silo, every node, no evaluation sample."""
    return (fed.cloud.piggybacks_evaluation and not fed.policy.dynamic
            and not fed.policy.eval_clients)


def complete_eval(fed: Federation, replies: list[Message]) -> None:
    """The pending evaluation, from the confusion counts a training round's replies carry."""
    pending, fed.pending_eval = fed.pending_eval, None
    row = pending.pop("row")
    scored = confusion_eval(replies, fed.cloud.source.spec.classes, pending["round"])
    add_eval(fed, {**scored, **pending}, row)


def add_eval(fed: Federation, ev: dict, row: dict | None) -> None:
    """Keep an evaluation (its keys in the order the run folder's evals.csv has always had)."""
    ev = {k: ev[k] for k in ("round", "clients", "mf1", "acc", "num-examples") if k in ev} | ev
    fed.result.evals.append(ev)
    fed.status.write(live_status.Eval(
        ev["round"], ev["exchanges"], ev.get("mf1"), ev.get("acc"),
        {k.removeprefix("mf1_client_"): v for k, v in ev.items() if k.startswith("mf1_client_")}))
    if row is not None:
        log.info("[ROUND %d/%d] epoch %d  loss src %.3f trg %.3f  target MF1 %s  (%.2f MB)",
                 ev["round"], fed.total, fed.cloud.clock.at(ev["steps"] - 1)[0], row["src_loss"],
                 row.get("trg_loss", float("nan")),
                 f"{ev['mf1']:.2f}" if "mf1" in ev else "n/a", ev["mb_total"])


def scored_nodes(fed: Federation, rnd: int) -> list[int]:
    """The nodes a federated evaluation asks: the run's nodes (cross-device: those known and
    connected now, whether or not the availability model lets them train), or a seeded sample
    of fed.eval_clients of them."""
    nodes = fed.nodes
    if fed.policy.dynamic:
        nodes = [n for n in sorted(fed.send.grid.get_node_ids()) if n in fed.roster.client_of]
    return eval_sample(fed.roster, nodes, fed.policy.eval_clients, fed.cfg.seed, rnd)


def deliver_final(fed: Federation, run_dir: Path | None, delivery_dir: Path | None) -> None:
    """The run is over: every node with an edge service installs the final student (the EMA,
    when `distill.ema_decay` > 0)."""
    cloud, source = fed.cloud, fed.cloud.source
    final = delivery.Delivery(student_state(cloud.reported_nets()), source.normalizer.mean,
                              source.normalizer.std, source.spec.name, fed.total,
                              run_dir.name if run_dir is not None else "",
                              spec=source.spec.to_dict())
    # to the nodes with an edge service (they reported a model tag at the count query); in a
    # cross-device run to those of them connected now (a device gone for good cannot answer)
    fed.status.write(live_status.Phase("delivery"))
    targets = sorted(fed.model_tags)
    if fed.policy.dynamic:
        connected = set(fed.send.grid.get_node_ids())
        targets = [n for n in targets if n in connected]
    fed.result.delivered = delivery.deliver(fed.send, targets, final,
                                            setup_config(fed.cfg, source, round=fed.total,
                                                         bn_policy=fed.cfg.fed.bn_policy),
                                            sim_setup(fed.cfg, source))
    fed.status.write(live_status.Delivered({str(c): v for c, v in
                                            fed.result.delivered.items()}))
    if delivery_dir is not None:
        delivery.save_latest(delivery_dir, final)


def federate(grid, cfg: RunConfig, progress: bool = True, timeout: float | None = None,
             on_round=None, run_dir: Path | None = None, resume: Path | None = None,
             stop_after: int | None = None, delivery_dir: Path | None = None,
             run_id: int = 0) -> FedResult:
    """Run the federation; with `run_dir`, checkpoint the full cloud state as it goes.

    `resume` continues from a checkpoint: every random draw is a function of (seed, stream,
    step), so the resumed run ends with the same numbers as an uninterrupted one.
    `stop_after` ends the loop after that round (used to test kill-and-resume).
    When the rounds end, every node with an edge service (`model-dir`) gets the final student
    (server/fed/delivery.py); with `delivery_dir` it is kept there, and a node that missed it
    gets it at the next run's count query. With `run_dir`, live status records go to its
    status.jsonl (server/fed/live_status.py); `run_id` is Flower's (0 in a simulation).
    """
    start = time.perf_counter()
    timeout = timeout if timeout is not None else cfg.fed.round_timeout
    torch.set_num_threads(cfg.threads)
    # `device: cuda` without CUDA stops here, before any message or training step
    log.info("device: %s, for the cloud%s", describe(cfg.device),
             " and the simulated clients" if hasattr(grid, "use_device") else "")
    status = LiveStatus(run_dir)
    status.write(live_status.Start(run_id, cfg.fed.clients, cfg.data.dataset, cfg.fed.dp))
    fed, first = start_federation(grid, cfg, progress, timeout, resume, delivery_dir, status)
    status.write(live_status.Phase("unikd", fed.total))
    plan, spe = fed.cloud.plan, fed.cloud.clock.steps_per_epoch
    eval_every = cfg.fed.eval_every or spe  # in steps of the clock
    ckpt_every = cfg.fed.checkpoint_every or spe
    stopping = StopWatch.of(cfg, fed.result.rounds, plan, eval_every)  # fed.stop; None: off
    for rnd in tqdm(range(first, fed.total + 1), desc="rounds",
                    disable=None if progress else True, dynamic_ncols=True):
        row = run_round(fed, rnd)
        if row is None:
            if rnd == fed.total and fed.result.rounds:  # the last round was skipped: still score
                score(fed, rnd, final=True)
            continue
        if on_round is not None:
            on_round(rnd, fed.cloud, row)
        last = rnd == fed.total
        if plan.ends_period(rnd, eval_every) or last:
            if stopping is not None and not last and stopping.stops(fed.result.rounds):
                log.info("round %d: the label-free plateau rule (fed.stop) ends the run after "
                         "%d of %d rounds", rnd, rnd, fed.total)
                last = True
            score(fed, rnd, row, final=last)
        if run_dir is not None and (plan.ends_period(rnd, ckpt_every) or rnd == fed.total):
            save_checkpoint(run_dir / "checkpoints" / "last.pt", fed.cloud, fed.result, rnd,
                            fed.send.exchanges, fed.pending_eval)
        if stop_after is not None and rnd >= stop_after:
            break
        if last:
            deliver_final(fed, run_dir, delivery_dir)
            break
    else:
        deliver_final(fed, run_dir, delivery_dir)
    fed.result.exchanges = fed.send.exchanges
    fed.result.wall_seconds = time.perf_counter() - start
    return fed.result


@dataclass
class StopWatch:
    """`fed.stop: plateau`: each epoch's label-free signals so far (server/fed/stopping.py)."""

    rule: PlateauRule
    epochs: int  # evaluation points in the run (an epoch of steps ends in each)
    history: list[dict] = field(default_factory=list)
    seen: int = 0  # round rows already folded into `history`

    @classmethod
    def of(cls, cfg: RunConfig, rounds: list[dict], plan, period: int) -> StopWatch | None:
        """The rule's state; `rounds`: the rows of a resumed run so far, folded by epoch."""
        f = cfg.fed
        if f.stop == "off":
            return None
        points = sum(1 for r in range(1, plan.rounds + 1)  # the run's evaluation points
                     if plan.ends_period(r, period) or r == plan.rounds)
        watch = cls(PlateauRule(f.stop_patience, f.stop_tolerance, f.stop_min_fraction), points)
        for i, row in enumerate(rounds):
            if plan.ends_period(row["round"], period):
                watch.history.append(epoch_signals(rounds[watch.seen:i + 1]))
                watch.seen = i + 1
        return watch

    def stops(self, rounds: list[dict]) -> bool:
        """Fold the epoch that just ended (its rounds' rows) in, and apply the rule."""
        self.history.append(epoch_signals(rounds[self.seen:]))
        self.seen = len(rounds)
        return self.rule.stops(self.history, self.epochs)


def save_checkpoint(path: Path, cloud: Cloud, result: FedResult, rnd: int, exchanges: int,
                    pending_eval: dict | None = None) -> None:
    """Everything needed to continue: weights, all optimizer moments, the student's EMA (when
    kept), the cloud's path control (fed.local_path=preconditioned), round, logs, teacher, and
    the message exchanges spent so far (a resumed run adds its own to them)."""
    extra = {"ema": cloud.ema.state_dict()} if cloud.ema is not None else {}
    if cloud.target_control:  # fed.local_path=preconditioned: the next round's cloud path
        extra["target_control"] = cloud.target_control
    if pending_eval is not None:  # fed.evaluation=piggyback: the next round completes it
        extra["pending_eval"] = pending_eval
    checkpoints.save(path, checkpoints.FED_RESUME, {
        "round": rnd, "exchanges": exchanges, "config_hash": cloud.cfg.hash(), "nets": cloud.nets.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in cloud.opts.items()},
        "teacher": teacher_state(cloud.teacher), "teacher_hash": cloud.teacher_hash,
        "rounds": result.rounds, "evals": result.evals, "rejected": result.rejected,
        "ledger": result.ledger.rows, "rng": capture_rng(), **extra,
        **({"cohorts": result.cohorts} if result.cohorts else {})})


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
    if cloud.ema is not None:  # the config hash matched, so the checkpoint holds it too
        cloud.ema.load_state_dict(ckpt["ema"])
    cloud.target_control = to_device(ckpt.get("target_control", {}), cloud.device)
    result.rounds, result.evals = list(ckpt["rounds"]), list(ckpt["evals"])
    result.rejected, result.ledger.rows = list(ckpt["rejected"]), list(ckpt["ledger"])
    result.cohorts = list(ckpt.get("cohorts", []))
    restore_rng(ckpt["rng"])
    return int(ckpt["round"])


def round_row(rnd: int, src: dict, updates, seconds: float) -> dict:
    row: dict = {"round": rnd, "seconds": seconds, "clients": len(updates)}
    for k in ("loss", "ce", "kd", "hint", "dom", "adv", "d_f", "w_mean"):
        if k in src:
            row[f"src_{k}"] = src[k].item()
    total = sum(u.num_examples for u in updates) or 1
    for k in ("loss", "kd", "hint", "dom", "adv", "d_f", "w_mean", "im", "pl", "pl_kept"):
        vals = [(u.metrics[k], u.num_examples) for u in updates if k in u.metrics]
        if vals:
            row[f"trg_{k}"] = sum(v * n for v, n in vals) / total
    for u in updates:
        row[f"w_mean_client{u.client}"] = u.metrics.get("w_mean")
    return row
