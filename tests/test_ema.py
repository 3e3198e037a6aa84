"""The reported student's EMA (shared/unikd/ema.py): what it averages, what it keeps live, and
that it survives a state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from shared.data.datasets import get_spec
from shared.unikd.ema import StudentEMA, reported_nets, student_ema
from shared.unikd.engine import UniKDNets


def nets() -> UniKDNets:
    torch.manual_seed(0)
    return UniKDNets.for_spec(get_spec("SYNTH"))


@torch.no_grad()
def move(n: UniKDNets, seed: int) -> None:
    """A stand-in for a training step: new parameters, new BN statistics, one more batch."""
    g = torch.Generator().manual_seed(seed)
    for p in n.parameters():
        p.add_(torch.randn(p.shape, generator=g))
    for name, b in n.student.named_buffers():
        b.add_(1 if name.endswith("num_batches_tracked") else torch.rand(b.shape, generator=g))


def test_off_is_no_ema_and_the_live_nets_are_reported():
    live = nets()
    assert student_ema(live, 0.0) is None
    assert reported_nets(live, None) is live


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        StudentEMA(nets(), decay)


def test_the_average_starts_at_the_first_step_then_follows_the_ema_rule():
    live, decay = nets(), 0.75
    ema = StudentEMA(live, decay)
    move(live, 1)
    ema.update(live)  # the first update copies
    first = {k: v.clone() for k, v in reported_nets(live, ema).student.state_dict().items()}
    assert all(torch.equal(v, live.student.state_dict()[k]) for k, v in first.items())
    move(live, 2)
    ema.update(live)
    now, current = ema.reported(live).student.state_dict(), live.student.state_dict()
    for k, v in now.items():
        if k.endswith("num_batches_tracked"):  # a count: the live one
            assert torch.equal(v, current[k]) and int(v) == 2, k
        else:  # parameters and BN statistics: decay * average + (1 - decay) * live
            assert torch.allclose(v, decay * first[k] + (1 - decay) * current[k], atol=1e-6), k
    adapter = ema.reported(live).adapter.weight
    assert not torch.equal(adapter, live.adapter.weight)  # the adapter is averaged too


def test_the_reported_nets_share_the_live_discriminators_and_train_nothing():
    live = nets()
    ema = StudentEMA(live, 0.9)
    view = ema.reported(live)
    assert view.d_f is live.d_f and view.d_d is live.d_d
    assert view.student is not live.student
    assert not any(p.requires_grad for p in view.student.parameters())


def test_a_state_dict_round_trip_restores_the_average():
    live = nets()
    ema = StudentEMA(live, 0.9)
    for seed in (1, 2, 3):
        move(live, seed)
        ema.update(live)
    again = StudentEMA(nets(), 0.9)
    again.load_state_dict(ema.state_dict())
    for (k, a), b in zip(ema.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    move(live, 4)  # both go on the same way
    ema.update(live)
    again.update(live)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(),
                                                   again.state_dict().values()))
