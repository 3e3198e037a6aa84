"""How the simulator spreads target-domain windows over K edge clients.

Three kinds (`PartitionSpec.parse`):

* ``iid`` — one target domain, shuffled and cut into K near-equal parts (sizes differ by <= 1).
* ``dirichlet:ALPHA`` — one target domain with label skew: for every class, the share each client
  gets is drawn from Dir(ALPHA, ..., ALPHA). Small ALPHA (0.1) gives each client a few dominant
  classes; large ALPHA (1000) is close to IID.
* ``per-domain`` — multi-target: every client holds a whole target domain of its own
  (`client_domains` maps clients to domains; the target lists them: ``11+13+16`` or ``11,13,16``).
* ``population:W`` — a synthetic population of any size (scale tests, issue 27): client k
  holds W windows drawn without replacement from the target pool, and W test windows likewise,
  seeded by (seed, k) alone (`population_indices`). Clients overlap, so 100,000 clients need no
  more windows than one, and nothing is decided for a client until it is asked.

A cross-device partition of real data is ``iid`` over a pool of target subjects with K in the
thousands (``2->11+13+...``, K=1000: a few windows each).

``iid`` and ``dirichlet`` given several target domains (``11+13+16``) pool their windows first and
split the pool: many small clients drawn from a few people, e.g. the K = 100 client-level DP
federation, where one HAR subject's ~105 test windows cannot give 100 clients two each.

Labels are read here ONLY by the simulator, to decide who holds which windows (the label skew of a
real deployment is something the simulator has to make up). Clients never see a label during
training and never send one: each client receives only its index set and uses the windows.

Everything is deterministic from `seed` through a private numpy Generator seeded with
``SeedSequence([seed, 0xDA7A])``; the global numpy/torch/python RNGs are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from shared.data.datasets import scenario_targets
from shared.errors import UnikdError

Kind = Literal["iid", "dirichlet", "per-domain", "population"]
KINDS: tuple[str, ...] = ("iid", "dirichlet", "per-domain", "population")
_SALT = 0xDA7A
_POPULATION_SALT = 0x9090
_REDRAWS = 20  # Dirichlet re-draws before topping up the small clients from the largest one

_FORMS = ("expected 'iid', 'dirichlet:ALPHA' (ALPHA > 0, e.g. dirichlet:0.5), 'per-domain' or "
          "'population:W' (W windows per client, an integer >= 1, e.g. population:8)")


@dataclass(frozen=True)
class PartitionSpec:
    """Which partition the simulator applies; `str(spec)` gives back the text `parse` reads."""

    kind: Kind
    alpha: float | None = None  # for dirichlet
    windows: int | None = None  # for population: windows per client

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnikdError(f"bad partition kind '{self.kind}': {_FORMS}")
        if (self.kind == "population") != (self.windows is not None):
            raise UnikdError(f"bad partition '{self.kind}' with windows={self.windows}: only "
                             "population takes (and needs) a window count")
        if self.windows is not None and (isinstance(self.windows, bool)
                                         or not isinstance(self.windows, int)
                                         or self.windows < 1):
            raise UnikdError(f"bad partition 'population:{self.windows}': W must be an integer "
                             ">= 1")
        if self.kind == "dirichlet":
            if self.alpha is None or not _positive_finite(self.alpha):
                raise UnikdError(f"bad partition 'dirichlet:{self.alpha}': ALPHA must be a finite "
                                 "number > 0, e.g. dirichlet:0.5")
        elif self.alpha is not None:
            raise UnikdError(f"bad partition '{self.kind}' with alpha={self.alpha}: "
                             "only dirichlet takes an ALPHA")

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """'iid' | 'dirichlet:0.5' | 'per-domain' (case and surrounding spaces ignored)."""
        if not isinstance(text, str):
            raise UnikdError(f"bad partition {text!r}: {_FORMS}")
        norm = text.strip().lower()
        name, sep, arg = (p.strip() for p in norm.partition(":"))
        name = name.replace("_", "-")
        if name in ("iid", "per-domain"):
            if sep:
                raise UnikdError(f"bad partition '{text}': '{name}' takes no ':ALPHA'; {_FORMS}")
            return cls(name)  # type: ignore[arg-type]
        if name == "dirichlet":
            if not arg:
                raise UnikdError(f"bad partition '{text}': dirichlet needs an ALPHA, "
                                 "e.g. dirichlet:0.5")
            try:
                alpha = float(arg)
            except ValueError:
                raise UnikdError(f"bad partition '{text}': ALPHA '{arg}' is not a number; "
                                 f"{_FORMS}") from None
            if not _positive_finite(alpha):
                raise UnikdError(f"bad partition '{text}': ALPHA must be a finite number > 0, "
                                 f"got {arg}")
            return cls("dirichlet", alpha)
        if name == "population":
            if not arg.isdigit() or int(arg) < 1:
                raise UnikdError(f"bad partition '{text}': population needs W, the windows per "
                                 f"client, an integer >= 1 (e.g. population:8)")
            return cls("population", windows=int(arg))
        raise UnikdError(f"bad partition '{text}': {_FORMS}")

    def __str__(self) -> str:
        if self.kind == "population":
            return f"population:{self.windows}"
        return f"dirichlet:{self.alpha:g}" if self.kind == "dirichlet" else self.kind


def _positive_finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_clients(num_clients: object) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
            or num_clients < 1:
        raise UnikdError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    return int(num_clients)


def partition_indices(
    labels: torch.Tensor, num_clients: int, spec: PartitionSpec, seed: int, min_size: int = 2,
) -> list[torch.Tensor]:
    """Split the windows of one target pool (one domain, or several concatenated) over
    `num_clients` clients.

    Returns one sorted int64 index tensor per client; together they are disjoint and cover
    ``range(len(labels))``. With one client the single tensor is ``arange(len(labels))``.

    `labels` (the domain's class labels, shape [N]) are used ONLY to simulate label skew for
    ``dirichlet`` (and for their length): the simulator decides who holds what. Clients never
    send labels, and nothing here gives them any.

    The same function serves a client's train windows and its test windows: call it once per
    split. Which seed each call gets (e.g. an offset for the test split, so the two splits are
    not cut by the same permutation) is the caller's business; equal (labels, K, spec, seed)
    always give equal output.

    Every client gets at least `min_size` windows (raises if ``N < K * min_size``). For
    ``dirichlet`` a draw leaving a client short is re-drawn a bounded number of times; if all
    draws fall short the short clients are topped up with random windows from the largest one.

    ``per-domain`` gives each client a whole domain of its own, so there is nothing to split:
    call it with ``num_clients=1`` on each client's domain (see `client_domains`).
    """
    K = _check_clients(num_clients)
    if not isinstance(spec, PartitionSpec):
        raise UnikdError(f"spec must be a PartitionSpec, got {type(spec).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UnikdError(f"partition seed must be an integer >= 0, got {seed!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise UnikdError(f"min_size must be an integer >= 0, got {min_size!r}")
    y = torch.as_tensor(labels)
    if y.dim() != 1:
        raise UnikdError(f"labels must be 1-D (one per window), got shape {list(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise UnikdError(f"labels must be integers, got {y.dtype}")
    n = len(y)
    if spec.kind == "population":
        raise UnikdError("partition 'population:W' draws each client's windows on its own "
                         "(population_indices); there is no split of the pool to compute")
    if spec.kind == "per-domain" and K != 1:
        raise UnikdError(f"partition 'per-domain' gives each client a whole domain of its own; "
                         f"call partition_indices once per client's domain with num_clients=1, "
                         f"not {K} (client_domains maps clients to domains)")
    if n < K * min_size:
        raise UnikdError(f"cannot split {n} windows over {K} clients with at least {min_size} "
                         f"each (needs {K * min_size}); use fewer clients or a smaller min_size")
    if K == 1:
        return [torch.arange(n, dtype=torch.long)]

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _SALT])))
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), K)
    else:
        parts = _dirichlet(y.cpu().numpy(), K, float(spec.alpha), min_size, rng)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def population_indices(n: int, client: int, windows: int, seed: int, salt: int = 0
                       ) -> torch.Tensor:
    """Client `client`'s windows of a synthetic population (``population:W``): `windows` of the
    pool's `n`, sorted, drawn without replacement by a generator of (seed, client, salt) alone,
    so any client of any population size costs the same and needs nothing stored. A pool
    smaller than `windows` gives all of its windows."""
    if n < 1:
        raise UnikdError("partition 'population': the target pool holds no windows")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(client), int(salt), _POPULATION_SALT])))
    picked = rng.choice(n, size=min(windows, n), replace=False)
    return torch.from_numpy(np.sort(picked).astype(np.int64))


def _dirichlet(y: np.ndarray, K: int, alpha: float, min_size: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(y)
    for _ in range(_REDRAWS):
        parts = _dirichlet_draw(y, classes, K, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    return _top_up(parts, min_size, rng)


def _dirichlet_draw(y: np.ndarray, classes: np.ndarray, K: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(K)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        p = np.nan_to_num(rng.dirichlet(np.full(K, alpha)), nan=0.0)
        total = p.sum()
        if not total > 0:  # every gamma draw underflowed (tiny alpha): give the class to one client
            p = np.zeros(K)
            p[rng.integers(K)] = 1.0
            total = 1.0
        counts = rng.multinomial(len(idx), p / total)
        for k, chunk in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            buckets[k].append(chunk)
    return [np.concatenate(b) if b else np.empty(0, dtype=np.int64) for b in buckets]


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move random windows from the currently largest client to each short one, one at a time."""
    parts = [p.copy() for p in parts]
    for k in range(len(parts)):
        while len(parts[k]) < min_size:
            big = max(range(len(parts)), key=lambda j: (len(parts[j]), -j))
            pick = int(rng.integers(len(parts[big])))
            parts[k] = np.append(parts[k], parts[big][pick])
            parts[big] = np.delete(parts[big], pick)
    return parts


def client_domains(target: str, num_clients: int, spec: PartitionSpec) -> list[str]:
    """The target domain(s) each client draws its windows from.

    ``per-domain``: `target` is a comma list such as ``"11,13,16,18,23"``, one distinct domain per
    client in client order; its length must equal `num_clients`. ``iid``/``dirichlet``: every
    client draws from the same pool, `target` normalised (``"11"``, or ``"11,13,16"`` for the
    pooled windows of several domains, see `pooled_domains`): ``[target] * num_clients``.
    """
    K = _check_clients(num_clients)
    if not isinstance(spec, PartitionSpec):
        raise UnikdError(f"spec must be a PartitionSpec, got {type(spec).__name__}")
    text = str(target).strip()
    ids = scenario_targets(text)
    if not text or any(not d for d in ids):
        raise UnikdError(f"partition '{spec}' needs a target domain id or a comma list of them "
                         f"(e.g. '11' or '11,13,16'), got '{target}'")
    dups = sorted({d for d in ids if ids.count(d) > 1})
    if dups:
        raise UnikdError(f"partition '{spec}': target '{target}' lists domain(s) "
                         f"{', '.join(dups)} more than once")
    if spec.kind == "per-domain":
        if len(ids) != K:
            raise UnikdError(f"partition 'per-domain': target '{target}' lists {len(ids)} "
                             f"domain(s) but there are {K} client(s); give exactly one per client")
        return ids
    return [",".join(ids)] * K


def pooled_domains(pool: str) -> list[str]:
    """The domains an ``iid``/``dirichlet`` client's pool (an entry of `client_domains`) joins,
    in the listed order; their windows are concatenated in that order before the split."""
    return scenario_targets(pool)
