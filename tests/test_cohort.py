"""Cross-device federations (issue 27): a seeded cohort per round, devices that come and go,
a population held lazily. Real in-process federations on the embedded synthetic data; the
deployed late joiner is tests/test_deploy.py's."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from server.fed.availability import Availability
from server.fed.cohort import CohortPolicy, Roster, sample_clients
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.fed.run import CLIENT_APP
from server.fed.run_folder import write_fed_run
from shared.config import load_config
from shared.config.loader import ConfigError
from shared.data.partition import PartitionSpec, population_indices
from shared.errors import UnikdError
from shared.protocol import wire
from shared.protocol.packing import unpack_content
from shared.protocol.records import student_state

FAST = ["fed.rounds=4", "teacher.epochs=1", "distill.epochs=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """One teacher checkpoint for every run here: the runs time UNI-KD rounds only."""
    from server.central.teacher import save_teacher, train_teacher
    from shared.data.scenario import load_scenario

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    cfg = load_config(overrides=["teacher.epochs=1"])
    data = load_scenario(cfg.data)
    save_teacher(path, train_teacher(cfg, data, False, []), cfg, data)
    return path


def run(teacher, sets, grid=None, on_round=None, tap=None):
    cfg = load_config(overrides=FAST + [f"teacher.checkpoint={teacher}", *sets])
    grid = grid or InProcessGrid(load_component(CLIENT_APP), cfg.fed.clients, tap=tap)
    return cfg, grid, federate(grid, cfg, progress=False, on_round=on_round)


def digest(result) -> list[torch.Tensor]:
    return [v.clone() for _, v in sorted(student_state(result.cloud.nets).items())]


# ---------------------------------------------------------------- sampling, policy, availability


def test_a_cohort_is_a_seeded_sorted_sample_of_the_given_clients():
    pool = list(range(0, 2000, 2))
    a = sample_clients(pool, 50, seed=3, rnd=7)
    assert a == sorted(a) and len(set(a)) == 50 and set(a) <= set(pool)
    assert a == sample_clients(list(reversed(pool)), 50, seed=3, rnd=7)  # order-free
    assert a != sample_clients(pool, 50, seed=3, rnd=8)  # a new cohort each round
    assert a != sample_clients(pool, 50, seed=4, rnd=7)
    assert sample_clients(pool, 0, 3, 7) == pool == sample_clients(pool, 5000, 3, 7)


def test_the_roster_samples_by_client_id_whatever_the_node_ids():
    """A deployment's node ids are new every run: the same clients are drawn anyway."""
    first, second = Roster(), Roster()
    for client in range(30):
        first.admit(1000 + client, client)
        second.admit(987_654_321 - 7 * client, client)
    avail_a, avail_b = sorted(first.client_of), sorted(second.client_of)
    pick_a = [first.client_of[n] for n in first.cohort(avail_a, 5, 0, 2)]
    pick_b = [second.client_of[n] for n in second.cohort(avail_b, 5, 0, 2)]
    assert sorted(pick_a) == sorted(pick_b)
    first.admit(5000, 3)  # client 3 is back under a new node id
    assert 1003 not in first.client_of and first.node_of[3] == 5000


def test_bad_cohort_settings_are_refused_naming_the_keys():
    with pytest.raises(ConfigError, match="clients_per_round"):
        load_config(overrides=["fed.clients_per_round=-1"])
    with pytest.raises(ConfigError, match="availability"):
        load_config(overrides=["fed.availability=1.5"])
    cfg = load_config(overrides=["fed.clients_per_round=2", "fed.min_clients=3"])
    with pytest.raises(UnikdError, match="fed.clients_per_round=2 is below fed.min_clients=3"):
        CohortPolicy.from_fed(cfg.fed)
    cfg = load_config(overrides=["fed.clients_per_round=5", "fed.min_available=3"])
    with pytest.raises(UnikdError, match="fed.min_available=3 is below"):
        CohortPolicy.from_fed(cfg.fed)
    off = CohortPolicy.from_fed(load_config().fed)
    assert not off.dynamic and off.start_with == 3  # the cross-silo default: fed.clients


def test_availability_is_seeded_per_round_and_follows_its_day():
    model = Availability(20_000, probability=0.3, seed=1)
    on = model.online(5)
    assert np.array_equal(on, Availability(20_000, probability=0.3, seed=1).online(5))
    assert not np.array_equal(on, model.online(6))
    assert abs(len(on) / 20_000 - 0.3) < 0.02
    day = Availability(20_000, probability=0.4, period=24, swing=0.5, seed=1)
    p = day.probabilities(0)
    assert p.min() < 0.25 and p.max() > 0.55  # time zones: someone is at night, someone not
    k = int(np.argmax(p))
    assert day.probabilities(12)[k] < p[k]  # half a day later it is that client's night


def test_a_population_client_draws_its_windows_alone():
    a = population_indices(500, 99_999, 8, seed=0)
    assert torch.equal(a, population_indices(500, 99_999, 8, seed=0))
    assert len(a) == 8 and len(set(a.tolist())) == 8 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, population_indices(500, 99_998, 8, seed=0))
    assert len(population_indices(5, 0, 8, seed=0)) == 5  # a small pool: all of it
    assert str(PartitionSpec.parse("population:8")) == "population:8"
    for bad in ("population", "population:0", "population:x", "iid:3"):
        with pytest.raises(UnikdError, match="partition"):
            PartitionSpec.parse(bad)


def test_the_harness_holds_nothing_per_client_until_it_takes_part():
    grid = InProcessGrid(load_component(CLIENT_APP), 100_000)
    assert len(grid.contexts) == 0 and len(list(grid.get_node_ids())) == 100_000
    assert grid.contexts[101_000 - 1].node_config["partition-id"] == 99_999
    with pytest.raises(KeyError):
        grid.contexts[101_000]


# ---------------------------------------------------------------- federations with a cohort


def test_a_full_cohort_reproduces_the_cross_silo_run_bit_for_bit(teacher):
    """Sampling every node each round, through the cross-device path (nodes looked at again
    every round), weights and BN statistics come out exactly as today's run."""
    _, _, silo = run(teacher, ["fed.clients=4"])
    _, _, full = run(teacher, ["fed.clients=4", "fed.clients_per_round=4",
                               "fed.min_available=4"])
    assert [c["cohort"] for c in full.cohorts] == [[0, 1, 2, 3]] * 4
    assert all(torch.equal(a, b) for a, b in zip(digest(silo), digest(full)))
    assert silo.final["mf1"] == full.final["mf1"]
    assert not silo.cohorts and "cohort" not in silo.rounds[0]


def test_cohorts_are_sampled_recorded_and_reproducible(teacher, tmp_path):
    sets = ["fed.clients=12", "fed.clients_per_round=4", "fed.rounds=6"]
    sends: Counter = Counter()

    def tap(msg, reply):  # how often each node is sent the teacher snapshot
        if msg.metadata.message_type == wire.TRAIN and wire.TEACHER in msg.content:
            sends[msg.metadata.dst_node_id] += 1

    cfg, grid, res = run(teacher, sets, tap=tap)
    cohorts = [c["cohort"] for c in res.cohorts]
    assert len(cohorts) == 6 and all(len(c) == 4 for c in cohorts)
    assert len({tuple(c) for c in cohorts}) > 1  # a new sample each round
    assert [r["clients"] for r in res.rounds] == [4] * 6
    assert [r["cohort"] for r in res.rounds] == [" ".join(map(str, c)) for c in cohorts]
    # the teacher goes once to each node the first time it is drawn, never again
    assert sends == Counter({1000 + c: 1 for c in {c for co in cohorts for c in co}})
    _, _, again = run(teacher, sets)
    assert [c["cohort"] for c in again.cohorts] == cohorts
    assert again.final["mf1"] == res.final["mf1"]
    assert all(torch.equal(a, b) for a, b in zip(digest(res), digest(again)))
    _, _, other = run(teacher, sets + ["seed=1"])
    assert [c["cohort"] for c in other.cohorts] != cohorts
    write_fed_run(tmp_path, cfg, res)
    lines = (tmp_path / "cohorts.jsonl").read_text().splitlines()
    assert [json.loads(x)["cohort"] for x in lines] == cohorts
    assert "cohort" in (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")


def test_the_aggregate_weights_the_cohorts_own_counts(teacher):
    """Each round's update is the count-weighted mean over the cohort: with the source's half
    removed, the cloud's combined gradient equals the hand-made mean of the cohort's replies."""
    from server.fed import rounds
    from server.fed.aggregate import weighted_mean

    seen = {}
    orig = rounds.finish_round

    def spy(fed, opened, updates):
        total = sum(u.num_examples for u in updates)
        want = {k: sum(u.arrays[wire.STUDENT_GRAD][k] * (u.num_examples / total)
                       for u in updates) for k in updates[0].arrays[wire.STUDENT_GRAD]}
        got = weighted_mean(updates, wire.STUDENT_GRAD)
        seen[opened.number] = (sorted(u.client for u in updates), fed.cohort,
                               all(torch.allclose(got[k], want[k]) for k in want))
        return orig(fed, opened, updates)

    rounds.finish_round = spy
    try:
        _, _, res = run(teacher, ["fed.clients=9", "fed.clients_per_round=3",
                                  "fed.partition=dirichlet:0.5"])
    finally:
        rounds.finish_round = orig
    for rnd, (clients, cohort, ok) in seen.items():
        assert clients == res.cohorts[rnd - 1]["cohort"] == [n - 1000 for n in cohort]
        assert ok


def test_devices_come_and_go_and_a_late_one_joins(teacher):
    """Availability 0.5 over 10 clients; node 1009 connects only after round 2: it is asked
    its count, drawn into later cohorts and sent the teacher then."""
    sets = ["fed.clients=10", "fed.clients_per_round=3", "fed.min_available=3",
            "fed.availability=0.6", "fed.rounds=8", "fed.straggler_fraction=0.2"]
    cfg = load_config(overrides=FAST + [f"teacher.checkpoint={teacher}", *sets])
    firsts = {}

    def tap(msg, reply):
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type == wire.TRAIN and wire.TEACHER in msg.content:
            firsts.setdefault(node, int(msg.metadata.group_id))

    grid = InProcessGrid(load_component(CLIENT_APP), 10, tap=tap)
    grid.online.discard(1009)

    def on_round(rnd, cloud, row):
        if rnd == 2:
            grid.online.add(1009)

    res = federate(grid, cfg, progress=False, on_round=on_round)
    drawn = [set(c["cohort"]) for c in res.cohorts]
    assert all(9 not in d for d in drawn[:2]) and any(9 in d for d in drawn[2:])
    assert firsts[1009] > 2
    avail = Availability(10, 0.6, seed=0)
    for c in res.cohorts:  # every cohort is drawn from the clients online at its round
        assert set(c["cohort"]) <= set(avail.online(c["round"]).tolist())
        assert set(c["replied"]) <= set(c["cohort"])
    assert any(len(c["replied"]) < len(c["cohort"]) for c in res.cohorts)  # stragglers dropped
    assert len(res.rounds) + sum(not c["cohort"] for c in res.cohorts) <= 8


def test_too_few_available_devices_skip_the_round_without_moving(teacher):
    _, _, res = run(teacher, ["fed.clients=6", "fed.clients_per_round=2", "fed.min_available=5",
                              "fed.availability=0.5", "fed.rounds=6"])
    skipped = [c for c in res.cohorts if not c["cohort"]]
    assert skipped and all(c["available"] < 5 for c in skipped)
    assert len(res.rounds) == 6 - len(skipped)


def test_an_evaluation_sample_scores_fewer_nodes(teacher):
    _, _, res = run(teacher, ["fed.clients=8", "fed.clients_per_round=2", "fed.eval_clients=3"])
    assert res.final["clients"] == 3


def test_record_dp_charges_only_the_cohort(teacher):
    _, _, res = run(teacher, ["fed.clients=6", "fed.clients_per_round=2", "fed.dp=record",
                              "fed.rounds=3", "fed.dp_epsilon=8", "fed.teacher_placement=cloud"])
    for c in res.cohorts:
        charged = {r["client"] for r in res.privacy.rows
                   if r["phase"] == "unikd" and r["round"] == c["round"]}
        assert charged == set(c["cohort"]) and len(charged) == 2


def test_unpacked_teacher_records_still_travel(teacher):
    """The shared teacher memo only skips rebuilding: a new node is still sent the snapshot."""
    got = []

    def tap(msg, reply):
        if msg.metadata.message_type == wire.TRAIN:
            content = unpack_content(msg.content)
            got.append(wire.TEACHER in content)

    run(teacher, ["fed.clients=3", "fed.rounds=2"], tap=tap)
    assert got == [True] * 3 + [False] * 3


def test_secure_aggregation_runs_within_the_cohort(teacher):
    from shared.privacy.secagg_math import threshold_for

    _, _, res = run(teacher, ["fed.clients=8", "fed.clients_per_round=3", "fed.rounds=2",
                              "fed.secure_aggregation=true"])
    for row in res.rounds:
        assert row["secagg_u0"] == 3 and row["secagg_threshold"] == threshold_for(3, 0.6)


# ---------------------------------------------------------------- client-level DP that samples


def test_poisson_cohorts_are_accounted_with_their_sampling_rate():
    from server.fed.dp.client_level import calibrate_noise, epsilon_after

    z_all, z_sampled = calibrate_noise(3.0, 1e-5, 200), calibrate_noise(3.0, 1e-5, 200, 0.05)
    assert z_sampled < z_all / 3  # amplification by sampling: far less noise for one epsilon
    assert epsilon_after(z_sampled, 200, 1e-5, 0.05) <= 3.0 + 1e-3
    assert epsilon_after(z_sampled, 200, 1e-5, 1.0) > 3.0  # unsampled, that noise would not do


def test_central_dp_needs_poisson_cohorts():
    cfg = load_config(overrides=["fed.clients=100", "fed.clients_per_round=10", "fed.dp=central"])
    with pytest.raises(UnikdError, match="fed.cohort_sampling=poisson"):
        CohortPolicy.from_fed(cfg.fed)
    with pytest.raises(UnikdError, match="needs fed.clients_per_round"):
        CohortPolicy.from_fed(load_config(overrides=["fed.cohort_sampling=poisson"]).fed)


def test_dp_fedavg_divides_by_the_expected_cohort(teacher):
    _, _, res = run(teacher, ["fed.clients=20", "fed.clients_per_round=4", "fed.rounds=6",
                              "fed.cohort_sampling=poisson", "fed.dp=central",
                              "fed.dp_epsilon=8"])
    sizes = [len(c["cohort"]) for c in res.cohorts]
    assert len(set(sizes)) > 1  # Poisson: the cohort's size varies
    for row in res.rounds:
        assert row["dp_noise_std"] == pytest.approx(row["dp_noise_multiplier"] * 1.0 / 4)
    assert 0 < res.rounds[-1]["dp_epsilon"] <= 8.0
