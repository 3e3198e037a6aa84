"""The clients' mean confusion weight under DP and secure aggregation (issue 25, item 6).

`distill.cross_kd: expected` splits the reference's cross-domain KD beta * mean_t(w) * KD_s by the
product rule: the edges backpropagate beta * KD_s * mean_t(w) (KD_s a scalar the round config
carries), the cloud beta * w_bar * grad KD_s, with w_bar the clients' mean w. w_bar is an
aggregate, never a per-window value, so it needs no mechanism of its own: it rides as ONE more
coordinate, s * w with s = sqrt(fed.w_share) * C, of the update that is already clipped, noised
and summed privately, and the gradient part is clipped to sqrt(1 - fed.w_share) * C, so the
vector's L2 bound stays C (shared/privacy/clipping.py, shared/privacy/dp_sgd.py):

- record DP: inside every window's clipped vector (w_i in [0, 1]), noised with N(0, (z C)^2)
  like every gradient coordinate: the accountant's Poisson-subsampled Gaussian of sensitivity
  C, unchanged;
- client-level DP (central, local): inside the clipped update, noised with it (central: by the
  cloud; local: by the node; secure aggregation + central: the nodes' noise shares);
- secure aggregation: one more coordinate of the masked, quantised vector; the cloud unmasks the
  sum and nothing else.

The cloud divides the aggregated coordinate by s and clamps to [0, 1] (post-processing). The
derived values (C, the gradient bound, s) are logged at the start and written to the run
folder's privacy.json (`w_coordinate_summary`).
"""

from __future__ import annotations

from shared.config import RunConfig
from shared.privacy.clipping import w_bounds, w_clip


def carries_w(cfg: RunConfig) -> bool:
    """The expected cross KD runs where the cloud may not read a client's mean w alone."""
    d, f = cfg.distill, cfg.fed
    return (not d.target_kd and d.cross_kd == "expected"
            and (f.dp != "off" or f.secure_aggregation))


def private_w_scale(cfg: RunConfig) -> float | None:
    """s = sqrt(fed.w_share) * C of the w coordinate; None where no coordinate travels."""
    if not carries_w(cfg):
        return None
    f = cfg.fed
    return w_bounds(w_clip(f.dp, f.dp_clip, f.secagg_clip), f.w_share)[1]


def w_coordinate_summary(cfg: RunConfig) -> dict | None:
    """The derived values of the w coordinate, for the log and privacy.json (None: none)."""
    if not carries_w(cfg):
        return None
    f = cfg.fed
    clip = w_clip(f.dp, f.dp_clip, f.secagg_clip)
    grad_clip, scale = w_bounds(clip, f.w_share)
    unit = {"record": "one window's vector", "central": "one client's update",
            "local": "one client's update", "off": "one client's update (range bound)"}[f.dp]
    return {"w_share": f.w_share, "bound": clip, "bound_of": unit,
            "gradient_bound": grad_clip, "w_scale": scale,
            "source": "fed.dp_clip" if f.dp != "off" else "fed.secagg_clip"}
