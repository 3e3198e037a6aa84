"""Baseline students (server/central/baselines.py): each trains, is deterministic, and keeps its contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.central.baselines import BASELINES, _coral, _kl, _mmd
from shared.config import load_config
from shared.data.adatime import Domain
from shared.data.loaders import Normalizer
from shared.data.scenario import ScenarioData
from shared.data.datasets import get_spec
from shared.unikd.models import TeacherEnsemble, student_for, teacher_for
from shared.clock.seeding import seed_init

SPEC = get_spec("HAR")
N = 64  # windows per split: two batches of 32 per epoch
METHODS = sorted(BASELINES)


def _domain(seed: int, shift: float = 0.0) -> Domain:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, SPEC.channels, SPEC.length, generator=g) + shift
    y = torch.arange(N) % SPEC.classes
    return Domain(x, y, Path(f"<test {seed}>"))


def _data(trg_train_x: torch.Tensor | None = None) -> ScenarioData:
    trg_train = _domain(3, shift=0.5)
    if trg_train_x is not None:
        trg_train.x = trg_train_x
    return ScenarioData(SPEC, "0", "1", _domain(1), _domain(2), trg_train, _domain(4, shift=0.5),
                        Normalizer.identity(SPEC.channels))


def _cfg(*extra: str):
    return load_config(overrides=["distill.epochs=1", "distill.batch_size=32", *extra])


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(123)
    return teacher_for(SPEC).eval()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_registry_names_and_runner_sees_them():
    from server.central.runner import methods

    assert METHODS == sorted(["source-only", "kd-target", "dann-student", "mobileda", "aad", "jku"])
    assert set(METHODS) <= set(methods())


@pytest.mark.parametrize("name", METHODS)
def test_trains_a_finite_changed_student_and_leaves_teacher_alone(name, teacher):
    cfg, data = _cfg(), _data()
    teacher_before = _state(teacher)
    seed_init(cfg.seed)
    init = _state(student_for(SPEC))  # what the method builds first under the same init seed

    result = BASELINES[name](cfg, data, teacher, False)

    student = result.student
    assert not student.training
    with torch.no_grad():
        out = student(data.trg_test.x)
    assert out.shape == (N, SPEC.classes) and torch.isfinite(out).all()
    after = _state(student)
    assert init.keys() == after.keys()
    changed = [k for k in init if "weight" in k and not torch.equal(init[k], after[k])]
    assert changed, f"{name}: no weight moved"
    assert len(result.history) == 1 and result.history[0]["epoch"] == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())
    assert result.train_seconds > 0
    for k, v in _state(teacher).items():  # jku trains a copy; the rest read a frozen teacher
        assert torch.equal(v, teacher_before[k]), f"{name} changed the given teacher ({k})"


@pytest.mark.parametrize("name", METHODS)
def test_same_config_twice_gives_identical_weights(name, teacher):
    a = BASELINES[name](_cfg(), _data(), teacher, False).student.state_dict()
    b = BASELINES[name](_cfg(), _data(), teacher, False).student.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_another_seed_gives_another_student(teacher):
    a = BASELINES["source-only"](_cfg(), _data(), teacher, False).student.state_dict()
    b = BASELINES["source-only"](_cfg("seed=1"), _data(), teacher, False).student.state_dict()
    assert not torch.equal(a["head.weight"], b["head.weight"])


def test_aad_never_reads_target_windows(teacher):
    nan_target = torch.full((N, SPEC.channels, SPEC.length), float("nan"))
    result = BASELINES["aad"](_cfg(), _data(trg_train_x=nan_target), teacher, False)
    with torch.no_grad():
        assert torch.isfinite(result.student(_domain(4).x)).all()
    assert all(torch.isfinite(p).all() for p in result.student.state_dict().values()
               if p.is_floating_point())


@pytest.mark.parametrize("name", ["kd-target", "mobileda", "jku", "dann-student"])
def test_target_methods_do_read_target_windows(name, teacher):
    """The converse of the AAD check: NaN target windows must poison these methods."""
    nan_target = torch.full((N, SPEC.channels, SPEC.length), float("nan"))
    result = BASELINES[name](_cfg(), _data(trg_train_x=nan_target), teacher, False)
    assert not all(torch.isfinite(p).all() for p in result.student.state_dict().values()
                   if p.is_floating_point())


def test_jku_takes_first_member_of_an_ensemble():
    torch.manual_seed(5)
    members = [teacher_for(SPEC).eval(), teacher_for(SPEC).eval()]
    before = _state(members[0])
    result = BASELINES["jku"](_cfg(), _data(), TeacherEnsemble(members), False)
    joint = result.extras["teacher"]
    assert joint.features_dim == members[0].features_dim
    assert all(torch.equal(v, before[k]) for k, v in _state(members[0]).items())
    # the joint teacher started from member 0 and was trained: it differs from both members now
    assert not torch.equal(joint.head.weight, members[0].head.weight)


def test_cache_teacher_off_gives_the_same_student(teacher):
    for name in ("kd-target", "mobileda", "aad"):
        a = BASELINES[name](_cfg(), _data(), teacher, False).student.state_dict()
        b = BASELINES[name](_cfg("distill.cache_teacher=false"), _data(), teacher,
                            False).student.state_dict()
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a), name


def test_coral_is_zero_for_identical_inputs_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 32, generator=g)
    assert _coral(h, h).item() == 0.0
    assert _coral(h, h + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # CORAL ignores the mean
    assert _coral(h, 2.0 * h).item() > 0.0


def test_coral_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    expected = ((torch.cov(hs.T) - torch.cov(ht.T)) ** 2).sum() / (4 * 4**2)
    assert _coral(hs, ht).item() == pytest.approx(expected.item(), rel=1e-5)


def test_mmd_is_zero_for_identical_inputs_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 16, generator=g)
    assert abs(_mmd(h, h).item()) < 1e-6
    small, large = _mmd(h, h + 0.5).item(), _mmd(h, h + 2.0).item()
    assert 0.0 < small < large
    same_point = torch.ones(8, 4)
    assert torch.isfinite(_mmd(same_point, same_point))  # bandwidth guarded against 0/0
    hs, ht = h.clone().requires_grad_(True), (h + 0.5).requires_grad_(True)
    _mmd(hs, ht).backward()
    assert torch.isfinite(hs.grad).all() and hs.grad.abs().sum() > 0


def test_kl_has_no_temperature_squared_and_reaches_both_sides():
    zt = torch.randn(8, 6, requires_grad=True)
    zs = torch.randn(8, 6, requires_grad=True)
    p = torch.softmax(zt / 2, 1)
    expected = (p * (torch.log_softmax(zt / 2, 1) - torch.log_softmax(zs / 2, 1))).sum(1).mean()
    value = _kl(zt, zs, 2.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert zt.grad.abs().sum() > 0 and zs.grad.abs().sum() > 0
    assert _kl(zt.detach(), zt.detach(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- outcomes on learnable data


@pytest.fixture(scope="module")
def synth_setup():
    """The embedded synthetic scenario (learnable, 6 classes) and a short DANN teacher."""
    from server.central.teacher import train_dann_teacher
    from shared.data.scenario import load_scenario

    cfg = load_config(overrides=["teacher.epochs=3", "distill.epochs=3", "seed=0"])
    data = load_scenario(cfg.data)
    teacher = train_dann_teacher(data.spec, data, cfg.teacher, cfg.seed, progress=False)
    return cfg, data, teacher


@pytest.mark.parametrize("name", METHODS)
def test_each_baseline_learns_the_task(name, synth_setup):
    """Not "some weight moved": each student must classify far above chance (1/6 = 16.7%)."""
    from server.central.trainer import score_student

    cfg, data, teacher = synth_setup
    seed_init(cfg.seed)
    untrained = score_student(student_for(data.spec).eval(), data)
    scores = score_student(BASELINES[name](cfg, data, teacher, False).student, data)
    assert scores["src_acc"] > 60.0, (name, scores)
    assert scores["src_acc"] > untrained["src_acc"] + 30.0, (name, untrained, scores)
    if name != "aad":  # AAD never sees target windows; the others must transfer some of it
        assert scores["acc"] > 40.0, (name, scores)
