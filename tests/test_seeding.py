"""The seed-purpose table (shared/clock/seeding.py): no two draws can share a seed, and the
numbers are the ones every recorded run was drawn with."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.clock import seeding
from shared.clock.seeding import (AUGMENT, AVAILABILITY, AVAILABILITY_PHASE, BATCHES, CENTRAL_STREAM,
                                  COHORT, DP_COUNT, DP_POISSON, EVAL_SAMPLE,
                                  DP_STEP_NOISE, DROPOUT, INIT_DANN_TEACHER, INIT_MODELS,
                                  INIT_SOURCE_TEACHER, MEMBER_SEEDS, MODEL_INIT, NOISE_SHARE,
                                  OFFSET_STRIDE, PHASE_TEACHER, PHASE_UNIKD, PURPOSES,
                                  SOURCE_STREAM,
                                  UPDATE_NOISE, Purpose, client_stream, collisions,
                                  record_dp_offset, seed_for, stream_kind)

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_DERIVERS = {"seed_for", "generator_for", "dp_generator"}  # (seed, stream, step, purpose, ...)
LOCAL_STEPS = range(64)  # more local steps per round than any recipe takes


def reachable_offsets(purpose: Purpose) -> set[int]:
    """The sub-offsets the code gives a purpose: local steps, or local steps x record-DP phase."""
    if purpose in (DP_POISSON, DP_STEP_NOISE):
        return {record_dp_offset(sub, phase) for sub in LOCAL_STEPS
                for phase in (PHASE_UNIKD, PHASE_TEACHER)}
    return set(LOCAL_STEPS) if purpose.offset else {0}


def test_the_table_has_no_collision():
    assert collisions() == []


@pytest.mark.parametrize("intruder", [
    Purpose("second dropout", DROPOUT.number(1), ("clients",), "global step"),  # in an offset lane
    Purpose("second batches", BATCHES.base, ("source",), "epoch"),  # the same number
    Purpose("member noise", MEMBER_SEEDS.base + OFFSET_STRIDE, ("source",), "member"),
    Purpose("central count", DP_COUNT.base, ("central", "clients"), "0"),
])
def test_a_wrong_table_is_caught(intruder):
    found = collisions(PURPOSES + (intruder,))
    assert len(found) == 1 and intruder.name in found[0]


def test_one_lane_is_shared_only_on_disjoint_streams():
    elsewhere = Purpose("cloud-only draw", DP_COUNT.base, ("central",), "round")
    assert collisions(PURPOSES + (elsewhere,)) == []


def test_every_purpose_is_in_the_table_once():
    declared = {v for v in vars(seeding).values() if isinstance(v, Purpose)}
    assert declared == set(PURPOSES)
    assert len({p.name for p in PURPOSES}) == len(PURPOSES)


def test_reachable_purpose_numbers_are_distinct_on_every_stream():
    for kind in ("source", "clients", "central"):
        drawn: dict[int, str] = {}
        for purpose in (p for p in PURPOSES if kind in p.streams):
            for offset in reachable_offsets(purpose):
                number = purpose.number(offset)
                assert number % OFFSET_STRIDE == purpose.lane  # offsets stay in the lane
                assert number not in drawn, f"{purpose.name} meets {drawn[number]} on {kind}"
                drawn[number] = purpose.name


def test_offsets_outside_a_scheme_are_refused():
    with pytest.raises(ValueError):
        BATCHES.number(1)  # batches take no offset
    with pytest.raises(ValueError):
        DROPOUT.number(-1)
    with pytest.raises(ValueError):
        record_dp_offset(0, 2)  # there are two phases
    slots = [record_dp_offset(sub, phase) for sub in LOCAL_STEPS for phase in (0, 1)]
    assert sorted(slots) == list(range(len(slots)))  # one slot per (local step, phase)


def test_client_streams_stay_clear_of_the_source_and_the_cloud():
    assert stream_kind(SOURCE_STREAM) == "source"
    assert stream_kind(CENTRAL_STREAM) == "central"
    assert {stream_kind(client_stream(k)) for k in (0, 1, 999, CENTRAL_STREAM - 2)} == {"clients"}
    for client in (-1, CENTRAL_STREAM - 1):
        with pytest.raises(Exception, match="client id"):
            client_stream(client)


def test_the_numbers_are_the_recorded_ones():
    """Changing any of these changes the random numbers of every run (and every benchmark)."""
    assert {p.name: p.base for p in PURPOSES} == {
        BATCHES.name: 1, DROPOUT.name: 2, MODEL_INIT.name: 3, UPDATE_NOISE.name: 7,
        MEMBER_SEEDS.name: 7, DP_POISSON.name: 40, DP_STEP_NOISE.name: 41, DP_COUNT.name: 42,
        NOISE_SHARE.name: 43, AUGMENT.name: 4, COHORT.name: 5, EVAL_SAMPLE.name: 6,
        AVAILABILITY.name: 12, AVAILABILITY_PHASE.name: 13}
    assert DROPOUT.number(3) == 2 + 16 * 3
    assert DP_POISSON.number(record_dp_offset(2, PHASE_TEACHER)) == 40 + 16 * (2 * 2 + 1)
    assert DP_STEP_NOISE.number(record_dp_offset(1, PHASE_UNIKD)) == 41 + 16 * 2
    assert (INIT_MODELS, INIT_DANN_TEACHER, INIT_SOURCE_TEACHER) == (0, 100, 101)
    assert (SOURCE_STREAM, client_stream(0), CENTRAL_STREAM) == (0, 1, 1_000_003)
    assert seed_for(0, 1, 2, 40) == 8118695427085134015
    assert seed_for(7, SOURCE_STREAM, 1, 7) == 923101666392663022


def purpose_argument(call: ast.Call) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == "purpose":
            return kw.value
    return call.args[3] if len(call.args) > 3 else None


def untabled_draws(source: str) -> list[int]:
    """Lines calling a seed deriver whose purpose is not `<table entry>.number(...)` (or the
    `purpose` parameter a wrapper passes through)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if (fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)) \
                not in SEED_DERIVERS:
            continue
        arg = purpose_argument(node)
        from_table = isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) \
            and arg.func.attr == "number"
        if not (from_table or (isinstance(arg, ast.Name) and arg.id == "purpose")):
            bad.append(node.lineno)
    return bad


def test_every_seed_draw_takes_its_purpose_from_the_table():
    found = []
    for pkg in ("shared", "client", "server", "bench"):
        for file in sorted((REPO_ROOT / pkg).rglob("*.py")):
            found += [f"{file.relative_to(REPO_ROOT)}:{line}"
                      for line in untabled_draws(file.read_text())]
    assert found == []


def test_the_draw_checker_catches_a_literal_purpose():
    assert untabled_draws("g = generator_for(s, 0, 1, 7)\nh = dp_generator(s, 1, 0, 40 + 16, k)\n"
                          "i = seed_for(s, 0, 1)\nj = seed_for(s, 0, 1, BATCHES.number())\n") \
        == [1, 2, 3]
