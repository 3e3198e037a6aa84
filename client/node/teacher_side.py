"""The edge's share of a federated DANN teacher round, for the one ensemble member it carries
(edge mode) or for every member at once (`fed.local_steps_mode: both`, shared/clock/local_steps.py).

Each member is trained exactly as a round of its own would train it (`target_side.dann_round`,
or `record_dp.record_dann_round` under record DP), under the member's own seed; a round of all
members carries their arrays side by side, named "<member>.<name>", down and up.
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict

from client.node.record_dp import record_dann_round
from client.node.target_side import Grads, dann_round, member_config
from shared.clock.local_steps import PathMover
from shared.data.datasets import DatasetSpec
from shared.errors import UnikdError
from shared.protocol import wire
from shared.protocol.checkpoints import by_member, of_members
from shared.protocol.records import TeacherRoundConfig, from_record
from shared.unikd.compute import CPU, module_device, to_device
from shared.unikd.models import CNN1d, DomainDisc, teacher_for
from shared.unikd.models.cnn1d import TEACHER_FEATURES

Members = list[tuple[CNN1d, DomainDisc]]


def decode_members(content: RecordDict, rc: TeacherRoundConfig, spec: DatasetSpec,
                   device: torch.device = CPU) -> Members:
    """The round's teacher(s) and discriminator(s), as the cloud sent them, on `device`."""
    teachers, discs = (from_record(content[key]) for key in (wire.TEACHER_TRAIN, wire.TEACHER_DISC))
    if rc.members is None:
        states = [(teachers, discs)]
    else:
        states = list(zip(of_members(teachers, rc.members), of_members(discs, rc.members)))
    out = []
    for t_state, d_state in states:
        teacher, disc = teacher_for(spec), DomainDisc(TEACHER_FEATURES, spec.d_d_hidden)
        teacher.to(device)
        disc.to(device)
        teacher.load_state_dict(t_state)
        disc.load_state_dict(d_state)
        out.append((teacher, disc))
    return out


def member_movers(content: RecordDict, rc: TeacherRoundConfig, members: Members
                  ) -> list[PathMover | None]:
    """How each member's local path moves: by the cloud's preconditioner and source control
    where the round carries them (`fed.local_path: preconditioned`, arrays
    "<member>.<teacher|disc>.<name>"), checked against the member's parameters and moved to
    their device; else plain."""
    if wire.PATH_PRECOND not in content or rc.members is None:
        return [None] * len(members)
    parts = [of_members(from_record(content[key]), rc.members)
             for key in (wire.PATH_PRECOND, wire.PATH_CONTROL)]
    movers = []
    for k, (teacher, disc) in enumerate(members):
        params = {f"{part}.{n}": p for part, net in (("teacher", teacher), ("disc", disc))
                  for n, p in net.named_parameters()}
        for key, arrays in zip((wire.PATH_PRECOND, wire.PATH_CONTROL), parts):
            for name, a in arrays[k].items():
                if name not in params or a.shape != params[name].shape \
                        or not torch.isfinite(a).all():
                    raise UnikdError(f"record '{key}': '{k}.{name}' is not a finite array "
                                     f"shaped like a parameter")
        device = module_device(teacher)
        movers.append(PathMover(to_device(parts[0][k], device), to_device(parts[1][k], device)))
    return movers


def teacher_round(members: Members, x: torch.Tensor, rc: TeacherRoundConfig, client: int,
                  dp: tuple[bytes | None, int] | None = None,
                  movers: list[PathMover | None] | None = None
                  ) -> tuple[Grads, dict[str, torch.Tensor] | None, dict[str, float]]:
    """(gradients of "teacher" and "disc", teacher BN buffers, metrics) of the round: one
    member's, or every member's side by side. `dp`: (node secret, released count) under record
    DP, where no BN statistics and no loss leave the node; `movers`: how each member's local
    path moves (`member_movers`; None: plain SGD)."""
    done, movers = [], movers or [None] * len(members)
    for k, ((teacher, disc), mover) in enumerate(zip(members, movers, strict=True)):
        rk = member_config(rc, k)
        if dp is None:
            done.append(dann_round(teacher, disc, x, rk, client, mover))
        else:
            done.append((record_dann_round(teacher, disc, x, rk, client, *dp, mover),
                         None, {}))
    if rc.members is None:
        return done[0]
    grads = {part: by_member([g[part] for g, _, _ in done]) for part in ("teacher", "disc")}
    if dp is not None:
        return grads, None, {}
    dom = sum(m[wire.TEACHER_DANN_DOM] for _, _, m in done) / len(done)
    return grads, by_member([b for _, b, _ in done]), {wire.TEACHER_DANN_DOM: dom}
