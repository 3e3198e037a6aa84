"""Pure reply checks and aggregation: no Grid, no I/O (tested on in-memory records).

A reply is refused, logged with its client and round, and never aggregated, when it carries an
error, misses a record, has a wrong shape, NaN or Inf, is for another round, or repeats a client.
Valid replies are sorted by client id before summing, so the order of arrival never matters.
Replies arrive as CPU tensors and are checked and averaged there; `add_grads` and `compose_bn`
move the results to the device of the parameters and buffers they update.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from flwr.app import Message

from shared.protocol import wire
from shared.errors import ReplyError
from shared.unikd.compute import on
from shared.unikd.metrics import lower_median
from shared.privacy.clipping import update_norm
from shared.protocol.records import from_record

log = logging.getLogger(__name__)


@dataclass
class ClientUpdate:
    client: int
    num_examples: int
    arrays: dict[str, dict[str, torch.Tensor]]  # record key -> name -> tensor
    metrics: dict[str, float | int | list]


def parse_reply(msg: Message, rnd: int, shapes: dict[str, dict[str, tuple[int, ...]]],
                records: tuple[str, ...], echo: Mapping[str, int] = MappingProxyType({})
                ) -> ClientUpdate:
    """One reply -> ClientUpdate, or ReplyError saying what was expected and what was found.

    `echo`: metrics the reply must repeat as the cloud asked (a train reply's `local-steps`: a
    node that ran another number of local steps sent a pseudo-gradient of another scale)."""
    node = msg.metadata.src_node_id
    if msg.has_error():
        raise ReplyError(f"node {node}", rnd, f"client error: {msg.error.reason}")
    content = msg.content
    if wire.METRICS not in content:
        raise ReplyError(f"node {node}", rnd, "reply has no metrics record")
    metrics = dict(content[wire.METRICS].items())
    client = metrics.get("client-id")
    if not isinstance(client, int) or isinstance(client, bool) or client < 0:
        raise ReplyError(f"node {node}", rnd, f"client-id must be an int >= 0, found {client!r}")
    if metrics.get("round") != rnd:
        raise ReplyError(client, rnd, f"stale reply for round {metrics.get('round')}")
    for name, asked in echo.items():
        if metrics.get(name) != asked:
            raise ReplyError(client, rnd, f"metric '{name}' is {metrics.get(name)!r}, the round "
                                          f"asked for {asked}; update dropped")
    n = metrics.get("num-examples")
    if not isinstance(n, int) or n < 0:
        raise ReplyError(client, rnd, f"num-examples must be a count >= 0, found {n!r}")
    arrays: dict[str, dict[str, torch.Tensor]] = {}
    for key in records:
        if key not in content:
            raise ReplyError(client, rnd, f"missing record '{key}'")
        tensors = from_record(content[key])
        expected = shapes[key]
        if set(tensors) != set(expected):
            missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
            raise ReplyError(client, rnd, f"record '{key}': missing {sorted(missing)[:3]}, "
                                          f"unexpected {sorted(extra)[:3]}; update dropped")
        for name, t in tensors.items():
            if tuple(t.shape) != expected[name]:
                raise ReplyError(client, rnd, f"'{key}/{name}' shape {list(t.shape)}, expected "
                                              f"{list(expected[name])}; update dropped")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ReplyError(client, rnd, f"'{key}/{name}' holds NaN or Inf; update dropped")
        arrays[key] = tensors
    for name, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ReplyError(client, rnd, f"metric '{name}' is {v}; update dropped")
    return ClientUpdate(client, n, arrays, metrics)


def split_replies(replies: list[Message], rnd: int, shapes: dict, records: tuple[str, ...],
                  echo: Mapping[str, int] = MappingProxyType({})
                  ) -> tuple[list[ClientUpdate], list[ReplyError]]:
    valid: list[ClientUpdate] = []
    errors: list[ReplyError] = []
    for msg in replies:
        try:
            valid.append(parse_reply(msg, rnd, shapes, records, echo))
        except ReplyError as err:
            errors.append(err)
    seen: set[int] = set()
    unique = []
    for u in sorted(valid, key=lambda u: u.client):
        if u.client in seen:
            errors.append(ReplyError(u.client, rnd, "second reply from the same client; dropped"))
            continue
        seen.add(u.client)
        unique.append(u)
    for err in errors:
        log.warning("%s", err)
    return unique, errors


def weighted_mean(updates: list[ClientUpdate], key: str) -> dict[str, torch.Tensor]:
    """sum_k n_k/N * x_k in client-id order (float buffers); counts keep their dtype."""
    total = sum(u.num_examples for u in updates)
    out: dict[str, torch.Tensor] = {}
    for u in updates:
        w = u.num_examples / total if total else 1.0 / len(updates)
        for name, t in u.arrays[key].items():
            v = t * w if t.is_floating_point() else t.double() * w
            out[name] = v if name not in out else out[name] + v
    return out


def add_grads(params: dict[str, torch.nn.Parameter], mean: dict[str, torch.Tensor]) -> None:
    """p.grad += the clients' mean gradient (p.grad holds the cloud's source gradient)."""
    for name, p in params.items():
        if name in mean:
            g = on(p.device, mean[name]).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g


@torch.no_grad()
def compose_bn(module: torch.nn.Module, before: dict[str, torch.Tensor],
               clients_mean: dict[str, torch.Tensor], prefix: str = "",
               target_passes: int = 1) -> None:
    """BN running stats as if the source batch came first and the target batch(es) second.

    With EMA momentum m, centralized gives r2 = (1-m) r_src + m mu_trg, and a client that
    started from r0 returns r_c = (1-m) r0 + m mu_trg, so r2 = r_c + (1-m) (r_src - r0);
    after k target passes per step the factor is (1-m)^k. `module`'s buffers hold r_src (the
    cloud already ran its source forward).
    """
    modules = dict(module.named_modules())
    for name, buf in module.named_buffers():
        key = prefix + name
        if key not in clients_mean:
            continue
        r0, r_c = on(buf.device, before[key]), on(buf.device, clients_mean[key])
        if name.endswith("num_batches_tracked"):
            buf.copy_(buf + torch.round(r_c - r0.double()).long())
            continue
        m = modules[name.rsplit(".", 1)[0]].momentum
        buf.copy_((r_c + (1 - m) ** target_passes * (buf - r0)).to(buf.dtype))


# ---------------------------------------------------------------- robust aggregation
# "mean" (above: sample-weighted), "trimmed-mean:<f>" (coordinate-wise, the f largest and f
# smallest fraction of the values dropped) or "norm-bounded:<k>" (updates whose gradient norm
# exceeds k x the round's median are rejected and logged, the rest averaged as usual).

def parse_aggregator(spec: str) -> tuple[str, float]:
    """'mean' | 'trimmed-mean:0.1' | 'norm-bounded:3' -> (kind, parameter); ConfigError if not."""
    from shared.errors import ConfigError

    kind, _, arg = spec.partition(":")
    if kind == "mean" and not arg:
        return kind, 0.0
    if kind in ("trimmed-mean", "norm-bounded"):
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        ok = 0.0 <= value < 0.5 if kind == "trimmed-mean" else value >= 1.0
        if ok:
            return kind, value
    raise ConfigError("fed.aggregator", f"{spec!r}: expected mean, trimmed-mean:<0..0.5) or "
                                        f"norm-bounded:<factor >= 1>")


def grad_norm(update: ClientUpdate) -> float:
    """L2 norm of a client's gradient records taken together (BN statistics excluded)."""
    return update_norm({k: update.arrays[k] for k in wire.GRAD_KEYS})


def reject_outliers(updates: list[ClientUpdate], spec: str, rnd: int,
                    reference: tuple[float, ...] | list[float] = ()
                    ) -> tuple[list[ClientUpdate], list[ReplyError]]:
    """norm-bounded:k drops updates whose norm exceeds k x the median norm; others keep all.

    The median is over this round's norms plus `reference` (the accepted medians of recent
    rounds), so a round where only one or two nodes answered can still refuse a huge update.
    """
    kind, factor = parse_aggregator(spec)
    if kind != "norm-bounded" or not updates or len(updates) + len(reference) < 2:
        return updates, []
    norms = {u.client: grad_norm(u) for u in updates}
    median = lower_median([*norms.values(), *reference])
    kept, errors = [], []
    for u in updates:
        if norms[u.client] > factor * median:
            errors.append(ReplyError(u.client, rnd, f"update norm {norms[u.client]:.4g} exceeds "
                                     f"{factor:g} x the median {median:.4g}; dropped"))
        else:
            kept.append(u)
    for err in errors:
        log.warning("%s", err)
    return kept, errors


def trimmed_mean(updates: list[ClientUpdate], key: str, fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after dropping floor(fraction * n) values at each end (unweighted)."""
    ordered = sorted(updates, key=lambda u: u.client)
    cut = int(math.floor(fraction * len(ordered)))
    out = {}
    for name in ordered[0].arrays[key]:
        stacked = torch.stack([u.arrays[key][name].double() for u in ordered])
        kept = stacked.sort(dim=0).values[cut:len(ordered) - cut]
        out[name] = kept.mean(dim=0).to(ordered[0].arrays[key][name].dtype)
    return out


def robust_combine(updates: list[ClientUpdate], spec: str) -> list[ClientUpdate]:
    """What `Cloud.finish_round` should average: the updates themselves, or one trimmed-mean update.

    The combined update carries the sample-weighted BN mean, so BN composition is unchanged.
    """
    kind, fraction = parse_aggregator(spec)
    if kind != "trimmed-mean" or not updates:
        return updates
    arrays = {k: trimmed_mean(updates, k, fraction) for k in wire.GRAD_KEYS}
    arrays[wire.STUDENT_BN] = weighted_mean(updates, wire.STUDENT_BN)
    return [ClientUpdate(-1, sum(u.num_examples for u in updates) or 1, arrays, {})]


def norm_summary(updates: list[ClientUpdate], spec: str) -> dict[str, float]:
    """{'update_norm_median': ...} of the accepted updates (norm-bounded only; else {})."""
    if parse_aggregator(spec)[0] != "norm-bounded" or not updates:
        return {}
    return {"update_norm_median": lower_median(grad_norm(u) for u in updates)}
