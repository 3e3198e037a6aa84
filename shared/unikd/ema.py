"""The reported student: an exponential moving average of the live student's weights (issue 25).

The last evaluation of a run swings from one epoch to the next (the adversarial terms keep the
live weights moving). An EMA of the weights is a label-free stabiliser: training continues on
the live weights, while what a run reports, evaluates and delivers is the average
(`distill.ema_decay`; 0 turns it off). Whoever holds the master weights keeps it: the
centralized trainer after each step, the cloud after each applied round (an aborted round
moves nothing, so it adds nothing here either). Both call this one module, so a 1-client,
1-local-step federation averages exactly what the centralized trainer averages.

What is averaged: the student and its adapter (the optimizer group `student`); D_f and D_d are
training machinery nobody evaluates or receives as the final model, so they stay live.

BN running statistics are averaged too, with the same decay (`use_buffers=True`). A running
statistic describes the activations of the weights that produced it; the live ones follow the
live weights over the last ~1/momentum steps, not the averaged weights. Averaging them over the
same window as the weights keeps weights and statistics describing the same model (for the first
block's mean it holds in expectation, up to the running mean's own short lag: that conv has no
bias and is linear in its weights, so the mean activation of the averaged weights is the average
of the mean activations). Re-estimating them for the average (SWA's `update_bn`) would need target
windows, which the cloud never holds; a node under `fed.bn_policy: reestimate` does exactly that
on its own windows when it evaluates or serves the average, and under `local` uses its own, as for
the live student. `num_batches_tracked` is a count, not a statistic: it stays the live model's.

The average itself is torch's maintained `AveragedModel` with `get_ema_multi_avg_fn`:
W_ema <- decay * W_ema + (1 - decay) * W, starting from the weights after the first step.

Device: the average is a copy of the live student and adapter, so it lives where they live when
the EMA is made (the run's device, shared/unikd/compute.py): build it after the nets have moved.
Its step count `n_averaged` stays on the CPU (torch moves it per update), so deciding whether a
step is the first one never waits on the GPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from shared.unikd.engine import UniKDNets


def _student_pair(nets: UniKDNets) -> nn.ModuleDict:
    """Student and adapter as one module (the same objects, not copies), in a fixed order."""
    return nn.ModuleDict({"student": nets.student, "adapter": nets.adapter})


class StudentEMA:
    """The EMA of a `UniKDNets`' student and adapter, parameters and BN statistics."""

    def __init__(self, nets: UniKDNets, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.average = AveragedModel(_student_pair(nets), multi_avg_fn=get_ema_multi_avg_fn(decay),
                                     use_buffers=True)
        self.average.requires_grad_(False)  # read only: no optimizer ever steps it

    @torch.no_grad()
    def update(self, nets: UniKDNets) -> None:
        """Fold the live weights in; call once after every optimizer step that was applied."""
        live = _student_pair(nets)
        self.average.update_parameters(live)
        for mine, theirs in zip(self.average.module.buffers(), live.buffers(), strict=True):
            if not mine.is_floating_point():  # num_batches_tracked: a count, not averaged
                mine.copy_(theirs)

    def reported(self, nets: UniKDNets) -> UniKDNets:
        """The nets a run evaluates and delivers: the averaged student and adapter beside the
        live discriminators (shared, not copied). Read it; never train it."""
        m = self.average.module
        return UniKDNets(m["student"], m["adapter"], nets.d_f, nets.d_d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs: the averaged weights and how many steps went in."""
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)


def student_ema(nets: UniKDNets, decay: float) -> StudentEMA | None:
    """The EMA a run keeps under `distill.ema_decay`, or None when it is 0 (off)."""
    return StudentEMA(nets, decay) if decay > 0.0 else None


def reported_nets(nets: UniKDNets, ema: StudentEMA | None) -> UniKDNets:
    """What a run evaluates and delivers: the EMA's student and adapter when one is kept, else
    the live nets themselves."""
    return nets if ema is None else ema.reported(nets)
