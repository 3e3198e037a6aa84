"""Seeds derived per (seed, stream, step, purpose): the same config gives the same numbers anywhere.

Streams: stream 0 is the cloud's source side; stream 1 + k is client k's target side; the cloud's
central-DP noise has a stream of its own. The centralized trainer draws its target batches from
stream 1 (client 0), which is what makes a 1-client federation reproduce it exactly.

Purposes: every kind of random draw is one `Purpose` in the table `PURPOSES` below, and every
caller takes its number from there (`BATCHES.number()`, `DROPOUT.number(sub)`). A purpose's
number modulo OFFSET_STRIDE is its *lane*; a sub-offset (a local step, a record-DP phase) adds
whole strides, so it never leaves its lane. Two purposes in different lanes can therefore never
draw the same seed, whatever their offsets; `collisions()` checks the table for that and
tests/test_seeding.py runs it. The numbers are the ones the code used before the table existed:
changing one changes the random numbers of every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from shared.errors import UnikdError

SOURCE_STREAM = 0
CENTRAL_STREAM = 1_000_003  # the cloud's central-DP noise; above every client's stream
OFFSET_STRIDE = 16  # a sub-offset adds multiples of this to a purpose's number: one lane each


def client_stream(client: int) -> int:
    """Client k's stream, 1 + k; refused where it would meet the source or the central stream."""
    if not 0 <= client < CENTRAL_STREAM - 1:
        raise UnikdError(f"client id {client}: seeds need 0 <= id < {CENTRAL_STREAM - 1}")
    return 1 + client


def stream_kind(stream: int) -> str:
    """'source', 'clients' or 'central': the kinds a purpose declares it draws on."""
    if stream == SOURCE_STREAM:
        return "source"
    return "central" if stream == CENTRAL_STREAM else "clients"


@dataclass(frozen=True)
class Purpose:
    """One kind of random draw: its number, its streams, what its step and its offset count."""

    name: str
    base: int
    streams: tuple[str, ...]  # stream kinds (see stream_kind)
    step: str  # what the step argument of seed_for counts for this draw
    offset: str = ""  # what a sub-offset counts; "" = the purpose takes none

    @property
    def lane(self) -> int:
        return self.base % OFFSET_STRIDE

    def number(self, offset: int = 0) -> int:
        """The purpose argument of seed_for: base + OFFSET_STRIDE * offset, inside the lane."""
        if offset < 0 or (offset and not self.offset):
            raise ValueError(f"seed purpose {self.name!r} takes no offset {offset}")
        return self.base + OFFSET_STRIDE * offset


SIDES = ("source", "clients")
BATCHES = Purpose("batch order", 1, SIDES, "epoch")
DROPOUT = Purpose("dropout masks", 2, SIDES, "global step", "the local step inside a round")
MODEL_INIT = Purpose("model construction", 3, ("source",), "which models (INIT_*)")
UPDATE_NOISE = Purpose("client-level DP noise on an update", 7, ("clients", "central"), "round")
# Lane 7 twice: the member seeds draw only on the source stream, the update noise never does.
MEMBER_SEEDS = Purpose("teacher ensemble member seeds", 7, ("source",), "member")
DP_POISSON = Purpose("record-DP Poisson batch", 40, ("clients",), "global step",
                     "record_dp_offset(local step, phase)")
DP_STEP_NOISE = Purpose("record-DP step noise", 41, ("clients",), "global step",
                        "record_dp_offset(local step, phase)")
DP_COUNT = Purpose("record-DP released window count", 42, ("clients",), "0")
NOISE_SHARE = Purpose("distributed-DP noise share", 43, ("clients",), "round")
# The strong views of the pseudo-label term (shared/unikd/augment.py): target side only, so the
# centralized trainer draws them on client 0's stream like the target's dropout masks.
AUGMENT = Purpose("target-window augmentation", 4, ("clients",), "global step",
                  "the local step inside a round")
# Cross-device federations (server/fed/cohort.py, availability.py): the cloud's draws of who
# trains or is scored in a round, and the simulator's availability of every client. One
# generator per (seed, round) serves a whole population, the client's position in it picking
# its draw, so a round costs one seed however many clients there are.
COHORT = Purpose("cohort sampling", 5, ("central",), "round")
EVAL_SAMPLE = Purpose("evaluation sample", 6, ("central",), "round")
AVAILABILITY = Purpose("simulated availability", 12, ("central",), "round")
AVAILABILITY_PHASE = Purpose("simulated diurnal phase", 13, ("central",), "0")
PURPOSES = (BATCHES, DROPOUT, MODEL_INIT, UPDATE_NOISE, MEMBER_SEEDS, DP_POISSON, DP_STEP_NOISE,
            DP_COUNT, NOISE_SHARE, AUGMENT, COHORT, EVAL_SAMPLE, AVAILABILITY, AVAILABILITY_PHASE)

# MODEL_INIT's step: which models a seed_init builds (students and baselines use the default).
INIT_MODELS, INIT_DANN_TEACHER, INIT_SOURCE_TEACHER = 0, 100, 101
# Record-DP phases, mixed into the DP purposes' offsets: the two phases never share draws.
PHASE_UNIKD, PHASE_TEACHER = 0, 1
RECORD_DP_PHASES = 2


def record_dp_offset(sub: int, phase: int) -> int:
    """The sub-offset of a record-DP draw: local step `sub` of phase `phase`, one slot each."""
    if not 0 <= phase < RECORD_DP_PHASES:
        raise ValueError(f"record-DP phase {phase} is not one of {RECORD_DP_PHASES}")
    return RECORD_DP_PHASES * sub + phase


def collisions(purposes: Iterable[Purpose] = PURPOSES) -> list[str]:
    """Every pair of purposes that could draw the same seed: one lane and a stream kind in common.

    Conservative: two purposes of one lane are refused even if their offsets could never meet.
    """
    found = []
    for a, b in combinations(purposes, 2):
        common = sorted(set(a.streams) & set(b.streams))
        if a.lane == b.lane and common:
            found.append(f"{a.name} ({a.base}) and {b.name} ({b.base}): lane {a.lane} on {common}")
    return found


def seed_for(seed: int, stream: int, step: int, purpose: int) -> int:
    """A 63-bit seed that depends on all four numbers and on nothing else."""
    state = np.random.SeedSequence([seed, stream, step, purpose]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def generator_for(seed: int, stream: int, step: int, purpose: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed_for(seed, stream, step, purpose))
    return g


def seed_side(seed: int, stream: int, global_step: int, sub: int = 0) -> None:
    """Seed the global torch RNG (dropout masks) for one side of one step.

    `sub` numbers a client's local steps inside one round; sub 0 is the centralized step.
    """
    torch.manual_seed(seed_for(seed, stream, global_step, DROPOUT.number(sub)))


def augment_generator(seed: int, stream: int, global_step: int, sub: int = 0) -> torch.Generator:
    """The generator of one step's target-window augmentations, numbered like `seed_side`'s
    dropout seed (`sub`: the local step inside a round; 0 is the centralized step). A generator
    of its own, not the global RNG: the views do not depend on how many dropout masks were
    drawn before them, nor the masks on the views."""
    return generator_for(seed, stream, global_step, AUGMENT.number(sub))


def member_seed(seed: int, member: int) -> int:
    """The seed of teacher ensemble member `member` of a run seeded `seed`: member 0 uses the run
    seed itself, further members derived seeds. The cloud trains each member under its seed and,
    when one exchange carries every member (fed.local_steps_mode=both), each node derives them
    from the round's run seed with this function."""
    if member == 0:
        return seed
    return seed_for(seed, SOURCE_STREAM, member, MEMBER_SEEDS.number()) % 2**31


def seed_init(seed: int, what: int = INIT_MODELS) -> None:
    """Seed model construction; the federated server builds its models the same way."""
    torch.manual_seed(seed_for(seed, SOURCE_STREAM, what, MODEL_INIT.number()))
