"""Record-level DP accounting both sides use: the cloud plans and reports a run's epsilon
(server/fed/dp/); every edge keeps its own ledger of what it actually spent and refuses
rounds past its operator's budget (client/node/budget.py), so a node's guarantee does not rest
on the cloud's word.

All composition is Renyi DP over RDP_ORDERS with Google's `dp-accounting` (its RdpAccountant
for one step's curve, its conversion to (epsilon, delta)); nothing here invents accounting.
"""

from __future__ import annotations

import math
from functools import lru_cache

RDP_ORDERS = tuple([*range(2, 65), 80, 96, 128, 160, 192, 256])  # integer orders: exact, fast


def poisson_gaussian(q: float, z: float):
    from dp_accounting import dp_event

    return dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))


def record_event(z: float, count_std: float, steps: tuple[tuple[float, int], ...]):
    """The whole run for one node: its released count, then every DP-SGD step (q, count)."""
    from dp_accounting import dp_event

    events = [dp_event.GaussianDpEvent(count_std)] if count_std > 0 else []
    events += [dp_event.SelfComposedDpEvent(poisson_gaussian(q, z), s) for q, s in steps if s]
    return dp_event.ComposedDpEvent(events)


@lru_cache(maxsize=256)
def unit_rdp(kind: str, a: float, b: float) -> tuple[float, ...]:
    """RDP curve (at RDP_ORDERS) of one Gaussian count release or one Poisson-Gaussian step."""
    from dp_accounting import dp_event, rdp

    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(dp_event.GaussianDpEvent(a) if kind == "count" else poisson_gaussian(a, b))
    return tuple(float(v) for v in acc.rdp)


def step_rdp(q: float, z: float) -> tuple[float, ...]:
    """One Poisson-sampled Gaussian DP-SGD step; infinite without noise."""
    if z <= 0:
        return (math.inf,) * len(RDP_ORDERS)
    return unit_rdp("step", q, z)


def count_rdp(std: float) -> tuple[float, ...]:
    """One Gaussian release of a node's window count (sensitivity 1)."""
    return unit_rdp("count", std, 0.0) if std > 0 else (math.inf,) * len(RDP_ORDERS)


def add_rdp(total: tuple[float, ...], unit: tuple[float, ...], times: int = 1
            ) -> tuple[float, ...]:
    """RDP composes by addition at every order."""
    return tuple(t + times * u for t, u in zip(total, unit))


def epsilon_from_rdp(total: tuple[float, ...], delta: float) -> float:
    """dp-accounting's conversion of an RDP curve to epsilon at `delta`."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not any(total):
        return 0.0
    if any(math.isinf(t) for t in total):
        return math.inf
    return float(compute_epsilon(list(RDP_ORDERS), list(total), delta)[0])


def record_epsilon(z: float, count_std: float, delta: float,
                   steps: tuple[tuple[float, int], ...]) -> float:
    """Epsilon of one node after `steps` ((q, number of steps) per phase), plus its count.

    RDP adds up under composition, so each phase's one-step curve is computed once by
    dp-accounting's RdpAccountant and scaled; dp-accounting converts the sum to (eps, delta).
    """
    if z <= 0 and any(s for _, s in steps):
        return math.inf
    total = count_rdp(count_std) if count_std > 0 else (0.0,) * len(RDP_ORDERS)
    for q, s in steps:
        if s:
            total = add_rdp(total, step_rdp(q, z), s)
    return epsilon_from_rdp(total, delta)
