"""Who takes part in a round of a cross-device federation (issue 27).

A cross-silo federation (the default) fixes its nodes before round 1 and asks every one of them
every round. With `fed.clients_per_round` or `fed.min_available` set the federation is
cross-device instead:

* round 1 starts once `fed.min_available` nodes are connected (not `fed.clients` of them);
* before each round the cloud looks again at which nodes are available; a node it has not
  seen yet (a device that connected late, or came back with a new node id) is asked its count
  first and is then one of the candidates (`Roster.admit`);
* the round's cohort is a seeded sample of `fed.clients_per_round` of the available nodes
  (all of them when 0), drawn by client id so that a deployment, whose node ids are new every
  run, samples the same clients as a simulation of it (`sample_clients`).

The cohort is recorded per round (rounds.csv's `cohort` column, the run folder's
`cohorts.jsonl`). Aggregation needs nothing else: the means weight each update by its count
over the cohort's total (aggregate.weighted_mean), BN statistics included, and secure
aggregation runs among the cohort with its threshold taken on the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.clock.seeding import CENTRAL_STREAM, COHORT, EVAL_SAMPLE, Purpose, seed_for
from shared.errors import UnikdError


@dataclass(frozen=True)
class CohortPolicy:
    """The config's cross-device settings (fed.clients_per_round, min_available,
    eval_clients)."""

    per_round: int = 0  # 0: every available node
    min_available: int = 0  # 0: cross-silo, fed.clients before round 1
    eval_clients: int = 0  # 0: every node is scored
    clients: int = 1  # fed.clients
    sampling: str = "fixed"  # fed.cohort_sampling: fixed | poisson

    @classmethod
    def from_fed(cls, fed) -> CohortPolicy:
        policy = cls(fed.clients_per_round, fed.min_available, fed.eval_clients, fed.clients,
                     fed.cohort_sampling)
        policy.check(fed.min_clients)
        if fed.dp == "central" and policy.sampled and policy.sampling != "poisson":
            raise UnikdError(f"fed.dp=central with fed.clients_per_round={policy.per_round} of "
                             f"fed.clients={policy.clients}: client-level DP accounts Poisson "
                             f"cohorts (DP-FedAvg); set fed.cohort_sampling=poisson")
        if policy.sampling == "poisson" and not policy.per_round:
            raise UnikdError("fed.cohort_sampling=poisson needs fed.clients_per_round, the "
                             "expected cohort size")
        return policy

    @property
    def sampled(self) -> bool:
        """Only a sample of the population trains each round."""
        return 0 < self.per_round < self.clients

    @property
    def rate(self) -> float:
        """Poisson sampling: each client's probability of being in a round's cohort."""
        return min(1.0, self.per_round / self.clients) if self.per_round else 1.0

    @property
    def dynamic(self) -> bool:
        """Cross-device: the nodes are looked at again every round and may be sampled."""
        return self.per_round > 0 or self.min_available > 0

    @property
    def start_with(self) -> int:
        """How many nodes round 1 waits for."""
        return self.min_available or (1 if self.dynamic else self.clients)

    def check(self, min_clients: int) -> None:
        if self.per_round and self.per_round < min_clients:
            raise UnikdError(f"fed.clients_per_round={self.per_round} is below "
                             f"fed.min_clients={min_clients}: no round could ever be applied")
        if self.min_available and self.per_round and self.min_available < self.per_round:
            raise UnikdError(f"fed.min_available={self.min_available} is below "
                             f"fed.clients_per_round={self.per_round}: a round could start "
                             f"with fewer nodes than its cohort; raise fed.min_available to "
                             f"at least {self.per_round} or leave it 0")


def poisson_clients(clients: list[int], rate: float, seed: int, rnd: int) -> list[int]:
    """Each of `clients` independently with probability `rate`, sorted: client k takes the k-th
    uniform of one generator of (seed, round), so whether k is drawn does not depend on which
    other clients are available."""
    pool = sorted(clients)
    if not pool:
        return []
    rng = np.random.default_rng(seed_for(seed, CENTRAL_STREAM, rnd, COHORT.number()))
    u = rng.random(pool[-1] + 1)
    return [c for c in pool if u[c] < rate]


def sample_clients(clients: list[int], size: int, seed: int, rnd: int,
                   purpose: Purpose = COHORT) -> list[int]:
    """`size` of `clients` (client ids, any order), sorted; all of them when size is 0 or at
    least their number. The draw depends on (seed, round, purpose) and the set of ids alone."""
    pool = sorted(clients)
    if not size or size >= len(pool):
        return pool
    rng = np.random.default_rng(seed_for(seed, CENTRAL_STREAM, rnd, purpose.number()))
    picked = rng.choice(len(pool), size=size, replace=False)
    return sorted(pool[int(i)] for i in picked)


@dataclass
class Roster:
    """The nodes a cross-device federation knows: node id <-> client id, and who has a count."""

    client_of: dict[int, int] = field(default_factory=dict)  # node id -> client id
    node_of: dict[int, int] = field(default_factory=dict)  # client id -> node id (latest)

    def admit(self, node: int, client: int) -> None:
        """A node that answered the count query; a client back under a new node id moves."""
        old = self.node_of.get(client)
        if old is not None and old != node:
            self.client_of.pop(old, None)
        self.client_of[node] = client
        self.node_of[client] = node

    def unknown(self, nodes: list[int]) -> list[int]:
        """The nodes among `nodes` that have not answered a count query yet."""
        return [n for n in nodes if n not in self.client_of]

    def cohort(self, available: list[int], size: int, seed: int, rnd: int,
               purpose: Purpose = COHORT, rate: float | None = None) -> list[int]:
        """The node ids of round `rnd`'s sample of the available, known nodes, sorted: `size`
        of them, or with `rate` each with that probability (Poisson)."""
        clients = [self.client_of[n] for n in available if n in self.client_of]
        picked = (sample_clients(clients, size, seed, rnd, purpose) if rate is None else
                  poisson_clients(clients, rate, seed, rnd))
        return sorted(self.node_of[c] for c in picked)


def eval_sample(roster: Roster, nodes: list[int], size: int, seed: int, rnd: int) -> list[int]:
    """The nodes a federated evaluation asks: all of `nodes`, or a seeded sample of `size`."""
    if not size or size >= len(nodes):
        return nodes
    return roster.cohort(nodes, size, seed, rnd, EVAL_SAMPLE)
