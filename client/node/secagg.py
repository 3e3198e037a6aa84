"""The edge's side of secure aggregation (SecAgg+-style stages over our own message types).

Stage 0 (`train`): the node computes its update as usual, clips and range-checks it itself
(the cloud cannot reject a masked update), keeps it in its state, and replies with two fresh
X25519 public keys (c: share encryption, s: pairwise masks). No gradient leaves the node.
Stage 1 (`train.secagg_shares`): given every participant's keys and the threshold t, the node
draws a self-mask seed b, Shamir-shares b and its mask key s_sk t-of-n, and sends each peer its
two shares encrypted under AES-GCM with HKDF(X25519(c_sk, c_pk_peer)) (via the cloud).
Stage 2 (`train.secagg_mask`): given the shares addressed to it (the set U1 of nodes that
shared), the node replies y = x + PRG(b) + sum_j ±PRG(s_ij) over U1 in Z_{2^64}.
Stage 3 (`train.secagg_unmask`): given the survivors U2 and the dropped D, the node checks
U2 and D are disjoint, cover U1, |U2| >= t and that it was not asked before this round, then
returns b-shares of survivors and s_sk-shares of dropped nodes, never both for one node.

Distributed DP (fed.dp=central, or fed.dp=record with fed.record_noise=shares, with secure
aggregation): at stage 2 the node adds its share N(0, s^2 / t) of the noise (`noise_share_std`),
so any >= t survivors together carry at least the full noise N(0, s^2) on the sum.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from collections.abc import Callable

from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord,
                      RecordDict)
from flwr.clientapp import ClientApp

from shared.privacy.clipping import clip_update, clip_update_with_w
from shared.privacy.dp_sgd import dp_generator
from shared.protocol import wire
from shared.protocol.records import RoundConfig
from shared.privacy.secagg_math import (SecAggError, agree, clip_and_check, decrypt, encode, encrypt,
                                expand, flatten, new_key, pairwise_mask, private_bytes,
                                public_bytes, split_secret, to_u8)
from shared.clock.seeding import NOISE_SHARE, client_stream

STATE = "secagg-state"  # ConfigRecord: round, ids, threshold, sets, flags
SECRETS = "secagg-secrets"  # ArrayRecord: private keys, self-mask seed, own shares, the update
PEER_KEYS = "secagg-peer-keys"  # ArrayRecord: the participants' public keys
INBOX = "secagg-inbox"  # ArrayRecord: ciphertexts addressed to this node


def _bytes(rec: ArrayRecord, name: str) -> bytes:
    return rec[name].numpy().tobytes()


def _reply(msg: Message, content: RecordDict, cid: int, rnd: int, shapes: dict) -> Message:
    content[wire.METRICS] = MetricRecord({"client-id": cid, "round": rnd})
    wire.check_outgoing(content, shapes, wire.SECAGG_METRICS)
    return Message(content, reply_to=msg)


def noise_share_std(rc: RoundConfig) -> float:
    """Std of the noise a node's 1/t share scales (it adds N(0, std^2 / t)); 0 = no share.

    Client-level DP (`central`): z C on the clipped update, the central mechanism's. Record DP
    with shares: z C / B, one DP-SGD step's noise on the sum of clipped window gradients divided
    by the batch size B, the public divisor every node uses (record_dp._dp_step).
    """
    if rc.dp_mode == "central":
        return rc.dp_noise * rc.secagg_clip
    if rc.dp_mode == "record" and rc.dp_shares:
        return rc.dp_noise * rc.dp_clip / rc.batch_size
    return 0.0


def update_vector(grads: dict[str, dict[str, torch.Tensor]]) -> np.ndarray:
    """A node's update (gradients by network, and the mean w's coordinate where the round
    asks for it: `target_w`) as the one vector it masks, in wire-record order (the w coordinate
    last: "target.w" sorts after the gradient records; server/fed/secagg.py `layout_of`)."""
    records = {wire.STUDENT_GRAD: grads["student"], wire.D_F_GRAD: grads["d_f"],
               wire.D_D_GRAD: grads["d_d"]}
    if "target_w" in grads:
        records[wire.TARGET_W] = grads["target_w"]
    vec, _ = flatten(records)
    return vec


def advertise(state: RecordDict, rc: RoundConfig, cid: int,
              grads: dict[str, dict[str, torch.Tensor]]) -> RecordDict:
    """Stage 0: keep the clipped update, return the public keys (the `secagg.keys` record).

    With the mean w's coordinate (`rc.w_share`) and an update nobody clipped yet (no DP, or
    central DP whose clip is this one): the gradients are clipped to sqrt(1 - share) C and the
    coordinate s w (s = sqrt(share) C) is kept whole, so the sum carries the exact sum of the
    nodes' w to fixed-point precision. Central DP with `dp_clip_scope: per-network` clips
    each network to C / sqrt(3) here (the whole within C). Under local and record DP the
    update, coordinate included, was clipped and noised already; here C is only the range
    bound, as without it."""
    per_network = rc.dp_mode == "central" and rc.dp_clip_scope == "per-network"
    if "target_w" in grads and rc.dp_mode in ("off", "central"):
        grads, _ = clip_update_with_w(grads, "target_w", rc.secagg_clip, rc.w_share, per_network)
    elif per_network:  # the central mechanism's clipping, done here where the update is seen
        grads, _ = clip_update(grads, rc.secagg_clip, per_network=True)
    vec, _ = clip_and_check(update_vector(grads), rc.secagg_clip)
    c_key, s_key = new_key(), new_key()
    state[SECRETS] = ArrayRecord({"c_sk": Array(to_u8(private_bytes(c_key))),
                                  "s_sk": Array(to_u8(private_bytes(s_key))),
                                  "x": Array(vec.astype(np.float64))})
    state[STATE] = ConfigRecord({"round": rc.round, "client": cid, "clip": rc.secagg_clip,
                                 "bits": rc.secagg_bits, "seed": rc.seed,
                                 "share_std": noise_share_std(rc), "unmasked": False})
    return RecordDict({wire.SECAGG_KEYS: ArrayRecord({
        "c_pk": Array(to_u8(public_bytes(c_key))), "s_pk": Array(to_u8(public_bytes(s_key)))})})


def _own_state(state: RecordDict, cfg: ConfigRecord) -> ConfigRecord:
    if STATE not in state or state[STATE]["round"] != cfg["round"]:
        raise SecAggError(f"no secure-aggregation state for round {cfg['round']}")
    return state[STATE]


def handle_shares(msg: Message, state: RecordDict, me: int) -> Message:
    """Stage 1: Shamir-share b and s_sk among the participants, encrypt each peer's pair."""
    cfg = msg.content[wire.SECAGG_CONFIG]
    st = _own_state(state, cfg)
    participants = [int(p) for p in cfg["participants"]]
    t, rnd = int(cfg["threshold"]), int(cfg["round"])
    n = len(participants)
    if me not in participants or len(set(participants)) != n:
        raise SecAggError("the participant list is malformed or omits this node")
    if not (n // 2 < t <= n):
        raise SecAggError(f"threshold {t} of {n} participants: must be a majority")
    peers = msg.content[wire.SECAGG_PEERS]
    secrets = state[SECRETS]
    b = os.urandom(32)
    b_shares = split_secret(b, t, n)
    sk_shares = split_secret(_bytes(secrets, "s_sk"), t, n)
    out = {}
    for k, p in enumerate(participants):
        if p == me:
            secrets["b"] = Array(to_u8(b))
            secrets["own.b"] = Array(to_u8(b_shares[k]))
            secrets["own.sk"] = Array(to_u8(sk_shares[k]))
            continue
        key = agree(_bytes(secrets, "c_sk"), _bytes(peers, f"{p}.c_pk"), "enc", rnd)
        blob = encrypt(key, b_shares[k] + sk_shares[k], f"{rnd}|{me}|{p}".encode())
        out[f"to.{p}"] = Array(to_u8(blob))
    state[PEER_KEYS] = ArrayRecord({k: peers[k] for k in peers.keys()})
    st["participants"], st["threshold"] = participants, t
    return _reply(msg, RecordDict({wire.SECAGG_SHARES: ArrayRecord(out)}), int(st["client"]),
                  rnd, wire.expected_secagg_shapes(wire.SECAGG_SHARES,
                                                   [p for p in participants if p != me]))


def handle_mask(msg: Message, state: RecordDict, me: int, secret: bytes | None) -> Message:
    """Stage 2: y = encode(x [+ noise share]) + PRG(b) + sum of pairwise masks over U1."""
    cfg = msg.content[wire.SECAGG_CONFIG]
    st = _own_state(state, cfg)
    rnd, t = int(cfg["round"]), int(st["threshold"])
    u1 = [int(p) for p in cfg["shared"]]
    if me not in u1 or not set(u1) <= set(int(p) for p in st["participants"]) or len(u1) < t:
        raise SecAggError(f"U1 of {len(u1)} nodes: not a superset of the threshold {t} "
                          f"containing this node")
    inbox = msg.content[wire.SECAGG_INBOX]
    if {f"from.{p}" for p in u1 if p != me} != set(inbox.keys()):
        raise SecAggError("the inbox does not hold exactly one share from every other node of U1")
    state[INBOX] = ArrayRecord({k: inbox[k] for k in inbox.keys()})
    st["shared"] = u1
    secrets, peers = state[SECRETS], state[PEER_KEYS]
    x = secrets["x"].numpy().astype(np.float64)
    if float(st["share_std"]) > 0:  # distributed DP: this node's 1/t share of the noise
        std = float(st["share_std"]) / np.sqrt(t)
        gen = dp_generator(int(st["seed"]), client_stream(int(st["client"])), rnd,
                           NOISE_SHARE.number(), secret)
        x = x + torch.randn(len(x), generator=gen, dtype=torch.float64).numpy() * std
    y = encode(x, float(st["clip"]), int(st["bits"]))
    y = y + expand(_bytes(secrets, "b"), len(y), "self")
    s_sk = _bytes(secrets, "s_sk")
    for p in u1:
        if p != me:
            y = y + pairwise_mask(s_sk, _bytes(peers, f"{p}.s_pk"), me, p, rnd, len(y))
    return _reply(msg, RecordDict({wire.SECAGG_MASKED: ArrayRecord({"y": Array(y)})}),
                  int(st["client"]), rnd, wire.expected_secagg_shapes(wire.SECAGG_MASKED,
                                                                     length=len(y)))


def handle_unmask(msg: Message, state: RecordDict, me: int) -> Message:
    """Stage 3: b-shares of survivors, s_sk-shares of dropped nodes; checks first."""
    cfg = msg.content[wire.SECAGG_CONFIG]
    st = _own_state(state, cfg)
    rnd, t = int(cfg["round"]), int(st["threshold"])
    survivors = [int(p) for p in cfg["survivors"]]
    dropped = [int(p) for p in cfg["dropped"]]
    u1 = {int(p) for p in st["shared"]}
    if st["unmasked"]:
        raise SecAggError(f"round {rnd}: unmasking was already answered; refused")
    if set(survivors) & set(dropped):
        raise SecAggError("survivors and dropped nodes overlap; refused")
    if set(survivors) | set(dropped) != u1 or len(survivors) < t or me not in survivors:
        raise SecAggError(f"{len(survivors)} survivors + {len(dropped)} dropped do not "
                          f"partition U1 with >= {t} survivors including this node; refused")
    st["unmasked"] = True
    secrets, inbox = state[SECRETS], state[INBOX]
    out = {}
    for p in [*survivors, *dropped]:
        if p == me:
            share_b, share_sk = _bytes(secrets, "own.b"), _bytes(secrets, "own.sk")
        else:
            key = agree(_bytes(secrets, "c_sk"), _bytes(state[PEER_KEYS], f"{p}.c_pk"),
                        "enc", rnd)
            plain = decrypt(key, _bytes(inbox, f"from.{p}"), f"{rnd}|{p}|{me}".encode())
            share_b, share_sk = plain[:wire.SHARE_BYTES], plain[wire.SHARE_BYTES:]
        if p in survivors:
            out[f"b.{p}"] = Array(to_u8(share_b))
        else:
            out[f"sk.{p}"] = Array(to_u8(share_sk))
    return _reply(msg, RecordDict({wire.SECAGG_UNMASK: ArrayRecord(out)}), int(st["client"]),
                  rnd, wire.expected_secagg_shapes(wire.SECAGG_UNMASK, sorted(u1)))


def add_stage_handlers(app: ClientApp,
                       secret: Callable[[Context], bytes | None] = lambda context: None) -> None:
    """Register stages 1-3 (shares, mask, unmask) on `app`. `secret(context)` keys the node's
    distributed-noise share (None: seed-only draws, for simulations and tests)."""

    @app.train(wire.action_of(wire.SECAGG_SHARES_TYPE))
    def shares(msg: Message, context: Context) -> Message:
        return handle_shares(msg, context.state, context.node_id)

    @app.train(wire.action_of(wire.SECAGG_MASK_TYPE))
    def mask(msg: Message, context: Context) -> Message:
        return handle_mask(msg, context.state, context.node_id, secret(context))

    @app.train(wire.action_of(wire.SECAGG_UNMASK_TYPE))
    def unmask(msg: Message, context: Context) -> Message:
        return handle_unmask(msg, context.state, context.node_id)
