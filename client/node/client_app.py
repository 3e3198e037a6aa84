"""The edge ClientApp: decode the round, run the target side, check the reply against the wire.

Handlers stay thin: no tensor math here. The node keeps in `context.state` the frozen teacher
snapshot (by content hash) and the teacher's outputs on its windows, so neither travels twice.

The node computes on its own device (node config `device`, `node_device`; a deployed edge's CPU
unless its operator says otherwise, a simulated node the run's device): the received nets and
teacher move there, its windows stay on the CPU and move batch by batch, and what it sends is
moved back to the CPU before any privacy step or record (`to_cpu`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TypeVar

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import budget, secagg
from client.node.local_data import LocalData, SharedPool, check_shape, local_data
from client.node.node_config import NodeConfig, read_node_config
from client.node.packing import packing_mod
from client.node.privacy import privatize
from client.node.record_dp import node_secret, record_unikd_round, released_count
from client.node.target_side import reestimate_bn, unikd_round
from client.node.teacher_side import decode_members, member_movers, teacher_round
from shared.protocol import wire
from shared.protocol.reply_shapes import teacher_up_shapes, up_shapes
from shared.data.loaders import Normalizer
from shared.data.datasets import DatasetSpec
from shared.privacy.clipping import w_bounds, w_clip
from shared.privacy.dp_sgd import sampling_rate
from shared.unikd.engine import TeacherOut, UniKDNets, teacher_outputs
from shared.errors import ConfigError, UnikdError
from shared.unikd.compute import CPU, module_device, resolve_device, to_cpu, to_device
from shared.unikd.evaluation import predict
from shared.unikd.metrics import confusion
from shared.unikd.models.cnn1d import TEACHER_FEATURES
from shared.protocol.checkpoints import teacher_from_arrays
from shared.clock.local_steps import LocalSteps, PathMover, teacher_dp_steps
from shared.protocol.records import (RoundConfig, SetupConfig, SimSetup, TeacherRoundConfig,
                                     bn_buffers, from_record, load_student_state,
                                     spec_from_record, student_state, to_record)

log = logging.getLogger(__name__)
app = ClientApp(mods=[packing_mod])  # packed messages in, packed replies out

TEACHER_META = "teacher-meta"  # ConfigRecord in context.state: hash of the cached snapshot
TEACHER_OUT = "teacher-out"  # ArrayRecord in context.state: teacher feat/logits per window
TEACHER_ARRAYS = "teacher-arrays"  # ArrayRecord in context.state: the snapshot (store nodes)
Config = TypeVar("Config", bound=SetupConfig)  # the `config` record's type of a message


def node_of(context: Context) -> NodeConfig:
    """This node's config, typed (client/node/node_config.py)."""
    return read_node_config(context.node_config)


def node_device(context: Context) -> torch.device:
    """Where this node computes: its node config's `device`, resolved as the cloud resolves its
    own (auto: cuda where present). cuda without a CUDA device is an error naming the key."""
    node = node_of(context)
    try:
        return resolve_device(node.device)
    except ConfigError as err:
        raise UnikdError(f"client {node.client_id}: node config device={node.device}: "
                         f"{err.problem}") from None


def node_inputs(msg: Message, context: Context, kind: type[Config] = RoundConfig
                ) -> tuple[Config, int, LocalData]:
    """The message's config (a `kind`), this node's client id and its (cached) local windows."""
    rc = kind.from_record(msg.content[wire.CONFIG])
    sim = SimSetup.from_record(msg.content[wire.SIM])
    node = node_of(context)
    spec = decode_spec(msg.content)
    data = local_data(rc, sim, node, node.client_id, decode_norm(msg.content), spec)
    return rc, node.client_id, check_shape(data, spec, node)


def decode_spec(content: RecordDict) -> DatasetSpec:
    """The models' shape as the cloud sent it: the node needs no registry and no cloud files."""
    return spec_from_record(content[wire.SPEC])


def decode_nets(content: RecordDict, device: torch.device = CPU) -> UniKDNets:
    """The round's nets as the cloud sent them, on `device`."""
    nets = UniKDNets.for_spec(decode_spec(content)).to(device)
    load_student_state(nets, from_record(content[wire.STUDENT]))
    nets.d_f.load_state_dict(from_record(content[wire.D_F]))
    nets.d_d.load_state_dict(from_record(content[wire.D_D]))
    return nets


def decode_norm(content: RecordDict) -> Normalizer:
    stats = from_record(content[wire.NORM])
    return Normalizer(stats["mean"], stats["std"])


def cached_teacher(msg: Message, context: Context, rc: RoundConfig, data: LocalData,
                   device: torch.device = CPU) -> TeacherOut | None:
    """Teacher outputs on this node's windows, computed once per teacher snapshot and window set
    (by the teacher on `device`; kept on the CPU in the node's state).

    A node training on its window store sees new windows between rounds: it keeps the snapshot
    itself too (TEACHER_ARRAYS) and recomputes the outputs when its windows change.
    """
    if not rc.teacher_hash:
        return None  # cloud placement: the teacher never leaves the server
    meta = context.state.get(TEACHER_META)
    same_teacher = meta is not None and meta["hash"] == rc.teacher_hash
    windows = window_fingerprint(data.x_train)
    if same_teacher and meta.get("windows", windows) == windows and TEACHER_OUT in context.state:
        out = from_record(context.state[TEACHER_OUT])
        return TeacherOut(out["feat"], out["logits"])
    if wire.TEACHER in msg.content:
        record, members = msg.content[wire.TEACHER], rc.teacher_members
    elif same_teacher and TEACHER_ARRAYS in context.state:
        record, members = context.state[TEACHER_ARRAYS], int(meta["members"])
    else:
        raise UnikdError(f"client {node_of(context).client_id}, round {rc.round}: teacher snapshot "
                         f"{rc.teacher_hash[:12]} is not cached on this node")
    teacher = shared_teacher(rc.teacher_hash, lambda: teacher_from_arrays(
        from_record(record), members, decode_spec(msg.content)).to(device), device)
    out = (teacher_outputs(teacher, data.x_train) if data.pool is None else
           pool_teacher_outputs(rc.teacher_hash, data.pool, teacher))
    context.state[TEACHER_OUT] = to_record({"feat": out.feat, "logits": out.logits})
    context.state[TEACHER_META] = ConfigRecord({"hash": rc.teacher_hash, "windows": windows,
                                                "members": members})
    if node_of(context).store_path is not None:  # its windows change: keep the snapshot itself
        context.state[TEACHER_ARRAYS] = to_record(from_record(record))
    return out


_TEACHERS: dict[tuple[str, str], torch.nn.Module] = {}  # the last teacher built, by hash, device


def shared_teacher(teacher_hash: str, build, device: torch.device = CPU) -> torch.nn.Module:
    """The frozen teacher of `teacher_hash` on `device`, built once per process: the simulated
    clients of one process share it (a cross-device round meets mostly nodes new to the
    teacher), and a device's process holds one anyway. Frozen and in eval mode, it is only
    ever read."""
    key = (teacher_hash, str(device))
    if key not in _TEACHERS:
        _TEACHERS.clear()
        _TEACHERS[key] = build()
    return _TEACHERS[key]


_POOL_OUT: dict[tuple, TeacherOut] = {}  # the teacher's outputs on the last shared pool


def pool_teacher_outputs(teacher_hash: str, pool: SharedPool, teacher) -> TeacherOut:
    """The teacher's outputs on a simulated population node's windows: its rows of the outputs
    on the whole shared pool, computed once per process and teacher (local_data.SharedPool)."""
    key = (teacher_hash, pool.key)
    if key not in _POOL_OUT:
        _POOL_OUT.clear()
        _POOL_OUT[key] = teacher_outputs(teacher, pool.windows)
    out = _POOL_OUT[key]
    return TeacherOut(out.feat[pool.rows], out.logits[pool.rows])


def hint_prototypes(content: RecordDict) -> torch.Tensor | None:
    """The cloud's per-class teacher features (cloud placement, fed.cloud_hint=prototypes)."""
    if wire.HINT_PROTOTYPES not in content:
        return None
    protos = from_record(content[wire.HINT_PROTOTYPES]).get("feat")
    classes = decode_spec(content).classes
    if (protos is None or tuple(protos.shape) != (classes, TEACHER_FEATURES)
            or not torch.isfinite(protos).all()):
        shape = None if protos is None else tuple(protos.shape)
        raise UnikdError(f"record '{wire.HINT_PROTOTYPES}': expected finite 'feat' "
                         f"[{classes}, {TEACHER_FEATURES}], got {shape}")
    return protos


def path_mover(content: RecordDict, nets: UniKDNets) -> PathMover | None:
    """How this round's local path moves, where the cloud sent its preconditioner and source
    control (`fed.local_path: preconditioned`), checked against the parameters and moved to
    their device; else None."""
    if wire.PATH_PRECOND not in content:
        return None
    params = dict(nets.named_parameters())
    device = module_device(nets)
    parts = [to_device(from_record(content[key]), device)
             for key in (wire.PATH_PRECOND, wire.PATH_CONTROL)]
    for key, arrays in zip((wire.PATH_PRECOND, wire.PATH_CONTROL), parts):
        for name, a in arrays.items():
            if name not in params or a.shape != params[name].shape or not torch.isfinite(a).all():
                raise UnikdError(f"record '{key}': '{name}' is not a finite array shaped like a "
                                 f"parameter")
    return PathMover(*parts)


def window_fingerprint(x: torch.Tensor) -> str:
    """Identifies a node's window set (the teacher's cached outputs belong to one)."""
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


def w_coordinate(w_mean: float, rc: RoundConfig) -> dict[str, torch.Tensor]:
    """The node's mean w over this round's windows as the coordinate s * w of its update
    (wire.TARGET_W; s from shared/privacy/clipping.py): clipped, noised or masked with the
    gradients from here on, by whoever does that in this DP mode."""
    _, scale = w_bounds(w_clip(rc.dp_mode, rc.dp_clip, rc.secagg_clip), rc.w_share)
    return {"w": torch.tensor([scale * w_mean], dtype=torch.float32)}


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    device = node_device(context)
    rc, cid, data = node_inputs(msg, context)
    spec = decode_spec(msg.content)
    scored = score_received(msg, context, rc, data, spec) if rc.evaluate else {}
    teacher = cached_teacher(msg, context, rc, data, device)
    prototypes = hint_prototypes(msg.content)
    nets = decode_nets(msg.content, device)
    mover = path_mover(msg.content, nets)  # fed.local_path=preconditioned; else None
    if rc.bn_policy == "local" and "bn-local" in context.state:
        nets.student.load_state_dict(from_record(context.state["bn-local"]), strict=False)
    if rc.dp_mode == "record":  # per-window DP-SGD: no BN statistics, no losses leave the node
        secret = node_secret(node_of(context), context.state)
        count = released_count(data.num_examples, rc, cid, secret, context.state)
        budget.charge(context, rc, "train", LocalSteps(rc.local_steps).dp_steps(),
                      sampling_rate(rc.batch_size, count))
        grads = to_cpu(record_unikd_round(nets, data.x_train, teacher, rc, cid, secret, count,
                                          prototypes, mover))
        buffers, metrics = None, {}
    else:
        budget.charge(context, rc, "train")  # refused where the operator set a budget
        grads, buffers, metrics = to_cpu(unikd_round(nets, data.x_train, teacher, rc, cid,
                                                     prototypes, mover))
        if rc.w_share is not None:  # the mean w as a coordinate of the private update
            grads["target_w"] = w_coordinate(metrics["w_mean"], rc)
        secret = node_secret(node_of(context), context.state) if rc.dp_mode == "local" else None
        grads, buffers = privatize(grads, buffers, msg.content[wire.STUDENT], rc, cid,
                                   secret)  # local DP: noise keyed by the node's secret
        if rc.dp_mode == "local":  # the cloud is not trusted: no un-noised loss or w_mean
            metrics = {}
        count = data.num_examples
    if rc.bn_policy == "local":
        context.state["bn-local"] = to_record(bn_buffers(nets.student, ""))
    if rc.secagg:  # secure aggregation: keep the update, send public keys only (stage 0)
        reply = secagg.advertise(context.state, rc, cid, grads)
        reply[wire.METRICS] = MetricRecord({"client-id": cid, "round": rc.round})
        wire.check_outgoing(reply, wire.expected_secagg_shapes(wire.SECAGG_KEYS),
                            wire.SECAGG_METRICS)
        return Message(reply, reply_to=msg)
    reply = RecordDict({
        wire.STUDENT_GRAD: to_record(grads["student"]),
        wire.D_F_GRAD: to_record(grads["d_f"]),
        wire.D_D_GRAD: to_record(grads["d_d"]),
        wire.METRICS: MetricRecord({"client-id": cid, "round": rc.round,
                                    "num-examples": count,
                                    "local-steps": rc.local_steps, **metrics, **scored}),
    })
    if "target_w" in grads:
        reply[wire.TARGET_W] = to_record(grads["target_w"])
    if buffers is not None:
        reply[wire.STUDENT_BN] = to_record(buffers)
    wire.check_outgoing(reply, up_shapes(nets), num_classes=spec.classes)
    store = node_of(context).store_path
    if store is not None:  # the service's Status reports the last round
        from client.edge_service.store import record_round

        record_round(store, rc.round)
    return Message(reply, reply_to=msg)


@app.train(wire.action_of(wire.TRAIN_TEACHER))
def train_teacher(msg: Message, context: Context) -> Message:
    """Federated DANN pre-training: the target half of the domain loss on this node's windows."""
    torch.set_num_threads(1)
    rc, cid, data = node_inputs(msg, context, TeacherRoundConfig)
    members = decode_members(msg.content, rc, decode_spec(msg.content), node_device(context))
    movers = member_movers(msg.content, rc, members)  # fed.local_path=preconditioned
    if rc.dp_mode == "record":  # per-window DP-SGD, BN frozen: gradients and the noisy count
        secret = node_secret(node_of(context), context.state)
        count = released_count(data.num_examples, rc, cid, secret, context.state)
        budget.charge(context, rc, "teacher train", teacher_dp_steps(rc.members, rc.local_steps),
                      sampling_rate(rc.batch_size, count))
        grads, buffers, metrics = to_cpu(teacher_round(members, data.x_train, rc, cid,
                                                       (secret, count), movers))
    else:
        budget.charge(context, rc, "teacher train")  # refused where the operator set a budget
        grads, buffers, metrics = to_cpu(teacher_round(members, data.x_train, rc, cid, None,
                                                       movers))
        count = data.num_examples
    reply = RecordDict({
        wire.TEACHER_GRAD: to_record(grads["teacher"]),
        wire.TEACHER_DISC_GRAD: to_record(grads["disc"]),
        wire.METRICS: MetricRecord({"client-id": cid, "round": rc.round,
                                    "num-examples": count, **metrics}),
    })
    if buffers is not None:
        reply[wire.TEACHER_BN] = to_record(buffers)
    wire.check_outgoing(reply, teacher_up_shapes(*members[0], rc.members))
    return Message(reply, reply_to=msg)


def score_received(msg: Message, context: Context, rc: SetupConfig, data, spec: DatasetSpec
                   ) -> dict:
    """The received student's confusion counts on this node's labelled test windows (empty
    where it holds none), on a copy of its own: an evaluation, or a training round that carries
    one (`RoundConfig.evaluate`), scored before anything trains."""
    if data.test is None:
        return {}
    nets = UniKDNets.for_spec(spec).to(node_device(context))
    scored = wire.EVAL_STUDENT if wire.EVAL_STUDENT in msg.content else wire.STUDENT  # EMA on
    load_student_state(nets, from_record(msg.content[scored]))
    adapt_bn(nets, rc, context, data.x_train)
    cm = confusion(data.test.y, predict(nets.student, data.test.x), spec.classes)
    return {"confusion": cm.flatten().tolist()}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received student on this node's labelled test windows: confusion counts only."""
    torch.set_num_threads(1)
    rc, cid, data = node_inputs(msg, context)
    spec = decode_spec(msg.content)
    metrics: dict = {"client-id": cid, "round": rc.round, "num-examples": 0}
    if (scored := score_received(msg, context, rc, data, spec)):
        metrics.update({"num-examples": len(data.test), **scored})
    reply = RecordDict({wire.METRICS: MetricRecord(metrics)})
    wire.check_outgoing(reply, {}, wire.EVAL_METRICS, spec.classes)
    return Message(reply, reply_to=msg)


def adapt_bn(nets: UniKDNets, rc: SetupConfig, context: Context, x_train: torch.Tensor) -> None:
    """This node's BN statistics in a student it evaluates or serves, by `bn_policy`: its own
    kept ones (`local`) or re-estimated on its windows (`reestimate`); `averaged` keeps the
    cloud's. Nothing here leaves the node."""
    if rc.bn_policy == "local" and "bn-local" in context.state:
        nets.student.load_state_dict(from_record(context.state["bn-local"]), strict=False)
    elif rc.bn_policy == "reestimate":
        reestimate_bn(nets.student, x_train)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """How many training windows this node holds (the server sizes its clock with it)."""
    rc, cid, data = node_inputs(msg, context, SetupConfig)
    count = data.num_examples
    if rc.dp_mode == "record":  # the count is released once, with Gaussian noise (accounted)
        count = released_count(count, rc, cid, node_secret(node_of(context), context.state),
                               context.state)
    budget.charge(context, rc, "count query")  # the node's own ledger, where one is set
    metrics = {"client-id": cid, "round": rc.round, "num-examples": count}
    model_dir = node_of(context).model_dir
    if model_dir is not None:  # the cloud re-delivers a student this node missed
        from client.edge_service.delivery import installed_tag

        metrics["model-tag"] = wire.tag_number(installed_tag(model_dir))
    reply = RecordDict({wire.METRICS: MetricRecord(metrics)})
    wire.check_outgoing(reply, {}, wire.TRAIN_METRICS)
    return Message(reply, reply_to=msg)


# ---- secure aggregation stages 1-3 (client/node/secagg.py): keys, shares and masks only
secagg.add_stage_handlers(
    app, secret=lambda context: node_secret(node_of(context), context.state))


def served_student(msg: Message, context: Context, rc: SetupConfig) -> dict[str, torch.Tensor]:
    """The delivered student as this node serves it: with BN statistics adapted exactly as its
    federated evaluation scored it (`adapt_bn`). Its version tag stays the delivered weights'
    hash, so a re-delivery of the same student still installs nothing."""
    state = from_record(msg.content[wire.STUDENT])
    if rc.bn_policy == "averaged":
        return state
    _, _, data = node_inputs(msg, context, SetupConfig)
    nets = UniKDNets.for_spec(decode_spec(msg.content))
    load_student_state(nets, state)
    adapt_bn(nets, rc, context, data.x_train)
    return student_state(nets)


@app.train(wire.action_of(wire.DELIVER))
def deliver(msg: Message, context: Context) -> Message:
    """The run's final student: installed as the next version of this device's edge service
    (node config `model-dir`, the directory `unikd serve --model-dir` serves). A node without
    one installs nothing and answers version 0."""
    torch.set_num_threads(1)
    rc, node = SetupConfig.from_record(msg.content[wire.CONFIG]), node_of(context)
    cid, model_dir, version = node.client_id, node.model_dir, 0
    if model_dir is not None:
        from client.edge_service.delivery import install_delivered

        info = msg.content[wire.DELIVERY]
        try:
            installed = install_delivered(model_dir, served_student(msg, context, rc),
                                          decode_norm(msg.content), decode_spec(msg.content),
                                          rc.round, str(info["tag"]), str(info["run"]))
        except UnikdError as err:
            raise UnikdError(f"client {cid}, round {rc.round}: {err}") from None
        version = installed.version
        log.info("client %d: delivered student %s is version %d of %s%s", cid,
                 str(info["tag"])[:12], version, model_dir, "" if installed.new else
                 " (already installed)")
    reply = RecordDict({wire.METRICS: MetricRecord({"client-id": cid, "round": rc.round,
                                                    "model-version": version})})
    wire.check_outgoing(reply, {}, wire.DELIVER_METRICS)
    return Message(reply, reply_to=msg)
