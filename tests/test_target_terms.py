"""The label-free target terms (issue 25): SHOT-IM (`distill.im_weight`) and confident
pseudo-labels on a strong view (`distill.pl_weight`, `distill.pl_threshold`).

Their values on hand-made batches, the augmentations, how `target_terms` adds them (weighted by
beta, nothing at all when off), where the labels come from, and the refusals. That a 1-client
federation with one local step reproduces the centralized trainer with them on is checked in
tests/test_equivalence.py, the wire in tests/test_wire.py, the switches' path in
tests/test_round_settings.py and record DP in tests/test_record_dp.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from server.central.trainer import distill_unikd
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from shared.clock.seeding import augment_generator, client_stream
from shared.config import load_config
from shared.data.datasets import get_spec
from shared.data.scenario import load_scenario
from shared.errors import UnikdError
from shared.unikd import losses
from shared.unikd.augment import jitter, permute_segments, scale, strong_view
from shared.unikd.engine import (KDHparams, StepSchedule, TeacherOut, UniKDNets, target_passes,
                                 target_terms)
from shared.unikd.models import teacher_for

SPEC = get_spec("SYNTH")
SCHED = StepSchedule(beta=0.3, alpha=0.5)


def entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


# ---------------------------------------------------------------- the pure terms


def test_information_maximization_on_a_hand_made_batch():
    # Prepare: window 1 is undecided (1/2, 1/2), window 2 says 3:1 for class 0
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    # Execute
    mean_h = losses.mean_entropy(logits).item()
    marginal_h = losses.marginal_entropy(logits).item()
    im = losses.information_maximization(logits).item()
    # Assert: p_bar = (0.625, 0.375)
    assert mean_h == pytest.approx((entropy([0.5, 0.5]) + entropy([0.75, 0.25])) / 2, abs=1e-12)
    assert marginal_h == pytest.approx(entropy([0.625, 0.375]), abs=1e-12)
    assert im == pytest.approx(mean_h - marginal_h, abs=1e-15)


def test_information_maximization_prefers_confident_and_diverse_predictions():
    diverse = 50.0 * torch.eye(3)  # each window sure, one per class
    collapsed = 50.0 * torch.eye(3)[[0, 0, 0]]  # each window sure, all the same class
    unsure = torch.zeros(3, 3)
    assert losses.information_maximization(diverse).item() == pytest.approx(-math.log(3), abs=1e-6)
    assert losses.information_maximization(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.information_maximization(unsure).item() == pytest.approx(0.0, abs=1e-6)
    # a class no window predicts gives no log(0): finite value and gradient
    z = torch.tensor([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0]], requires_grad=True)
    losses.information_maximization(z).backward()
    assert torch.isfinite(z.grad).all()


def test_confident_labels_and_the_pseudo_label_ce_on_a_hand_made_batch():
    # Prepare: the teacher is sure of window 1 (p = 0.97 for class 1) and not of window 2
    label_logits = torch.tensor([[0.0, math.log(0.97 / 0.03)], [math.log(0.6 / 0.4), 0.0]],
                                requires_grad=True)
    student = torch.tensor([[1.0, -1.0], [0.5, 0.2]], requires_grad=True)
    # Execute
    labels, keep = losses.confident_labels(label_logits, 0.95)
    pl = losses.pseudo_label_ce(student, labels, keep)
    pl.backward()
    # Assert: only window 1 counts, CE towards class 1, divided by the whole batch (2)
    assert labels.tolist() == [1, 0] and keep.tolist() == [1.0, 0.0]
    assert pl.item() == pytest.approx(math.log(1 + math.exp(2.0)) / 2, rel=1e-6)
    assert torch.equal(student.grad[1], torch.zeros(2))  # the dropped window gets nothing
    assert label_logits.grad is None  # the label is a constant
    assert losses.confident_labels(label_logits, 0.0)[1].tolist() == [1.0, 1.0]
    assert losses.confident_labels(label_logits, 0.97 + 1e-4)[1].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- the augmentations


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_segment_permutation_moves_whole_segments_and_all_channels_together():
    x = torch.arange(2 * 3 * 13, dtype=torch.float32).reshape(2, 3, 13)
    y = permute_segments(x, 5, gen(0))
    bounds = [0, 2, 5, 7, 10, 13]  # 13 samples in 5 near-equal pieces
    pieces = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
    for b in range(2):
        src = (y[b, 0] - x[b, 0, 0]).long().tolist()  # the source index of each output sample
        assert sorted(src) == list(range(13))
        found, i = [], 0
        while i < 13:  # the output reads whole pieces, each from its start
            piece = next(p for p in pieces if p[0] == src[i])
            assert src[i:i + len(piece)] == piece
            found.append(piece[0])
            i += len(piece)
        assert sorted(found) == bounds[:-1]
        assert torch.equal(y[b] - y[b, :1], x[b] - x[b, :1])  # channels moved together
    assert torch.equal(permute_segments(x, 1, gen(0)), x)  # one piece: nothing moves


def test_scaling_is_one_factor_per_window_and_channel_and_jitter_is_pointwise_noise():
    x = torch.ones(4, 3, 64)
    s = scale(x, 0.2, gen(1))
    assert torch.equal(s, s[..., :1].expand_as(s)) and not torch.equal(s, x)
    j = jitter(torch.zeros(200, 3, 64), 0.1, gen(2))
    assert abs(j.mean().item()) < 0.002 and j.std().item() == pytest.approx(0.1, rel=0.02)


def test_the_strong_view_is_a_function_of_the_generator_only():
    x = torch.randn(6, SPEC.channels, SPEC.length)
    torch.manual_seed(0)
    a = strong_view(x, augment_generator(3, client_stream(0), 17))
    torch.manual_seed(99)  # the global RNG (dropout masks) plays no part
    b = strong_view(x, augment_generator(3, client_stream(0), 17))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, strong_view(x, augment_generator(3, client_stream(0), 17, sub=1)))
    assert not torch.equal(a, strong_view(x, augment_generator(3, client_stream(1), 17)))


def test_under_vmap_every_window_gets_a_view_of_its_own():
    """Record DP computes per-window gradients with vmap(randomness="different")."""
    x = torch.randn(1, SPEC.channels, SPEC.length).expand(4, -1, -1)
    g = gen(5)
    views = vmap(lambda w: strong_view(w.unsqueeze(0), g).squeeze(0), randomness="different")(x)
    assert views.shape == x.shape
    assert len({tuple(v.flatten()[:8].tolist()) for v in views}) == 4


# ---------------------------------------------------------------- inside target_terms


def nets_without_dropout(seed: int = 0) -> UniKDNets:
    torch.manual_seed(seed)
    nets = UniKDNets.for_spec(SPEC)
    for m in nets.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return nets.train()


def batch(seed: int = 1, n: int = 16) -> tuple[torch.Tensor, TeacherOut]:
    g = gen(seed)
    x = torch.randn(n, SPEC.channels, SPEC.length, generator=g)
    teacher = TeacherOut(torch.randn(n, 128, generator=g),
                         4.0 * torch.randn(n, SPEC.classes, generator=g))
    return x, teacher


def terms(hp: KDHparams, teacher: TeacherOut | None = None, seed: int = 7,
          nets: UniKDNets | None = None) -> dict[str, torch.Tensor]:
    x, t = batch()
    torch.manual_seed(seed)
    return target_terms(nets or nets_without_dropout(), x, t if teacher is None else teacher,
                        SCHED, hp, augment=gen(11))


def test_off_the_terms_run_nothing_and_change_nothing():
    """Weights 0 (whatever the threshold): no key, no draw from either RNG, today's loss."""
    x, teacher = batch()
    runs = []
    for hp in (KDHparams(), KDHparams(pl_threshold=0.3)):
        torch.manual_seed(0)
        nets, aug = UniKDNets.for_spec(SPEC).train(), gen(11)  # with dropout
        torch.manual_seed(7)
        t = target_terms(nets, x, teacher, SCHED, hp, augment=aug)
        runs.append((t["loss"].item(), torch.rand(1).item(), torch.rand(1, generator=aug).item(),
                     nets.student.block1[1].num_batches_tracked.item()))
        assert not {"im", "pl", "pl_kept"} & set(t)
    assert runs[0] == runs[1]
    assert runs[0][2] == torch.rand(1, generator=gen(11)).item()  # the generator never drawn
    assert runs[0][3] == 1  # one student pass over the batch


def test_im_adds_beta_times_its_weight_times_information_maximization():
    off, on = terms(KDHparams()), terms(KDHparams(im_weight=2.0))
    nets = nets_without_dropout()
    x, _ = batch()
    expected = losses.information_maximization(nets.student(x))
    assert on["im"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert on["loss"].item() == pytest.approx(off["loss"].item() + 0.3 * 2.0 * expected.item(),
                                              abs=1e-5)
    assert "pl" not in on


def test_pl_labels_come_from_the_teachers_plain_window_and_train_the_strong_view():
    hp = KDHparams(pl_weight=1.5, pl_threshold=0.6)
    x, teacher = batch()
    off, on = terms(KDHparams()), terms(hp)
    nets = nets_without_dropout()
    labels, keep = losses.confident_labels(teacher.logits, 0.6)
    expected = losses.pseudo_label_ce(nets.student(strong_view(x, gen(11))), labels, keep)
    assert 0 < keep.sum() < len(keep)  # the batch has both kinds
    assert on["pl_kept"].item() == pytest.approx(keep.mean().item())
    assert on["pl"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert on["loss"].item() == pytest.approx(off["loss"].item() + 0.3 * 1.5 * expected.item(),
                                              abs=1e-5)


def test_with_the_teacher_in_the_cloud_the_labels_are_the_students_own():
    hp = KDHparams(pl_weight=1.0, pl_threshold=0.2)
    x, _ = batch()
    nets = nets_without_dropout()
    torch.manual_seed(7)
    got = target_terms(nets, x, None, SCHED, hp, augment=gen(11))
    fresh = nets_without_dropout()
    strong = fresh.student(strong_view(x, gen(11)))
    labels, keep = losses.confident_labels(fresh.student(x), 0.2)
    assert got["pl"].item() == pytest.approx(losses.pseudo_label_ce(strong, labels, keep).item(),
                                             abs=1e-6)
    assert "kd" not in got and "hint" not in got


def test_the_pseudo_label_term_needs_the_steps_generator():
    x, teacher = batch()
    with pytest.raises(ValueError, match="distill.pl_weight"):
        target_terms(nets_without_dropout(), x, teacher, SCHED, KDHparams(pl_weight=1.0))


@pytest.mark.parametrize("hp", [KDHparams(), KDHparams(double_target_forward=True),
                                KDHparams(pl_weight=1.0), KDHparams(im_weight=1.0),
                                KDHparams(pl_weight=1.0, double_target_forward=True)])
def test_target_passes_counts_the_bn_updates_the_cloud_composes(hp):
    nets = nets_without_dropout()
    terms(hp, nets=nets)
    assert nets.student.block1[1].num_batches_tracked.item() == target_passes(hp)


# ---------------------------------------------------------------- federation and refusals

TINY = ["distill.epochs=1", "teacher.epochs=1", "teacher.batch_size=128", "fed.clients=1",
        "fed.local_steps=1", "fed.partition=iid", "fed.rounds=4", "seed=2"]
ON = ["distill.im_weight=1.0", "distill.pl_weight=1.0", "distill.pl_threshold=0.9"]


def test_im_under_record_dp_is_refused_before_any_round():
    cfg = load_config(overrides=[*TINY, "fed.dp=record", "distill.im_weight=0.5"])
    grid = InProcessGrid(load_component("client.node.client_app:app"), 1)
    with pytest.raises(UnikdError, match="distill.im_weight=0.5"):
        federate(grid, cfg, progress=False)


def test_the_edges_term_means_reach_the_clouds_rows_as_centralized_computes_them(tmp_path):
    """The node reports im, pl and pl_kept; the cloud's round rows read them, and with one
    client and one local step they are the centralized trainer's values."""
    cfg = load_config(overrides=[*TINY, *ON])
    data = load_scenario(cfg.data)
    torch.manual_seed(0)
    teacher = teacher_for(data.spec)
    with torch.no_grad():  # an untrained teacher, made confident enough to label some windows
        teacher.head.weight.mul_(30.0)
    path = tmp_path / "teacher.pt"
    from server.central.teacher import save_teacher

    save_teacher(path, teacher, cfg, data)
    cfg = load_config(overrides=[*TINY, *ON, f"teacher.checkpoint={path}"])
    central = []
    distill_unikd(cfg, data, teacher, progress=False,
                  step_hook=lambda g, s, t: central.append((t["im"], t["pl"], t["pl_kept"])))
    rows = []
    federate(InProcessGrid(load_component("client.node.client_app:app"), 1), cfg,
             progress=False, on_round=lambda r, cloud, row: rows.append(row))
    fed = [(r["trg_im"], r["trg_pl"], r["trg_pl_kept"]) for r in rows]
    assert len(fed) == 4 and fed == pytest.approx(central[:4], rel=1e-12)  # n*v/n: rounding
    assert any(0 < kept < 1 for _, _, kept in fed)  # the term was active, the threshold too
