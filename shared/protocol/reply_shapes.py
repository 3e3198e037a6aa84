"""The exact shapes a reply may carry, read off our models: the node checks its own reply
(`wire.check_outgoing`) and the cloud checks what arrives (server/fed/aggregate.py) with the
same table."""

from __future__ import annotations

from torch import nn

from shared.protocol import wire
from shared.protocol.records import bn_buffers, group_named_params
from shared.unikd.engine import UniKDNets

Shapes = dict[str, dict[str, tuple[int, ...]]]  # record -> array name -> shape


def up_shapes(nets: UniKDNets) -> Shapes:
    """A UNI-KD train reply: gradients of the three parameter groups and the student's BN."""
    g = group_named_params(nets)
    return wire.expected_up_shapes(g["student"], g["d_f"], g["d_d"], bn_buffers(nets.student))


def teacher_up_shapes(teacher: nn.Module, disc: nn.Module, members: int | None = None
                      ) -> Shapes:
    """A federated DANN teacher round's reply: teacher and discriminator gradients, teacher BN;
    with `members` (every ensemble member in one exchange) each array once per member, named
    "<member>.<name>"."""
    shapes = wire.expected_teacher_shapes(dict(teacher.named_parameters()),
                                          dict(disc.named_parameters()),
                                          dict(teacher.named_buffers()))
    if members is None:
        return shapes
    return {rec: {f"{m}.{k}": v for m in range(members) for k, v in arrays.items()}
            for rec, arrays in shapes.items()}
