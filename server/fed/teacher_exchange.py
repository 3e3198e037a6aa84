"""One federated DANN teacher round's exchange, whichever members it carries (server/fed/teacher.py
member after member, server/fed/teacher_joint.py every member at once): send, charge record DP,
check the replies, and keep the updates that may count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import RecordDict

from server.fed.aggregate import ClientUpdate, split_replies
from server.fed.transport import Sender
from shared.protocol import wire
from shared.protocol.reply_shapes import Shapes

log = logging.getLogger(__name__)
RECORDS = (wire.TEACHER_GRAD, wire.TEACHER_DISC_GRAD, wire.TEACHER_BN)  # a teacher reply's


def teacher_updates(send: Sender, nodes: list[int], content: RecordDict, rnd: int,
                    shapes: Shapes, min_clients: int, privacy=None,
                    charge: tuple[int, int] = (0, 0), meanwhile: Callable[[], None] = lambda: None
                    ) -> list[ClientUpdate] | None:
    """The round's valid updates, or None when fewer than `min_clients` came (the round is
    skipped: nothing moves). `privacy` (a RecordLedger, record DP only): every node asked is
    charged `charge` = (ledger round, DP-SGD steps), the replies carry gradients only and
    are weighted by the released counts. `meanwhile` runs after the messages went and before
    the replies are collected: the cloud's own work, done while the nodes do theirs."""
    collect = send.start({n: content for n in nodes}, wire.TRAIN_TEACHER, rnd)
    meanwhile()
    replies = collect()
    if privacy is not None:  # every node asked may have spent its steps
        privacy.charge("teacher", charge[0], sorted(privacy.plan.counts), charge[1])
    updates, _ = split_replies(replies, rnd, shapes,
                               RECORDS[:2] if privacy is not None else RECORDS)
    if privacy is not None:  # weights: the released counts; no BN statistics from nodes
        updates = [ClientUpdate(u.client, privacy.plan.counts.get(u.client, 1),
                                {**u.arrays, wire.TEACHER_BN: {}}, {}) for u in updates]
    if len(updates) < min_clients:  # nothing moves, BN statistics included
        log.warning("teacher round %d: %d valid replies < min_clients; skipped", rnd,
                    len(updates))
        return None
    return updates


def target_domain_loss(updates: list[ClientUpdate]) -> float | None:
    """The nodes' target half of the domain loss (`teacher-dann-dom`), weighted by windows;
    None where no node reports it (record DP: a node's replies carry gradients only)."""
    reported = [(u.metrics[wire.TEACHER_DANN_DOM], u.num_examples) for u in updates
                if wire.TEACHER_DANN_DOM in u.metrics]
    total = sum(n for _, n in reported)
    return sum(v * n for v, n in reported) / total if total else None
