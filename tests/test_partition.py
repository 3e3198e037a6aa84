"""shared.data.partition: spec parsing, iid/dirichlet splits of one domain, per-domain client mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import UnikdError
from shared.data.partition import PartitionSpec, client_domains, partition_indices

IID = PartitionSpec("iid")
PER_DOMAIN = PartitionSpec("per-domain")
CLASSES = 6


def balanced_labels(n: int = 1200, classes: int = CLASSES) -> torch.Tensor:
    return torch.arange(n) % classes


def mean_max_share(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    shares = []
    for p in parts:
        h = torch.bincount(labels[p], minlength=CLASSES).float()
        shares.append(float(h.max() / h.sum()))
    return float(np.mean(shares))


def assert_partition(parts: list[torch.Tensor], n: int, k: int) -> None:
    assert len(parts) == k
    for p in parts:
        assert p.dtype == torch.long and p.dim() == 1
        assert torch.equal(p, p.sort().values), "each client's indices are sorted"
    allidx = torch.cat(parts)
    assert len(allidx) == n, "disjoint: no index given twice"
    assert torch.equal(allidx.sort().values, torch.arange(n)), "complete coverage"


# ---- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, alpha", [
    ("iid", "iid", None), (" IID ", "iid", None),
    ("dirichlet:0.5", "dirichlet", 0.5), ("Dirichlet: 1e-1", "dirichlet", 0.1),
    ("dirichlet:1000", "dirichlet", 1000.0),
    ("per-domain", "per-domain", None), ("per_domain", "per-domain", None),
])
def test_parse_good(text, kind, alpha):
    spec = PartitionSpec.parse(text)
    assert (spec.kind, spec.alpha) == (kind, alpha)
    assert PartitionSpec.parse(str(spec)) == spec  # str() round-trips


@pytest.mark.parametrize("text", [
    "", "random", "dirichlet", "dirichlet:", "dirichlet:abc", "dirichlet:0", "dirichlet:-1",
    "dirichlet:nan", "dirichlet:inf", "iid:3", "per-domain:2", "dir:0.5",
])
def test_parse_bad_names_the_text(text):
    with pytest.raises(UnikdError) as err:
        PartitionSpec.parse(text)
    assert f"'{text}'" in str(err.value)


def test_direct_construction_is_validated():
    with pytest.raises(UnikdError):
        PartitionSpec("dirichlet")
    with pytest.raises(UnikdError):
        PartitionSpec("dirichlet", 0.0)
    with pytest.raises(UnikdError):
        PartitionSpec("iid", 0.5)
    with pytest.raises(UnikdError):
        PartitionSpec("shards")  # type: ignore[arg-type]


# ---- iid / dirichlet -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [20, 101, 997])
@pytest.mark.parametrize("k", [1, 3, 7, 10])
def test_iid_sizes_differ_by_at_most_one(n, k):
    sizes = [len(p) for p in partition_indices(balanced_labels(n), k, IID, seed=3)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not():
    y = balanced_labels()
    iid = np.mean([mean_max_share(y, partition_indices(y, 10, IID, s)) for s in range(5)])
    skew = np.mean([mean_max_share(y, partition_indices(y, 10, PartitionSpec("dirichlet", 0.1), s))
                    for s in range(5)])
    flat_parts = partition_indices(y, 10, PartitionSpec("dirichlet", 1000.0), 0)
    assert iid < 0.3
    assert skew > iid + 0.3, (skew, iid)  # ~0.8 vs ~0.21 with 6 classes
    assert mean_max_share(y, flat_parts) < 0.3
    for p in flat_parts:  # every client sees every class in near-equal share
        share = torch.bincount(y[p], minlength=CLASSES).float() / len(p)
        assert (share - 1 / CLASSES).abs().max() < 0.1
    sizes = [len(p) for p in flat_parts]
    assert max(sizes) < 1.5 * min(sizes)


@pytest.mark.parametrize("spec", [IID, PartitionSpec("dirichlet", 0.5)], ids=str)
def test_deterministic_from_seed(spec):
    y = balanced_labels(300)
    a = partition_indices(y, 5, spec, seed=7)
    b = partition_indices(y, 5, spec, seed=7)
    c = partition_indices(y, 5, spec, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_global_rngs_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    partition_indices(balanced_labels(300), 5, PartitionSpec("dirichlet", 0.3), seed=1)
    partition_indices(balanced_labels(300), 5, IID, seed=1)
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])


@pytest.mark.parametrize("spec", [IID, PartitionSpec("dirichlet", 0.1),
                                  PartitionSpec("dirichlet", 1000.0)], ids=str)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_disjoint_and_complete(spec, k):
    for n, seed in ((157, 0), (600, 1), (40, 2)):
        y = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(seed))
        parts = partition_indices(y, k, spec, seed)
        assert_partition(parts, n, k)
        assert min(len(p) for p in parts) >= 2


def test_per_domain_one_client_is_whole_domain_and_k_over_1_is_refused():
    y = balanced_labels(50)
    assert_partition(partition_indices(y, 1, PER_DOMAIN, 0), 50, 1)
    with pytest.raises(UnikdError, match="num_clients=1"):
        partition_indices(y, 3, PER_DOMAIN, 0)


@pytest.mark.parametrize("spec", [IID, PartitionSpec("dirichlet", 0.1), PER_DOMAIN], ids=str)
def test_one_client_gets_everything_in_order(spec):
    y = torch.tensor([3, 0, 2, 2, 1, 0, 5])
    (only,) = partition_indices(y, 1, spec, seed=11)
    assert torch.equal(only, torch.arange(7))


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
def test_min_size_guaranteed_even_for_extreme_skew(alpha):
    y = balanced_labels(40)
    for seed in range(10):
        parts = partition_indices(y, 10, PartitionSpec("dirichlet", alpha), seed)
        assert_partition(parts, 40, 10)
        assert min(len(p) for p in parts) >= 2
    tight = partition_indices(y, 10, PartitionSpec("dirichlet", alpha), 0, min_size=4)
    assert [len(p) for p in tight] == [4] * 10
    assert_partition(tight, 40, 10)


def test_tiny_alpha_does_not_break():
    parts = partition_indices(balanced_labels(100), 4, PartitionSpec("dirichlet", 1e-8), seed=0)
    assert_partition(parts, 100, 4)


@pytest.mark.parametrize("spec", [IID, PartitionSpec("dirichlet", 0.5)], ids=str)
def test_too_few_windows_is_explained(spec):
    with pytest.raises(UnikdError, match=r"cannot split 5 windows over 3 clients"):
        partition_indices(balanced_labels(5), 3, spec, seed=0)
    assert_partition(partition_indices(balanced_labels(5), 3, spec, 0, min_size=1), 5, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=0), "num_clients"), (dict(num_clients=2.0), "num_clients"),
    (dict(seed=-1), "seed"), (dict(min_size=-1), "min_size"),
    (dict(labels=torch.zeros(4, 2, dtype=torch.long)), "1-D"),
    (dict(labels=torch.zeros(8)), "integers"),
])
def test_bad_arguments(kwargs, match):
    args = dict(labels=balanced_labels(8), num_clients=2, spec=IID, seed=0) | kwargs
    with pytest.raises(UnikdError, match=match):
        partition_indices(**args)


# ---- client_domains --------------------------------------------------------------------------

def test_client_domains_per_domain():
    assert client_domains("11,13,16,18,23", 5, PER_DOMAIN) == ["11", "13", "16", "18", "23"]
    assert client_domains(" 11 , 13 ", 2, PER_DOMAIN) == ["11", "13"]
    assert client_domains("7", 1, PER_DOMAIN) == ["7"]


@pytest.mark.parametrize("target, k, match", [
    ("11,13,16", 2, "lists 3 domain.*2 client"),
    ("11,13", 3, "lists 2 domain.*3 client"),
    ("11,,13", 3, "comma list"),
    ("", 1, "comma list"),
    ("11,11", 2, "more than once"),
])
def test_client_domains_per_domain_errors(target, k, match):
    with pytest.raises(UnikdError, match=match):
        client_domains(target, k, PER_DOMAIN)


@pytest.mark.parametrize("spec", [IID, PartitionSpec("dirichlet", 0.5)], ids=str)
def test_client_domains_shared_target(spec):
    assert client_domains("11", 4, spec) == ["11"] * 4
    assert client_domains(" 11 + 13 ", 3, spec) == ["11,13"] * 3  # one pool of both domains
    for bad, match in (("11,11", "more than once"), ("11,,13", "comma list"), ("", "comma list")):
        with pytest.raises(UnikdError, match=match):
            client_domains(bad, 2, spec)
    with pytest.raises(UnikdError, match="num_clients"):
        client_domains("11", 0, spec)


def test_iid_over_several_targets_splits_their_pooled_windows():
    """`iid` with targets 1+2 gives every client a disjoint share of both domains' windows
    together (what a K = 100 federation over a few people needs); one target is split as ever."""
    from client.node.local_data import TRAIN_SALT, simulated_split

    def windows(target: str, k: int) -> list[torch.Tensor]:
        return [simulated_split("SYNTH", "", 1.0, target, "iid", k, c, 0)[0].x for c in range(k)]

    def keys(x: torch.Tensor) -> list[bytes]:
        return [w.numpy().tobytes() for w in x]

    one, two = windows("1", 1)[0], windows("2", 1)[0]
    parts = windows("1+2", 4)
    assert sorted(len(p) for p in parts) == [240, 240, 240, 241]
    assert sorted(k for p in parts for k in keys(p)) == sorted(keys(one) + keys(two))  # once each
    first = set(keys(one))
    assert all(0 < sum(k in first for k in keys(p)) < len(p) for p in parts)  # both people each
    labels = simulated_split("SYNTH", "", 1.0, "1", "iid", 1, 0, 0)[0].y
    idx = partition_indices(labels, 2, IID, TRAIN_SALT)  # seed 0: 0 * 1000 + TRAIN_SALT
    assert all(torch.equal(w, one[i]) for w, i in zip(windows("1", 2), idx))
