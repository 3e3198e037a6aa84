"""Local steps on both sides (`fed.local_steps_mode: both`, shared/clock/local_steps.py).

A round covers L steps of the run's clock: the cloud runs their source halves on a copy, each
edge their target halves, each side returns the mean gradient along its own path, and the cloud
applies the combination by as many steps. Checked here: the plan of rounds, that each local
step on either side is the clock's own step (batch, dropout draws, schedule values), that the
cloud's pseudo-gradient is the mean along its SGD path, that L = 1 is today's round bit for bit,
and that cadence, exchanges, DP accounting, secure aggregation and resume follow the steps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import client.node.target_side as target_side
from server.central.teacher import content_hash
from server.fed.cloud import Clock, Cloud, load_source
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.server_step import apply_server_step
from server.fed.source_path import run_source_path
from shared.clock.local_steps import LocalSteps, PathMover, RoundPlan, local_path, local_sgd
from shared.clock.schedules import ScheduleClock
from shared.clock.steps import batch_plan
from shared.clock.seeding import client_stream
from shared.config import DistillConfig, load_config
from shared.errors import UnikdError
from shared.data.datasets import get_spec
from shared.protocol.records import RoundConfig
from shared.unikd.engine import TeacherOut, UniKDNets, make_optimizers, source_terms
from shared.unikd.models import teacher_for
from shared.unikd.settings import KDHparams, StepSchedule

TINY = ["distill.epochs=2", "teacher.epochs=1", "teacher.batch_size=128", "seed=3"]
BOTH = ["fed.local_steps_mode=both"]
# The spec §8 fixes on (the defaults until 2026-12-06): target KD on the edge's own windows, so a
# round's whole gradient is known at begin_round (the expected cross KD's source half waits for
# the clients' mean w, see test_cross_kd_* in test_equivalence.py).
FIXES_ON = ["distill.target_kd=true", "distill.double_target_forward=false",
            "distill.beta_natural_log=true", "distill.grl_ramp=true"]
# Under DP and secure aggregation the clients' mean w is withheld (issue 25 item 6).
PRIVATE_KD = ["distill.target_kd=true"]
EDGE = ["fed.local_steps_mode=edge"]  # today's rounds: one step of the clock each


def grid(n: int) -> InProcessGrid:
    return InProcessGrid(load_component("client.node.client_app:app"), n)


def run(clients: int, *overrides: str, **kw):
    cfg = load_config(overrides=[*TINY, f"fed.clients={clients}", *overrides])
    return cfg, federate(grid(clients), cfg, progress=False, **kw)


# ---------------------------------------------------------------- the plan and the clock


def test_a_round_of_both_mode_covers_l_steps_and_the_last_round_the_rest():
    plan = RoundPlan.of("both", 4, clock_steps=10)
    assert plan.rounds == 3
    assert [plan.first_step(r) for r in (1, 2, 3)] == [0, 4, 8]
    assert [plan.local_steps(r).count for r in (1, 2, 3)] == [4, 4, 2]
    assert [plan.steps_done(r) for r in (1, 2, 3)] == [4, 8, 10]
    assert plan.dp_steps() == 10 and plan.dp_steps(2) == 8  # one DP-SGD step per local step
    # rounds 1-3 cover steps 0-3, 4-7, 8-9: a multiple of 3 is reached in each, of 5 in 2, 3
    assert [plan.ends_period(r, 3) for r in (1, 2, 3)] == [True, True, True]
    assert [plan.ends_period(r, 5) for r in (1, 2, 3)] == [False, True, True]
    assert RoundPlan.of("both", 4, clock_steps=10, rounds=2).total_steps == 8  # fed.rounds


def test_edge_mode_is_todays_round_per_step():
    plan = RoundPlan.of("edge", 3, clock_steps=10)
    assert plan.rounds == 10 and [plan.first_step(r) for r in (1, 7)] == [0, 6]
    assert all(plan.local_steps(r).count == 3 for r in range(1, 11))
    assert [r for r in range(1, 11) if plan.ends_period(r, 4)] == [4, 8]  # rnd % 4 == 0
    assert plan.dp_steps() == LocalSteps(3).dp_steps(10)
    assert RoundPlan.of("edge", 3, clock_steps=10, rounds=4).rounds == 4


@pytest.mark.parametrize("natural_log, ramp", [(True, True), (False, False)])
def test_the_schedule_clock_gives_the_trainers_values(natural_log, ramp):
    """The nodes' per-step values are the ones StepSchedule.at gives the cloud and the
    centralized trainer, to the bit."""
    d = DistillConfig(epochs=3, beta_natural_log=natural_log, grl_ramp=ramp)
    clock = ScheduleClock(7, 3, natural_log, ramp)
    for g in range(21):
        epoch, step = clock.at(g)
        assert (epoch, step) == (g // 7 + 1, g % 7)
        assert StepSchedule(*clock.values(g)) == StepSchedule.at(d, epoch, step, 7)


def test_a_local_step_of_both_mode_is_the_clocks_step_and_one_step_agrees_with_edge_mode():
    clock = ScheduleClock(5, 2)
    path = local_path(LocalSteps(3), 4, 1, 4, clock)  # steps 4, 5, 6: across an epoch's end
    assert [(s.seed_step, s.sub, s.epoch, s.batch) for s in path] == \
        [(4, 0, 1, 4), (5, 0, 2, 0), (6, 0, 2, 1)]
    assert [s.schedule for s in path] == [clock.values(g) for g in (4, 5, 6)]
    edge = local_path(LocalSteps(3), 4, 1, 4, None)
    assert [(s.seed_step, s.sub, s.epoch, s.batch, s.schedule) for s in edge] == \
        [(4, j, 1, 12 + j, None) for j in range(3)]
    one = local_path(LocalSteps(1), 4, 1, 4, clock)[0]
    assert (one.seed_step, one.sub, one.epoch, one.batch) == \
        (lambda e: (e.seed_step, e.sub, e.epoch, e.batch))(local_path(LocalSteps(1), 4, 1, 4,
                                                                       None)[0])


# ---------------------------------------------------------------- each side's path


SPEC = get_spec("HAR")


def test_a_node_takes_each_steps_own_batch_and_schedule(monkeypatch):
    torch.manual_seed(0)
    nets = UniKDNets.for_spec(SPEC)
    x = torch.randn(40, SPEC.channels, SPEC.length)
    teacher = TeacherOut(torch.randn(40, 128), torch.randn(40, SPEC.classes))
    clock = ScheduleClock(steps_per_epoch=2, epochs=3)
    rc = RoundConfig(round=2, epoch=1, step=1, global_step=1, local_steps=3, seed=7,
                     batch_size=16, schedule=StepSchedule(*clock.values(1)), lr=0.05,
                     hparams=KDHparams(), dataset="HAR", clock=clock)
    seen, target_terms = [], target_side.target_terms

    def recording(n, xb, tb, schedule, hparams, **kw):
        seen.append((xb.clone(), schedule))
        return target_terms(n, xb, tb, schedule, hparams, **kw)

    monkeypatch.setattr(target_side, "target_terms", recording)
    target_side.unikd_round(nets, x, teacher, rc, client=1)
    assert [s for _, s in seen] == [StepSchedule(*clock.values(g)) for g in (1, 2, 3)]
    for (xb, _), (epoch, batch) in zip(seen, [(1, 1), (2, 0), (2, 1)]):  # steps 1, 2, 3
        idx = batch_plan(7, client_stream(1), epoch, 40, 16)[batch]
        assert torch.equal(xb, x[idx])  # the centralized plan's batch of that step


@pytest.mark.parametrize("preconditioned", [False, True])
def test_the_clouds_source_pseudo_gradient_is_the_mean_along_its_path(preconditioned):
    """Plain: w_{j+1} = w_j - lr g_j. Preconditioned: w_{j+1} = w_j - lr clamp(P (g_j + c))."""
    torch.manual_seed(1)
    nets = UniKDNets.for_spec(SPEC)
    mover = None
    if preconditioned:
        mover = PathMover({k: torch.rand_like(p) * 50 for k, p in nets.named_parameters()},
                          {k: torch.randn_like(p) * 1e-3 for k, p in nets.named_parameters()})
    x, y = torch.randn(96, SPEC.channels, SPEC.length), torch.randint(0, SPEC.classes, (96,))
    t = TeacherOut(torch.randn(96, 128), torch.randn(96, SPEC.classes))
    path = local_path(LocalSteps(3), 0, 1, 0, ScheduleClock(3, 2))
    lr, points = 0.05, []

    def terms_at(n, s):
        points.append(copy.deepcopy(n.state_dict()))
        idx = torch.arange(s.batch * 32, s.batch * 32 + 32)
        torch.manual_seed(100 + s.seed_step)
        return source_terms(n, x[idx], y[idx], t[idx], StepSchedule(*s.schedule), KDHparams())

    start = copy.deepcopy(nets.state_dict())
    run_source_path(nets, path, lr, terms_at, mover)
    params = dict(nets.named_parameters())
    assert all(torch.equal(p, start[k]) for k, p in params.items())  # the master stays as sent
    redo, grads, recorded = UniKDNets.for_spec(SPEC), [], list(points)
    for j, state in enumerate(recorded):  # g_j from scratch at the recorded point
        redo.load_state_dict(state)
        redo.train()
        redo.zero_grad(set_to_none=True)
        terms_at(redo, path[j])["loss"].backward()
        grads.append({k: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
                      for k, p in redo.named_parameters()})
    for a, b, g in zip(recorded, recorded[1:], grads):  # w_{j+1} = w_j - lr d_j
        for k in params:
            d = g[k] if mover is None else (mover.precond[k] * (g[k] + mover.control[k])
                                            ).clamp(-1, 1)
            assert torch.allclose(b[k], a[k] - lr * d, atol=1e-6), k
    for k, p in params.items():
        if p.grad is not None:
            assert torch.allclose(p.grad, sum(g[k] for g in grads) / 3, atol=1e-6), k
    for k, buf in nets.named_buffers():  # the BN statistics after its three source batches
        if buf.is_floating_point():
            assert not torch.equal(buf, start[k]), k


def test_a_preconditioned_path_moves_along_its_half_plus_the_others_control():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    pre = torch.tensor([1.0, 100.0, 10.0], dtype=torch.float64)
    control = torch.tensor([0.5, 0.5, -0.2], dtype=torch.float64)
    mover = PathMover({"w": pre}, {"w": control})
    seen = []

    def gradient(j: int) -> dict:
        seen.append(w.detach().clone())
        return {"w": torch.full((3,), 0.1 * (j + 1), dtype=torch.float64)}

    mean = local_sgd({"w": w}, LocalSteps(3), 0.01, gradient, mover)
    expected = torch.zeros(3, dtype=torch.float64)
    for j in range(3):
        assert torch.allclose(seen[j], expected)
        expected = expected - 0.01 * (pre * (0.1 * (j + 1) + control)).clamp(-1, 1)
    assert torch.allclose(mean["w"], torch.full((3,), 0.2, dtype=torch.float64))  # own half only
    assert mover.direction("other", None) is None  # no gradient, no control: it stays
    plain = PathMover({}, {"w": control})  # no second moments yet: SGD on g + control
    assert torch.equal(plain.direction("w", torch.ones(3, dtype=torch.float64)), 1 + control)
    keyed = mover.keyed({("g", "w"): "w"})
    assert torch.equal(keyed.precond[("g", "w")], pre)


@pytest.mark.parametrize("how, adam_steps", [("repeat", 4), ("scaled-lr", 1), ("sqrt-lr", 4)])
def test_the_server_step_advances_l_steps(how, adam_steps):
    torch.manual_seed(2)
    nets = UniKDNets.for_spec(SPEC)
    opts = make_optimizers(nets.group_params(), 0.01, 1e-4, (0.5, 0.99))
    for p in nets.parameters():
        p.grad = torch.randn_like(p)
    folded = []
    apply_server_step(opts, 4, how, lambda: folded.append(1))
    assert len(folded) == 4  # the EMA folds once per step advanced
    for o in opts.values():
        assert all(g["lr"] == 0.01 for g in o.param_groups)  # restored
        assert {int(s["step"]) for s in o.state.values()} == {adam_steps}


@pytest.mark.parametrize("shape", [["fed.local_steps=3"], ["fed.local_steps=4", *BOTH]])
def test_the_emas_decay_counts_steps_of_the_clock_whatever_a_round_is(shape):
    """`distill.ema_decay` is per step of the run's clock: a round of L local edge steps is one
    step (edge mode), a round of L steps on both sides is L (both mode). So the EMA folds in as
    many times as the centralized run of the same clock steps, and a decay means the same
    horizon with any local steps, federated or not."""
    cfg, result = run(2, *shape, "distill.ema_decay=0.9", "fed.teacher_placement=source-only")
    assert int(result.cloud.ema.average.n_averaged) == result.cloud.clock.total


# ---------------------------------------------------------------- the cloud's round


NODES = [1000, 1001]


def make_cloud(*overrides: str) -> Cloud:
    cfg = load_config(overrides=["seed=5", *BOTH, *overrides])
    source = load_source(cfg)
    torch.manual_seed(0)
    teacher = teacher_for(source.spec).eval()
    return Cloud(cfg, source, teacher, content_hash(teacher), Clock(8, 2))


def test_a_both_mode_round_sends_the_first_step_and_the_clock():
    cloud = make_cloud("fed.local_steps=3")
    assert cloud.plan.rounds == math.ceil(16 / 3)
    rc = RoundConfig.from_record(cloud.round_config(3).to_record())
    assert (rc.global_step, rc.local_steps, rc.epoch, rc.step) == (6, 3, 1, 6)
    assert rc.clock == ScheduleClock(8, cloud.cfg.distill.epochs)
    assert rc.schedule == cloud.schedule(1, 6)
    last = cloud.round_config(6)
    assert (last.global_step, last.local_steps) == (15, 1)  # the short last round
    edge = make_cloud("fed.local_steps_mode=edge").round_config(3)
    assert edge.clock is None and "steps_per_epoch" not in edge.to_record()


def test_rounds_of_several_steps_carry_the_preconditioner_and_the_source_control():
    from server.fed.server_step import adam_preconditioner
    from shared.protocol import wire
    from shared.protocol.records import from_record

    cloud = make_cloud("fed.local_steps=3")
    cloud.begin_round(1)
    cloud.finish_round([])  # the optimizers hold second moments now
    opened = cloud.begin_round(2)
    messages = cloud.round_messages(NODES, set())
    pre = from_record(messages[NODES[0]][wire.PATH_PRECOND])
    control = from_record(messages[NODES[0]][wire.PATH_CONTROL])
    want = adam_preconditioner(cloud.opts, dict(cloud.nets.named_parameters()))
    assert pre.keys() == want.keys() and all(torch.equal(pre[k], want[k]) for k in want)
    assert all(torch.equal(control[k], p.grad) for k, p in cloud.nets.named_parameters()
               if p.grad is not None)  # this round's source pseudo-gradient
    assert opened.path
    for overrides in (["fed.local_steps=1"], ["fed.local_path=plain", "fed.local_steps=3"]):
        other = make_cloud(*overrides)
        other.begin_round(1)
        assert wire.PATH_PRECOND not in other.round_messages(NODES, set())[NODES[0]]


def test_a_both_mode_round_moves_nothing_before_it_is_finished_and_nothing_when_aborted():
    cloud = make_cloud("fed.local_steps=3")
    before = copy.deepcopy(cloud.nets.state_dict())
    opened = cloud.begin_round(1)
    sent = {k: v for r in opened.weights.values() for k, v in r.items()}
    assert sent  # the messages carry the weights as they were, BN buffers included
    for k, p in cloud.nets.named_parameters():
        assert torch.equal(p, before[k]), k
    cloud.abort_round()
    for k, v in cloud.nets.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in cloud.nets.parameters())


def test_a_round_of_l_steps_carries_the_mean_gradient_of_those_centralized_steps():
    """Same objective: with the local steps not moving (lr 0), the cloud's source and a lone
    node's target pseudo-gradients add up to the mean of the centralized trainer's gradients of
    the round's L steps, each with its batches, dropout draws and schedule values."""
    from shared.clock.seeding import SOURCE_STREAM, seed_side
    from shared.clock.steps import iterate_steps, steps_per_epoch
    from shared.data.scenario import load_scenario
    from shared.protocol import wire
    from shared.protocol.records import from_record, load_student_state
    from shared.unikd.engine import target_terms, teacher_outputs

    cfg = load_config(overrides=[*TINY, "fed.clients=1", *BOTH, "fed.local_steps=4",
                                 "distill.lr=0", *FIXES_ON])
    data, source = load_scenario(cfg.data), load_source(cfg)
    torch.manual_seed(0)
    teacher = teacher_for(source.spec).eval()
    bs = cfg.distill.batch_for(source.spec)
    spe = steps_per_epoch(len(data.src_train), len(data.trg_train), bs)
    cloud = Cloud(cfg, source, teacher, content_hash(teacher), Clock(spe, cfg.distill.epochs))
    opened = cloud.begin_round(spe // 4 + 1)  # the round in which the first epoch ends

    def sent() -> UniKDNets:
        nets = UniKDNets.for_spec(source.spec)
        load_student_state(nets, from_record(opened.weights[wire.STUDENT]))
        nets.d_f.load_state_dict(from_record(opened.weights[wire.D_F]))
        nets.d_d.load_state_dict(from_record(opened.weights[wire.D_D]))
        return nets.train()

    x = data.trg_train.x
    node, _, _ = target_side.unikd_round(sent(), x, teacher_outputs(teacher, x), opened.config,
                                         client=0)
    ref, mean = sent(), {}
    t_src, t_trg = teacher_outputs(teacher, data.src_train.x), teacher_outputs(teacher, x)
    steps = range(opened.config.global_step, opened.config.global_step + 4)
    assert {cloud.clock.at(g)[0] for g in steps} == {1, 2}, spe  # across an epoch's end
    for s in iterate_steps(cfg.seed, len(data.src_train), len(x), bs, cfg.distill.epochs,
                           progress=False):
        if s.global_step not in steps:
            continue
        sched = StepSchedule.at(cfg.distill, s.epoch, s.step, spe)
        ref.zero_grad(set_to_none=True)
        seed_side(cfg.seed, SOURCE_STREAM, s.global_step)
        source_terms(ref, data.src_train.x[s.src_idx], data.src_train.y[s.src_idx],
                     t_src[s.src_idx], sched, cloud.hp)["loss"].backward()
        seed_side(cfg.seed, client_stream(0), s.global_step)
        target_terms(ref, x[s.trg_idx], t_trg[s.trg_idx], sched, cloud.hp)["loss"].backward()
        for k, p in ref.named_parameters():
            if p.grad is not None:
                mean[k] = mean.get(k, 0) + p.grad / 4
    groups = {"student": ("student.", "adapter."), "d_f": ("d_f.",), "d_d": ("d_d.",)}
    for k, p in cloud.nets.named_parameters():
        group = next(g for g, heads in groups.items() if k.startswith(heads))
        wire_name = k if group == "student" else k.split(".", 1)[1]
        combined = (p.grad if p.grad is not None else 0) + node[group][wire_name]
        assert torch.allclose(combined, mean.get(k, torch.zeros_like(p)), atol=1e-5), k


# ---------------------------------------------------------------- federations


def test_one_local_step_on_both_sides_is_todays_round_bit_for_bit():
    """Two clients: the same losses, evaluations and weights as edge mode, to the bit.

    One teacher member: edge mode trains members one after another, both mode in one exchange
    each step, so with more members only the exchange counts differ."""
    _, edge = run(2, "fed.local_steps=1", "teacher.ensemble=1", *EDGE)
    _, both = run(2, "fed.local_steps=1", "teacher.ensemble=1", *BOTH)
    assert [r["src_loss"] for r in both.rounds] == [r["src_loss"] for r in edge.rounds]
    assert [r["trg_loss"] for r in both.rounds] == [r["trg_loss"] for r in edge.rounds]
    assert [e["mf1"] for e in both.evals] == [e["mf1"] for e in edge.evals]
    assert both.exchanges == edge.exchanges
    for (k, a), b in zip(edge.cloud.nets.state_dict().items(),
                         both.cloud.nets.state_dict().values()):
        assert torch.equal(a, b), k


def test_l_steps_per_round_divide_the_exchanges_and_evaluate_once_per_epoch_of_steps():
    cfg, result = run(2, "fed.local_steps=4", *BOTH, "fed.teacher_placement=source-only",
                      "fed.evaluation=exchange")  # every evaluation its own exchange
    total = result.cloud.clock.total
    assert len(result.rounds) == math.ceil(total / 4)
    assert result.evals[-1]["steps"] == total
    assert len(result.evals) == cfg.distill.epochs  # an epoch of steps ends in each
    assert result.exchanges == 1 + len(result.rounds) + len(result.evals)  # query, train, eval


def test_record_dp_charges_every_local_step_and_the_cloud_none(tmp_path):
    cfg, result = run(2, "fed.local_steps=4", *BOTH, "fed.dp=record",
                      "fed.teacher_placement=source-only", *PRIVATE_KD)
    total = result.cloud.clock.total
    steps = [r["student_steps"] for r in result.privacy.rows if r["phase"] == "unikd"]
    assert max(steps) == total  # each node: one DP-SGD step per step of the clock
    assert len(steps) == 2 * math.ceil(total / 4)


def test_secure_aggregation_sums_the_both_mode_pseudo_gradients():
    _, result = run(3, "fed.local_steps=3", *BOTH, "fed.rounds=2",
                    "fed.teacher_placement=source-only", "fed.secure_aggregation=true",
                    *PRIVATE_KD)
    assert len(result.rounds) == 2 and result.rounds[-1]["secagg_u2"] == 3
    assert result.evals[-1]["steps"] == 6


def test_a_both_mode_run_resumes_to_the_same_weights(tmp_path):
    over = ("fed.local_steps=3", *BOTH, "fed.teacher_placement=source-only",
            "fed.checkpoint_every=7")
    cfg, full = run(2, *over)
    run_dir = tmp_path / "run"
    federate(grid(2), cfg, progress=False, run_dir=run_dir, stop_after=5)
    resumed = federate(grid(2), cfg, progress=False, run_dir=run_dir, resume=run_dir)
    assert [r["src_loss"] for r in resumed.rounds] == [r["src_loss"] for r in full.rounds]
    for (k, a), b in zip(full.cloud.nets.state_dict().items(),
                         resumed.cloud.nets.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- the federated DANN teacher


def teacher_run(*overrides: str, clients: int = 2):
    from server.fed.teacher import federated_dann_teacher
    from server.fed.transport import Sender
    from shared.data.scenario import load_scenario

    cfg = load_config(overrides=["teacher.epochs=2", "teacher.batch_size=64",
                                 "teacher.ensemble=2", f"fed.clients={clients}", "seed=3",
                                 *overrides])
    g = grid(clients)
    send = Sender(g, None)
    teacher = federated_dann_teacher(send, cfg, load_source(cfg), g.node_ids,
                                     len(load_scenario(cfg.data).trg_train), progress=False)
    return teacher, send.exchanges


def test_every_member_in_one_exchange_is_member_after_member_bit_for_bit():
    edge, edge_exchanges = teacher_run(*EDGE, "fed.local_steps=1")
    both, both_exchanges = teacher_run(*BOTH, "fed.local_steps=1")  # the teacher's L: 1 too
    assert both_exchanges * 2 == edge_exchanges  # two members per exchange
    for (k, a), b in zip(edge.state_dict().items(), both.state_dict().values()):
        assert torch.equal(a, b), k
    four, four_exchanges = teacher_run(*BOTH, "fed.teacher_local_steps=4")
    assert four_exchanges == math.ceil(both_exchanges / 4)
    assert all(torch.isfinite(v).all() for v in four.state_dict().values())


def test_the_teacher_takes_its_own_local_steps_and_server_step():
    four, four_exchanges = teacher_run(*BOTH, "fed.local_steps=8")  # the teacher's L: half
    own, own_exchanges = teacher_run(*BOTH, "fed.local_steps=1", "fed.teacher_local_steps=4")
    assert own_exchanges == four_exchanges
    for (k, a), b in zip(four.state_dict().items(), own.state_dict().values()):
        assert torch.equal(a, b), k  # the student's L reaches the teacher only through it
    rule, _ = teacher_run(*BOTH, "fed.local_steps=8", "fed.server_step=repeat")
    own_rule, _ = teacher_run(*BOTH, "fed.local_steps=8", "fed.teacher_server_step=repeat")
    for (k, a), b in zip(rule.state_dict().items(), own_rule.state_dict().values()):
        assert torch.equal(a, b), k
    assert not all(torch.equal(a, b) for a, b in zip(four.state_dict().values(),
                                                    own_rule.state_dict().values()))


def test_the_teachers_own_steps_are_refused_in_edge_mode():
    cfg = load_config(overrides=[*TINY, *EDGE, "fed.clients=2", "fed.teacher_local_steps=4"])
    with pytest.raises(UnikdError, match="fed.teacher_local_steps"):
        federate(grid(2), cfg, progress=False)


def test_record_dp_charges_the_teachers_own_local_steps():
    from server.fed.dp.federation import teacher_round_charges
    from shared.clock.steps import steps_per_epoch

    cfg = load_config(overrides=["teacher.ensemble=2", *BOTH, "fed.local_steps=2",
                                 "fed.teacher_local_steps=5", "teacher.epochs=1"])
    spec = load_source(cfg).spec
    steps = steps_per_epoch(100, 64, cfg.teacher.batch_for(spec))  # one member's, one epoch
    charges = teacher_round_charges(cfg, 100, 64, spec)
    assert charges == [2 * min(5, steps - 5 * r) for r in range(math.ceil(steps / 5))]


def test_record_dp_charges_every_members_local_steps_and_resumes_with_them(tmp_path):
    over = ["distill.epochs=1", "teacher.epochs=1", "teacher.ensemble=2", "fed.clients=2",
            "fed.dp=record", "fed.local_steps=3", *BOTH, "fed.checkpoint_every=6", "seed=5",
            *PRIVATE_KD, "fed.teacher_local_steps=3"]
    cfg = load_config(overrides=over)
    full = federate(grid(2), cfg, progress=False)
    teacher = [r for r in full.privacy.rows if r["phase"] == "teacher"]
    per_member = max(r["teacher_steps"] for r in teacher) // 2
    assert len(teacher) == 2 * math.ceil(per_member / 3)  # a row per node per exchange
    assert full.privacy.plan.teacher_steps == 2 * per_member  # planned as charged
    run_dir = tmp_path / "run"
    federate(grid(2), cfg, progress=False, run_dir=run_dir, stop_after=3)
    resumed = federate(grid(2), cfg, progress=False, run_dir=run_dir, resume=run_dir)
    assert resumed.privacy.rows == full.privacy.rows


def test_a_node_refuses_a_path_record_not_shaped_like_its_parameters():
    from flwr.app import RecordDict

    from client.node.client_app import path_mover
    from shared.errors import UnikdError
    from shared.protocol import wire
    from shared.protocol.records import to_record

    nets = UniKDNets.for_spec(SPEC)
    good = {k: torch.ones_like(p) for k, p in nets.named_parameters()}
    assert path_mover(RecordDict({}), nets) is None
    mover = path_mover(RecordDict({wire.PATH_PRECOND: to_record(good),
                                   wire.PATH_CONTROL: to_record(good)}), nets)
    assert mover.precond.keys() == good.keys()
    bad = {**good, "d_d.net.0.weight": torch.ones(3)}
    with pytest.raises(UnikdError, match="path.precond"):
        path_mover(RecordDict({wire.PATH_PRECOND: to_record(bad),
                               wire.PATH_CONTROL: to_record(good)}), nets)
