"""Issue 25, item 6: the expected cross KD's mean w under DP and secure aggregation.

The cloud's half of beta * mean_t(w) * KD_s needs the clients' mean confusion weight. Under
`fed.dp` and `fed.secure_aggregation` it rides as one coordinate s * w of the update that is
clipped, noised and summed privately (shared/privacy/clipping.py, dp_sgd.py): these tests check
the per-window and per-update bounds with that coordinate, that the secure sum gives the cloud
the nodes' plain mean w to quantisation precision, and whole federations with the HAR recipe's
loss behaviour (reference_compat + cross_kd=expected) under record DP + secure aggregation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from client.node import secagg
from server.fed.harness import InProcessGrid, load_component
from shared.errors import UnikdError
from shared.privacy.clipping import clip_update_with_w, update_norm, w_bounds
from shared.privacy.dp_sgd import BOUNDED, clipped_sum, dp_sgd_gradient
from shared.protocol import wire

RECIPE = ["distill.reference_compat=true", "distill.cross_kd=expected"]
TINY = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", "fed.clients=3",
        "fed.rounds=2", "fed.teacher_placement=source-only", *RECIPE]


# ---------------------------------------------------------------- the bounds


def _per_sample(b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"nets.student.a": 5 * torch.randn(b, 7, generator=g),
            "nets.d_f.b": 3 * torch.randn(b, 4, generator=g),
            "nets.d_d.c": torch.randn(b, 2, generator=g) * torch.tensor([0.01] * 3 + [9] * 3)[:, None]}


def _group(name: str) -> str:
    return name.split(".")[1]


@pytest.mark.parametrize("group_of", [None, _group], ids=["joint", "per-network"])
@pytest.mark.parametrize("share", [0.1, 0.5])
def test_every_windows_vector_with_its_w_stays_within_the_clip(group_of, share):
    """Record DP: window i's vector (its clipped gradient, sqrt(share) C w_i) has norm <= C,
    the accountant's sensitivity, with w_i clamped into [0, 1] and never clipped itself."""
    per = _per_sample()
    w = torch.tensor([0.0, 0.3, 1.0, 0.7, 1.5, -0.2])  # the last two outside: clamped
    clip = 1.3
    grad_clip, scale = w_bounds(clip, share)
    assert grad_clip**2 + scale**2 == pytest.approx(clip**2)
    total, _ = clipped_sum(per, clip, group_of, w, share)
    rebuilt = {k: torch.zeros_like(v[0]) for k, v in per.items()}
    for i in range(len(w)):
        one, _ = clipped_sum({k: v[i:i + 1] for k, v in per.items()}, clip, group_of,
                             w[i:i + 1], share)
        coord = one.pop(BOUNDED)
        assert float(coord) == pytest.approx(scale * min(1.0, max(0.0, float(w[i]))))
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in one.values())
                         + float(coord) ** 2)
        assert norm <= clip * (1 + 1e-6), (i, norm)  # float32 gradients
        for k in rebuilt:
            rebuilt[k] += one[k]
    assert float(total[BOUNDED]) == pytest.approx(scale * 3.0)  # 0 + .3 + 1 + .7 + 1 + 0
    for k in rebuilt:
        torch.testing.assert_close(total[k], rebuilt[k])
    # the large windows are clipped to the gradient bound, not to C: room left for w
    big = {k: v[4:5] for k, v in per.items()}
    assert update_norm({"g": clipped_sum(big, clip, None)[0]}) == pytest.approx(clip)
    assert update_norm({"g": clipped_sum(big, clip, None, w[4:5], share)[0]}) \
        == pytest.approx(math.sqrt(grad_clip**2 + scale**2))


class _WLoss(torch.nn.Module):
    """A loss module as record_dp.TargetLoss is: (loss, w of the window) with `with_w`."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.with_w = True

    def forward(self, x):
        z = self.lin(x)
        p = z.softmax(1)
        loss = 50 * z.pow(2).sum()
        return (loss, (1 - (p[:, 0] - p[:, 1]).abs()).mean()) if self.with_w else loss


def test_the_dp_sgd_step_releases_the_w_coordinate_with_the_same_noise():
    """The w coordinate gets N(0, (z C)^2) and the expected-batch divisor like every gradient
    coordinate, drawn after them: the parameters' noise is the draw it is without w."""
    torch.manual_seed(0)
    loss = _WLoss()
    x = torch.randn(16, 3)

    def step(z, with_w):
        loss.with_w = with_w
        return dp_sgd_gradient(loss, (x,), 1.0, 1.0, z, 16.0, torch.Generator().manual_seed(1),
                               torch.Generator().manual_seed(2), share=0.1 if with_w else 0.0)[0]

    quiet = step(0.0, True)
    with torch.no_grad():
        p = loss.lin(x).softmax(1)
        w = 1 - (p[:, 0] - p[:, 1]).abs()
    assert float(quiet[BOUNDED]) / w_bounds(1.0, 0.1)[1] == pytest.approx(float(w.mean()))
    noisy = step(3.0, True)
    plain_quiet, plain_noisy = step(0.0, False), step(3.0, False)
    assert set(plain_noisy) == set(noisy) - {BOUNDED}
    for k in plain_noisy:  # clipping differs (0.949 C vs C), the noise draws do not
        torch.testing.assert_close(noisy[k] - quiet[k], plain_noisy[k] - plain_quiet[k])
    assert float(noisy[BOUNDED] - quiet[BOUNDED]) != 0.0  # noised too


def test_client_level_clip_keeps_w_whole_within_the_bound():
    """Client-level DP and secure aggregation: the gradient records go to sqrt(1 - share) C,
    the coordinate s * w stays (clamped into [0, s]); the whole vector within C."""
    g = torch.Generator().manual_seed(3)
    update = {"student": {"a": 10 * torch.randn(50, generator=g)},
              "d_f": {"b": torch.randn(5, generator=g)}}
    clip, share = 2.0, 0.1
    _, s = w_bounds(clip, share)
    for w in (0.0, 0.42, 1.0):
        out, norm = clip_update_with_w({**update, "target_w": {"w": torch.tensor([s * w])}},
                                       "target_w", clip, share)
        assert float(out["target_w"]["w"]) == pytest.approx(s * w)
        assert update_norm(out) <= clip * (1 + 1e-6)
        assert norm > clip
    out, _ = clip_update_with_w({**update, "target_w": {"w": torch.tensor([5 * s])}},
                                "target_w", clip, share)
    assert float(out["target_w"]["w"]) == pytest.approx(s)  # a node cannot exceed it


# ---------------------------------------------------------------- the wire


def test_the_manifest_admits_one_w_number_and_nothing_per_window():
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    from shared.protocol.records import to_record
    from shared.protocol.reply_shapes import up_shapes
    from shared.unikd.engine import UniKDNets
    from shared.data.datasets import get_spec

    shapes = up_shapes(UniKDNets.for_spec(get_spec("SYNTH")))
    assert shapes[wire.TARGET_W] == {"w": (1,)}
    ok = RecordDict({wire.TARGET_W: to_record({"w": torch.tensor([0.3])}),
                     wire.METRICS: MetricRecord({"client-id": 0, "round": 1})})
    wire.check_outgoing(ok, shapes)
    for bad in ({"w": torch.rand(32)}, {"w": torch.rand(1, 1)}, {"w_i": torch.tensor([0.3])},
                {"w": torch.tensor([1], dtype=torch.int64)}):
        content = RecordDict({wire.TARGET_W: to_record(bad)})
        with pytest.raises(wire.WireViolation):
            wire.check_outgoing(content, shapes)
    assert isinstance(ok[wire.TARGET_W], ArrayRecord)


# ---------------------------------------------------------------- the refusals


def _cfg(sets):
    from shared.config import load_config

    return load_config(overrides=sets)


@pytest.mark.parametrize("private", [["fed.dp=record"], ["fed.secure_aggregation=true"],
                                     ["fed.dp=central"], ["fed.dp=local"]])
def test_expected_cross_kd_is_no_longer_refused_and_paired_is_named(private):
    from server.fed.rounds import check_cross_kd

    check_cross_kd(_cfg([*RECIPE, *private]))  # the recommended loss behaviour: accepted
    with pytest.raises(UnikdError, match="distill.cross_kd=paired with distill.target_kd=false"):
        check_cross_kd(_cfg(["distill.target_kd=false", "distill.cross_kd=paired", *private]))
    check_cross_kd(_cfg(["distill.target_kd=false", "distill.cross_kd=paired"]))  # warning only


# ---------------------------------------------------------------- whole federations


def _federate(sets, monkeypatch=None):
    from server.fed.rounds import federate

    return federate(InProcessGrid(load_component("client.node.client_app:app"), 3),
                    _cfg(sets), progress=False)


def test_secure_aggregation_gives_the_cloud_the_nodes_plain_mean_w(monkeypatch):
    """No DP, secure aggregation: the w the cloud applies each round is the survivors' plain
    mean of their own mean w, to fixed-point precision (C / 2^(bits+1) per coordinate)."""
    seen: dict[int, dict[int, float]] = {}
    real = secagg.advertise

    def spy(state, rc, cid, grads):
        assert rc.w_share == pytest.approx(0.1)
        _, s = w_bounds(rc.secagg_clip, rc.w_share)
        seen.setdefault(rc.round, {})[cid] = float(grads["target_w"]["w"]) / s
        return real(state, rc, cid, grads)

    monkeypatch.setattr(secagg, "advertise", spy)
    result = _federate([*TINY, "fed.secure_aggregation=true"])
    assert len(result.rounds) == 2
    bound = 0.5 / 2**24 / math.sqrt(0.1) + 1e-7  # rounding / s, plus float32 of s * w
    for row in result.rounds:
        plain = np.mean(list(seen[row["round"]].values()))
        assert 0.05 < plain < 0.999  # a real mean, not a clamped edge
        assert abs(row["w_mean_private"] - plain) <= bound, (row["w_mean_private"], plain)


def test_record_dp_secure_aggregation_and_the_recipe_end_to_end(tmp_path, monkeypatch):
    """fed.dp=record + fed.secure_aggregation + reference_compat + cross_kd=expected: runs with
    no extra flag, the ledger within epsilon, only masked vectors and keys leave the nodes, and
    the run folder states the w coordinate's derived values."""
    import server.fed.run as run_mod
    from server.fed.run import run_federate

    taps: list = []
    real_grid = InProcessGrid
    monkeypatch.setattr(run_mod, "InProcessGrid", lambda app, n, **kw: real_grid(
        app, n, tap=lambda q, r: taps.append((q.metadata.message_type, r)), **kw))
    cfg = _cfg([*TINY, "fed.dp=record", "fed.dp_epsilon=8", "fed.secure_aggregation=true",
                "fed.workers=1", f"out={tmp_path}"])  # 1: the sequential grid, patched above
    run_dir = run_federate(cfg, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dp"] == "record" and 0 < results["epsilon"] <= 8.0 + 1e-3
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["w_coordinate"]["gradient_bound"] == pytest.approx(math.sqrt(0.9))
    assert privacy["w_coordinate"]["w_scale"] == pytest.approx(math.sqrt(0.1))
    import csv

    rows = list(csv.DictReader((run_dir / "rounds.csv").open()))
    assert len(rows) == 2 and all(0.0 <= float(r["w_mean_private"]) <= 1.0 for r in rows)
    for mtype, r in taps:
        assert not r.has_error(), (mtype, r.error.reason)
        assert not set(r.content.keys()) & {*wire.W_UPDATE_KEYS, wire.STUDENT_BN}, mtype
    assert any(t == wire.SECAGG_MASK_TYPE for t, _ in taps)


def test_local_dp_sends_the_mean_w_only_inside_its_noised_update(monkeypatch):
    """fed.dp=local (untrusted cloud) with the recipe: the reply carries `target.w` (noised with
    the update) and no un-noised loss or w_mean metric."""
    from server.fed import rounds as rounds_mod
    from server.fed.rounds import federate

    replies: list = []
    grid = InProcessGrid(load_component("client.node.client_app:app"), 3,
                         tap=lambda q, r: replies.append((q.metadata.message_type, r)))
    result = federate(grid, _cfg([*TINY, "fed.dp=local", "fed.dp_epsilon=8"]), progress=False)
    assert len(result.rounds) == 2 and all("w_mean_private" in r for r in result.rounds)
    trains = [r for t, r in replies if t == wire.TRAIN]
    assert trains
    for r in trains:
        assert r.content[wire.TARGET_W]["w"].numpy().shape == (1,)
        assert set(r.content[wire.METRICS].keys()) == {"client-id", "round", "num-examples",
                                                       "local-steps"}
    del rounds_mod
