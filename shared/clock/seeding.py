"""Seeds derived per (seed, stream, step): the same config gives the same numbers anywhere.

Stream 0 is the cloud's source side; stream 1 + k is client k's target side. The centralized
trainer draws its target batches from stream 1 (client 0), which is what makes a 1-client
federation reproduce it exactly.
"""

from __future__ import annotations

import numpy as np
import torch

SOURCE_STREAM = 0


def client_stream(client: int) -> int:
    return 1 + client


def seed_for(seed: int, stream: int, step: int, purpose: int = 0) -> int:
    """A 63-bit seed that depends on all four numbers and on nothing else."""
    state = np.random.SeedSequence([seed, stream, step, purpose]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def generator_for(seed: int, stream: int, step: int, purpose: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed_for(seed, stream, step, purpose))
    return g
