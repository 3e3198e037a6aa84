"""The per-domain federation groups are the committed, seeded draw, disjoint from AdaTime's
scenarios, and `unikd bench federated --partition per-domain` reads them as five 5-edge
federations."""

from __future__ import annotations

import runpy
from pathlib import Path

from shared.data.datasets import get_spec, parse_scenario_list, scenario_targets

ROOT = Path(__file__).resolve().parents[1]


def test_committed_domain_groups_are_the_seeded_draw_and_disjoint_from_adatime():
    tool = runpy.run_path(str(ROOT / "bench" / "draw_domain_groups.py"))
    listed = (ROOT / "configs" / "har-domain-groups.txt").read_text()
    assert listed == tool["text"](tool["draw"]())
    groups = parse_scenario_list(listed.splitlines()[-1])
    spec = get_spec("HAR")
    adatime = {tuple(map(str, p)) for p in [*spec.main_scenarios, *spec.extra_scenarios]}
    assert len(adatime) == 10
    assert len(groups) == 5
    subjects = []
    for src, trg in groups:
        targets = scenario_targets(trg)
        assert len(targets) == len(set(targets)) == 5
        subjects += [src, *targets]
        for t in targets:
            assert (src, t) not in adatime and (t, src) not in adatime
    assert sorted(subjects, key=int) == [str(s) for s in range(1, 31)]  # each subject once


def test_bench_federated_runs_each_group_as_one_edge_per_target():
    from server.bench.federated import clients_per_scenario
    from shared.data.datasets import format_scenario

    listed = (ROOT / "configs" / "har-domain-groups.txt").read_text().splitlines()[-1]
    scenarios = [format_scenario(p) for p in parse_scenario_list(listed)]
    assert ";".join(scenarios) == listed
    assert set(clients_per_scenario(scenarios, "per-domain", None).values()) == {5}
