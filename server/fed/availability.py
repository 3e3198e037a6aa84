"""Simulated devices that come and go: which clients of a population are online at a round.

A phone is online when it is charging, idle and on Wi-Fi: for a client k at round r the
simulator draws "on" with probability p_k(r), independently per (seed, client, round), so a
run, and a resumed run, sees the same devices every time. Without a period p_k(r) is
`fed.availability`; with `fed.availability_period` P > 0 it follows a day of P rounds,

    p_k(r) = availability * (1 + swing * sin(2 pi (r / P + phase_k))), clipped to [0, 1],

each client with its own seeded phase (time zones). One generator per (seed, round) draws the
whole population at once, client k taking the k-th number: the cost of a round is one vector
of uniforms, whatever the population (100,000 clients: about a millisecond).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.clock.seeding import AVAILABILITY, AVAILABILITY_PHASE, CENTRAL_STREAM, seed_for


@dataclass
class Availability:
    population: int
    probability: float = 1.0  # fed.availability
    period: int = 0  # fed.availability_period (rounds per simulated day; 0: none)
    swing: float = 0.5  # fed.availability_swing
    seed: int = 0
    _phase: np.ndarray | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_config(cls, fed, seed: int, population: int) -> Availability | None:
        """The config's model over `population` clients; None when every client is always
        online."""
        if fed.availability >= 1.0 and not fed.availability_period:
            return None
        return cls(population, fed.availability, fed.availability_period,
                   fed.availability_swing, seed)

    def probabilities(self, rnd: int) -> np.ndarray:
        """p_k(rnd) for every client k."""
        if not self.period:
            return np.full(self.population, self.probability)
        if self._phase is None:  # the clients' time zones, drawn once
            rng = np.random.default_rng(seed_for(self.seed, CENTRAL_STREAM, 0,
                                                 AVAILABILITY_PHASE.number()))
            self._phase = rng.random(self.population)
        wave = np.sin(2 * np.pi * (rnd / self.period + self._phase))
        return np.clip(self.probability * (1 + self.swing * wave), 0.0, 1.0)

    def online(self, rnd: int) -> np.ndarray:
        """The indices (client ids) of the clients online at round `rnd`, ascending."""
        rng = np.random.default_rng(seed_for(self.seed, CENTRAL_STREAM, rnd,
                                             AVAILABILITY.number()))
        return np.flatnonzero(rng.random(self.population) < self.probabilities(rnd))
