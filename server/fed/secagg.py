"""The cloud's side of secure aggregation: it relays keys and ciphertexts, and learns only the sum.

One UNI-KD round under `fed.secure_aggregation` is four exchanges (client/node/secagg.py has the
node's side of each):

0. `train`: the usual down payload; replies carry `secagg.keys` (two X25519 public keys). U0.
1. `train.secagg_shares`: every participant's keys + the threshold t; replies carry one
   AES-GCM ciphertext of (b-share, s_sk-share) per peer. U1 = nodes that shared with all of U0.
2. `train.secagg_mask`: each node of U1 receives the ciphertexts addressed to it; replies carry
   the masked, quantised update y. U2 = nodes of U1 whose y arrived.
3. `train.secagg_unmask`: survivors U2 and dropped D = U1 - U2 (disjoint, checked here and on
   every node); replies carry b-shares of U2 and s_sk-shares of D. The cloud reconstructs
   each b_i and s_sk_i from t shares (PyCryptodome Shamir), removes the self masks of U2 and
   the pairwise masks between U2 and D, and decodes the sum.

A round whose U0, U1, U2 or set of unmasking replies falls below t is skipped cleanly: nothing
is applied and the round is logged. The cloud sees no individual update, so it cannot check one:
the nodes clip and range-check their own update before masking (shared/privacy/secagg_math.py). The sum
is applied as the uniform mean of the survivors' updates; BN statistics and scalar metrics are
not sent under secure aggregation (the cloud keeps source-only BN statistics). Under the expected
cross KD the nodes' mean w is one more coordinate of the masked vector (wire.TARGET_W, last in
`layout_of`), so the cloud learns the survivors' mean w and nothing else about it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from server.fed.aggregate import ClientUpdate
from shared.protocol import wire
from shared.privacy.secagg_math import (SecAggError, agree, combine_secret, decode, expand,
                                threshold_for, unflatten)

log = logging.getLogger(__name__)
# the run's sender (server.fed.transport.Sender): (contents by node, message type, round) -> replies
Send = Callable[[dict[int, RecordDict], str, int], list[Message]]


def layout_of(shapes: dict[str, dict[str, tuple[int, ...]]], with_w: bool = False) -> list:
    """The flattening order both sides use: gradient records, then names, sorted; with `with_w`
    the mean w's coordinate (wire.TARGET_W) too, which sorts last (client/node/secagg.py)."""
    keys = wire.W_UPDATE_KEYS if with_w else wire.GRAD_KEYS
    return [(rec, name, shapes[rec][name]) for rec in sorted(keys)
            for name in sorted(shapes[rec])]


def _ok(replies: list[Message], record: str, rnd: int) -> dict[int, RecordDict]:
    """Replies of a stage that carry `record` for this round, by node id (errors logged)."""
    out = {}
    for r in replies:
        node = r.metadata.src_node_id
        if r.has_error():
            log.warning("round %d: node %s failed a secure-aggregation stage: %s", rnd, node,
                        r.error.reason)
        elif record in r.content and r.content[wire.METRICS].get("round") == rnd:
            out[node] = r.content
        else:
            log.warning("round %d: node %s sent no '%s'; treated as dropped", rnd, node, record)
    return out


def _bytes(rec: ArrayRecord, name: str) -> bytes:
    return rec[name].numpy().tobytes()


def _config(rnd: int, **sets) -> ConfigRecord:
    return ConfigRecord({"round": rnd, **sets})


def secure_round(send: Send, nodes: list[int], contents: dict[int, RecordDict], rnd: int,
                 fraction: float, clip: float, bits: int,
                 shapes: dict[str, dict[str, tuple[int, ...]]], with_w: bool = False
                 ) -> tuple[ClientUpdate | None, list[Message], dict]:
    """(the survivors' mean update, or None when the round is skipped; all replies; stats)."""
    replies: list[Message] = []
    stats: dict = {"secagg_asked": len(nodes)}

    def stage(targets: dict[int, RecordDict], mtype: str, record: str) -> dict[int, RecordDict]:
        got = send(targets, mtype, rnd)
        replies.extend(got)
        return _ok(got, record, rnd)

    keys = stage(contents, wire.TRAIN, wire.SECAGG_KEYS)
    u0 = sorted(keys)
    t = threshold_for(len(u0), fraction)
    stats.update(secagg_threshold=t, secagg_u0=len(u0))
    if len(u0) < 2:
        return _skip(rnd, f"{len(u0)} node(s) advertised keys; secure aggregation needs >= 2",
                     replies, stats)
    peers = ArrayRecord({f"{n}.{k}": keys[n][wire.SECAGG_KEYS][k] for n in u0
                         for k in ("c_pk", "s_pk")})
    share_cfg = _config(rnd, threshold=t, participants=u0)
    shares = stage({n: RecordDict({wire.SECAGG_PEERS: peers, wire.SECAGG_CONFIG: share_cfg})
                    for n in u0}, wire.SECAGG_SHARES_TYPE, wire.SECAGG_SHARES)
    u1 = sorted(n for n in shares
                if set(shares[n][wire.SECAGG_SHARES].keys()) == {f"to.{p}" for p in u0 if p != n})
    stats["secagg_u1"] = len(u1)
    if len(u1) < t:
        return _skip(rnd, f"{len(u1)} nodes shared keys < threshold {t}", replies, stats)
    mask_cfg = _config(rnd, shared=u1)
    inboxes = {j: RecordDict({
        wire.SECAGG_INBOX: ArrayRecord({f"from.{i}": shares[i][wire.SECAGG_SHARES][f"to.{j}"]
                                        for i in u1 if i != j}),
        wire.SECAGG_CONFIG: mask_cfg}) for j in u1}
    masked = stage(inboxes, wire.SECAGG_MASK_TYPE, wire.SECAGG_MASKED)
    layout = layout_of(shapes, with_w)
    length = sum(int(np.prod(s)) for _, _, s in layout)
    u2 = sorted(n for n in masked if masked[n][wire.SECAGG_MASKED]["y"].shape == (length,))
    dropped = sorted(set(u1) - set(u2))
    stats.update(secagg_u2=len(u2), secagg_dropped=len(dropped))
    if len(u2) < t:
        return _skip(rnd, f"{len(u2)} masked inputs < threshold {t}", replies, stats)
    if set(u2) & set(dropped) or set(u2) | set(dropped) != set(u1):
        raise SecAggError("internal: survivors and dropped sets must partition U1")
    unmask_cfg = _config(rnd, survivors=u2, dropped=dropped)
    answers = stage({n: RecordDict({wire.SECAGG_CONFIG: unmask_cfg}) for n in u2},
                    wire.SECAGG_UNMASK_TYPE, wire.SECAGG_UNMASK)
    if len(answers) < t:
        return _skip(rnd, f"{len(answers)} unmasking replies < threshold {t}", replies, stats)
    try:
        total = unmask_sum({n: masked[n][wire.SECAGG_MASKED]["y"].numpy() for n in u2},
                           {n: answers[n][wire.SECAGG_UNMASK] for n in answers}, u0, dropped,
                           {n: keys[n][wire.SECAGG_KEYS] for n in u0}, t, rnd)
    except SecAggError as err:
        return _skip(rnd, f"unmasking failed: {err}", replies, stats)
    mean = decode(total, clip, bits) / len(u2)
    arrays = unflatten(mean, layout)
    update = ClientUpdate(-1, len(u2), {**arrays, wire.STUDENT_BN: {}}, {})
    return update, replies, stats


def _skip(rnd: int, reason: str, replies: list[Message], stats: dict):
    log.warning("round %d: secure aggregation %s; round skipped", rnd, reason)
    stats["secagg_skipped"] = reason
    return None, replies, stats


def unmask_sum(masked: dict[int, np.ndarray], answers: dict[int, ArrayRecord], u0: list[int],
               dropped: list[int], keys: dict[int, ArrayRecord], t: int, rnd: int) -> np.ndarray:
    """Sum of the survivors' y, minus their self masks, minus their masks with dropped nodes."""
    index = {n: k + 1 for k, n in enumerate(u0)}  # Shamir indices: position among participants
    survivors = sorted(masked)
    length = len(next(iter(masked.values())))
    total = np.zeros(length, dtype=np.uint64)
    for n in survivors:
        total = total + masked[n].astype(np.uint64)
    for i in survivors:
        b = combine_secret({index[j]: _bytes(answers[j], f"b.{i}") for j in answers
                            if f"b.{i}" in answers[j]}, t)
        total = total - expand(b, length, "self")
    for i in dropped:
        sk = combine_secret({index[j]: _bytes(answers[j], f"sk.{i}") for j in answers
                             if f"sk.{i}" in answers[j]}, t)
        for j in survivors:  # node j added +PRG(s_ji) if j < i, -PRG(s_ji) otherwise
            words = expand(agree(sk, _bytes(keys[j], "s_pk"), "mask", rnd), length, "pair")
            total = total - words if j < i else total + words
    return total


def masking_clip(fed) -> float:
    """The L2 bound C the nodes clip to before masking (also the fixed-point scale).

    Under `central` it is the DP clip: the node's clipping is the mechanism's, and the noise
    shares are added after it. Under `local` and `record` the node masks an update that is
    already noised, whose norm is mostly noise (about 2 z C sqrt(d) for local, z C sqrt(d) / B
    for record, d coordinates, expected batch B): re-clipping it to the DP clip would shrink it
    by orders of magnitude, so it gets `fed.secagg_clip` (a range bound, set above that norm),
    as without DP.
    """
    return fed.dp_clip if fed.dp == "central" else fed.secagg_clip


def secure_updates(send: Send, nodes: list[int], contents: dict[int, RecordDict], rnd: int,
                   fed, shapes: dict, with_w: bool = False
                   ) -> tuple[list[ClientUpdate], list[Message], dict]:
    """The round loop's entry point: ([the survivors' mean] or [] when skipped, replies, row).
    `with_w`: the masked vector ends with the nodes' w coordinate (wire.TARGET_W)."""
    clip = masking_clip(fed)
    if fed.aggregator != "mean":
        log.warning("fed.aggregator=%s needs individual updates; under secure aggregation the "
                    "cloud has only the sum", fed.aggregator)
    update, replies, row = secure_round(send, nodes, contents, rnd, fed.secagg_threshold, clip,
                                        fed.secagg_bits, shapes, with_w)
    if update is not None and update.num_examples < fed.min_clients:
        row["secagg_skipped"] = f"{update.num_examples} survivors < fed.min_clients"
        update = None
    return ([update] if update is not None else []), replies, row
