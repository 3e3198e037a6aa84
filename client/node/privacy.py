"""Local differential privacy on the edge: clip the whole update, add noise, withhold BN stats.

The cloud tells the node the mode, the clip bound C and the noise multiplier z in the round's
`config` record (RoundConfig.dp_mode, dp_clip, dp_noise). Under `local` the node

1. clips its student, D_f and D_d gradients together to L2 norm <= C (under the expected cross
   KD to sqrt(1 - share) C, with its mean w as one more coordinate sqrt(share) C w: the whole
   vector within C, shared/privacy/clipping.py `clip_update_with_w`);
2. adds N(0, (2 z C)^2) per coordinate, drawn from a generator keyed by (seed, client stream,
   round) **and the node's secret** (`record_dp.node_secret`), so the cloud, which knows the run
   seed, cannot regenerate the noise and subtract it. Only the in-process simulation
   (`dp-reproducible` in the node config) draws from the seed alone, for reproducible runs;
3. sends back the BN buffers it *received* instead of its own, so no statistic of its windows
   leaves the node (the cloud ignores BN statistics under DP anyway), and no loss metric or
   `w_mean` (client_app.train; the mean w travels inside the noised update, `target_w`).

Under `off` and `central` nothing changes here (central clipping and noise are the cloud's).
"""

from __future__ import annotations

import torch

from shared.privacy.dp_sgd import dp_generator
from shared.privacy.clipping import add_noise, clip_update, clip_update_with_w, local_noise_std
from shared.protocol.records import RoundConfig, from_record
from shared.clock.seeding import UPDATE_NOISE, client_stream

Grads = dict[str, dict[str, torch.Tensor]]


def privatize(grads: Grads, buffers: dict[str, torch.Tensor], received_student,
              rc: RoundConfig, client: int, secret: bytes | None
              ) -> tuple[Grads, dict[str, torch.Tensor]]:
    """(grads, buffers) as they may leave the node under the round's DP settings.

    `received_student` is the `student` ArrayRecord the node received this round (its BN
    buffers replace the node's own under local DP). `secret` is the node's noise key
    (`record_dp.node_secret`); None only in the reproducible in-process simulation, where the
    noise is a function of the run seed and worthless as privacy against the cloud.
    """
    if rc.dp_mode != "local":
        return grads, buffers
    received = from_record(received_student)
    clip, z = rc.dp_clip, rc.dp_noise
    per_network = rc.dp_clip_scope == "per-network"
    if "target_w" in grads:  # the mean w's coordinate: within the same bound C (clipping.py)
        clipped, _ = clip_update_with_w(grads, "target_w", clip, rc.w_share, per_network)
    else:
        clipped, _ = clip_update(grads, clip, per_network)
    gen = dp_generator(rc.seed, client_stream(client), rc.round, UPDATE_NOISE.number(), secret)
    noisy = add_noise(clipped, local_noise_std(z, clip), gen)
    withheld = {k: received[k].clone() if k in received else v for k, v in buffers.items()}
    return noisy, withheld
