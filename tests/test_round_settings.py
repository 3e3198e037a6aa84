"""Round settings are declared once (shared/unikd/settings.py) and every config value reaches the
engine: on the cloud, through the wire on a node, and in the centralized trainer.

Each KD switch is set to a value other than its default, alone, so a path that drops a field or
swaps two of them fails here; new fields of `KDHparams` are picked up without editing this file.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from flwr.app import ConfigRecord

import client.node.target_side as target_side
import server.central.trainer as trainer
import server.fed.cloud as cloud_module
from server.fed.cloud import Clock, Cloud, load_source
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.setup import setup_config
from server.fed.teacher import teacher_round_config
from shared.clock.schedules import grl_alpha, kd_beta, training_progress
from shared.clock.steps import steps_per_epoch
from shared.config import DistillConfig, load_config
from shared.data.scenario import load_scenario
from shared.protocol.records import RoundConfig, SetupConfig, TeacherRoundConfig, flat_fields
from shared.unikd.models import teacher_for
from shared.unikd.settings import DannTargetTerms, KDHparams, StepSchedule

TINY = ["distill.epochs=2", "teacher.epochs=1", "teacher.batch_size=128", "fed.clients=1",
        "fed.local_steps_mode=edge", "fed.local_steps=1"]  # a round per step: rounds 1, 3, 8
KD_FIELDS = dataclasses.fields(KDHparams)


def other_value(f: dataclasses.Field) -> object:
    """A valid value of KD field `f` that is not its default."""
    tp = typing.get_type_hints(KDHparams)[f.name]
    if tp is bool:
        return not f.default
    if tp is float:  # a step up, or down where that would leave the field's range
        hi = f.metadata.get("range", (None, None))[1]
        return f.default + 0.25 if hi is None or f.default + 0.25 <= hi else f.default - 0.25
    if typing.get_origin(tp) is typing.Literal:
        return next(c for c in typing.get_args(tp) if c != f.default)
    raise AssertionError(f"KDHparams.{f.name}: no non-default value for {tp}; extend this test")


def as_override(name: str, value: object) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"distill.{name}={text}"


def expected(name: str, value: object) -> KDHparams:
    return dataclasses.replace(KDHparams(), **{name: value})


@pytest.fixture(scope="module")
def source():
    return load_source(load_config(overrides=TINY))


def cloud_for(cfg, source) -> Cloud:
    """A cloud with an untrained teacher and a 2-epoch clock: enough to build round configs."""
    return Cloud(cfg, source, teacher_for(source.spec), "teacher-hash",
                 Clock(steps_per_epoch=5, num_epochs=cfg.distill.epochs))


def test_the_engine_defaults_are_the_config_defaults():
    """One declaration: a config that sets nothing trains with KDHparams() (bit-for-bit rule)."""
    assert KDHparams.from_config(DistillConfig()) == KDHparams()
    names = [f.name for f in dataclasses.fields(DistillConfig)]
    assert {f.name for f in KD_FIELDS} <= set(names)  # every switch is a `distill.` key


@pytest.mark.parametrize("field", KD_FIELDS, ids=lambda f: f.name)
def test_a_kd_setting_reaches_the_wire_and_the_node_unchanged(field, source):
    value = other_value(field)
    cfg = load_config(overrides=[*TINY, as_override(field.name, value)])
    cloud = cloud_for(cfg, source)
    sent = cloud.round_config(3)
    received = RoundConfig.from_record(sent.to_record())
    assert cloud.hp == expected(field.name, value)  # the cloud's source terms
    assert received.hparams == expected(field.name, value)  # the node's target terms
    assert received == sent


@pytest.mark.parametrize("switch", [[], ["distill.beta_natural_log=false"],
                                    ["distill.grl_ramp=false"]])
def test_the_schedule_a_node_receives_is_the_clocks(switch, source):
    cfg = load_config(overrides=[*TINY, *switch])
    cloud = cloud_for(cfg, source)
    d = cfg.distill
    for rnd in (1, 4, 8):
        epoch, step = cloud.clock.at(rnd - 1)
        received = RoundConfig.from_record(cloud.round_config(rnd).to_record()).schedule
        assert received == StepSchedule(
            beta=kd_beta(epoch, d.epochs, d.beta_natural_log),
            alpha=grl_alpha(training_progress(step, epoch, 5, d.epochs, d.grl_ramp)))


class Stop(Exception):
    """Raised by a recording stand-in once the first step has shown its settings."""


@pytest.mark.parametrize("field", KD_FIELDS, ids=lambda f: f.name)
def test_a_kd_setting_reaches_the_centralized_engine(field, monkeypatch):
    value = other_value(field)
    cfg = load_config(overrides=[*TINY, as_override(field.name, value)])
    data = load_scenario(cfg.data)
    seen = {}

    def recording(nets, x, y, teacher, sched, hp):
        seen["hp"], seen["sched"] = hp, sched
        raise Stop

    monkeypatch.setattr(trainer, "source_terms", recording)
    with pytest.raises(Stop):
        trainer.distill_unikd(cfg, data, teacher_for(data.spec), progress=False)
    assert seen["hp"] == expected(field.name, value)
    spe = steps_per_epoch(len(data.src_train), len(data.trg_train),
                          cfg.distill.batch_for(data.spec))
    assert seen["sched"] == StepSchedule.at(cfg.distill, 1, 0, spe)  # step 0 of epoch 1


def test_a_federation_trains_with_the_configs_settings_on_both_sides(monkeypatch):
    """Every KD switch off its default at once, through the real cloud, wire and node."""
    values = {f.name: other_value(f) for f in KD_FIELDS}
    cfg = load_config(overrides=[*TINY, "fed.rounds=1", "teacher.w_dom=0.6", "teacher.w_ent=0.2",
                                 *(as_override(n, v) for n, v in values.items())])
    seen: dict[str, list] = {"cloud": [], "node": [], "teacher": []}
    source_terms, target_terms = cloud_module.source_terms, target_side.target_terms
    dann_target_terms = target_side.dann_target_terms

    def on_cloud(nets, x, y, teacher, sched, hp):
        seen["cloud"].append(hp)
        return source_terms(nets, x, y, teacher, sched, hp)

    def on_node(nets, x, teacher, sched, hp, **kw):
        seen["node"].append(hp)
        return target_terms(nets, x, teacher, sched, hp, **kw)

    def on_node_teacher(teacher, disc, x, alpha, weights):
        seen["teacher"].append(weights)
        return dann_target_terms(teacher, disc, x, alpha, weights)

    monkeypatch.setattr(cloud_module, "source_terms", on_cloud)
    monkeypatch.setattr(target_side, "target_terms", on_node)
    monkeypatch.setattr(target_side, "dann_target_terms", on_node_teacher)
    federate(InProcessGrid(load_component("client.node.client_app:app"), 1), cfg,
             progress=False)
    want = KDHparams(**values)
    assert seen["cloud"] and all(hp == want for hp in seen["cloud"])
    assert seen["node"] and all(hp == want for hp in seen["node"])
    assert seen["teacher"] and all(w == DannTargetTerms(0.6, 0.2) for w in seen["teacher"])


def test_setup_messages_carry_no_kd_settings_and_the_teachers_own_weight(source):
    """The count query, deliveries and teacher rounds have their own config types: a teacher
    round's domain weight travels as `w_dom`, never as the student's `lam_dom`."""
    cfg = load_config(overrides=[*TINY, "teacher.w_dom=0.3", "teacher.w_cls=2.0",
                                 "teacher.w_ent=0.4"])
    kd_keys = {f.name for f in KD_FIELDS} | {f.name for f in dataclasses.fields(StepSchedule)}
    query = setup_config(cfg, source, round=0).to_record()
    teacher = teacher_round_config(cfg, source, 7, 3, 2).to_record()
    assert not kd_keys & set(query) and not (kd_keys - {"alpha"}) & set(teacher)
    got = TeacherRoundConfig.from_record(teacher)
    assert {"w_dom", "w_ent"} <= set(teacher) and "w_cls" not in teacher  # flat, target side only
    assert got.terms == DannTargetTerms(w_dom=0.3, w_ent=0.4)
    assert (got.terms.w_dom, got.seed, got.round, got.epoch, got.step, got.global_step) == \
        (0.3, 7, 3, 2, 0, 2)
    assert SetupConfig.from_record(query).dataset == source.spec.name


def test_round_config_travels_flat_and_whole():
    rc = RoundConfig(round=2, seed=0, dataset="SYNTH", schedule=StepSchedule(0.2, 0.4),
                     hparams=KDHparams(temperature=2.0), lr=1e-3)
    record = rc.to_record()
    assert all(not isinstance(v, (dict, list)) for v in record.values())  # scalars only
    assert record["temperature"] == 2.0 and record["beta"] == 0.2
    assert RoundConfig.from_record(record) == rc
    partial = ConfigRecord({k: v for k, v in record.items() if k != "detach_weights"})
    with pytest.raises(ValueError, match="KDHparams: the record lacks detach_weights"):
        RoundConfig.from_record(partial)  # a node never fills in a setting the cloud left out


def test_two_fields_of_one_name_cannot_share_the_wire():
    @dataclasses.dataclass
    class Clash:
        hparams: KDHparams
        temperature: float = 1.0

    with pytest.raises(ValueError, match="two fields named 'temperature'"):
        flat_fields(Clash(KDHparams()))
    assert len(flat_fields(RoundConfig(round=1, seed=0, dataset="x", lr=0.0,
                                       schedule=StepSchedule(0.0, 0.0),
                                       hparams=KDHparams()))) == \
        len(dataclasses.fields(RoundConfig)) - 5 + len(KD_FIELDS) + 2  # hparams and schedule
    # nest; `clock`, `w_share` and `evaluate` left at None are absent
