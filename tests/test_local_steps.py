"""What a node computes in one round, checked against the contract, not against itself.

With `local_steps` = K the node takes K plain-SGD steps on its target terms and returns the mean
gradient along that path: g = (1/K) sum_j g_j, where g_j is the gradient at w_j and
w_{j+1} = w_j - lr * g_j. The checks below recompute every g_j from scratch at the recorded
weights and batches.
"""

from __future__ import annotations

import copy

import pytest
import torch

import client.node.target_side as target_side
from client.node.target_side import reestimate_bn
from shared.data.datasets import get_spec
from shared.unikd.engine import TeacherOut, UniKDNets, target_terms
from shared.protocol.records import RoundConfig, group_named_params
from shared.unikd.settings import KDHparams, StepSchedule

SPEC = get_spec("HAR")


def round_config(local_steps: int, lr: float = 0.05) -> RoundConfig:
    return RoundConfig(round=3, epoch=1, step=2, global_step=2,
                       schedule=StepSchedule(beta=0.4, alpha=0.3), lr=lr,
                       local_steps=local_steps, seed=7, batch_size=16,
                       hparams=KDHparams(adv_to_student=True, detach_weights=False),
                       bn_policy="averaged", dataset="HAR")


def flat_grads(nets: UniKDNets) -> dict[str, torch.Tensor]:
    return {f"{g}/{k}": (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for g, ps in group_named_params(nets).items() for k, p in ps.items()}


def flat_params(nets: UniKDNets) -> dict[str, torch.Tensor]:
    return {f"{g}/{k}": p.detach().clone()
            for g, ps in group_named_params(nets).items() for k, p in ps.items()}


@pytest.mark.parametrize("k", [1, 3])
def test_pseudo_gradient_is_the_mean_gradient_along_the_sgd_path(k, monkeypatch):
    torch.manual_seed(0)
    nets = UniKDNets.for_spec(SPEC)
    x = torch.randn(40, SPEC.channels, SPEC.length)
    teacher = TeacherOut(torch.randn(40, 128), torch.randn(40, SPEC.classes))
    rc = round_config(k)
    calls = []  # (state at the call, batch, teacher batch, RNG state) for each local step

    def recording(n, xb, tb, schedule, hparams, **kw):
        calls.append((copy.deepcopy(n.state_dict()), xb.clone(), tb, torch.get_rng_state()))
        return target_terms(n, xb, tb, schedule, hparams, **kw)

    monkeypatch.setattr(target_side, "target_terms", recording)
    start = copy.deepcopy(nets.state_dict())
    grads, _, _ = target_side.unikd_round(nets, x, teacher, rc, client=1)
    assert len(calls) == k

    redo = UniKDNets.for_spec(SPEC)
    path = []
    for state, xb, tb, rng in calls:  # g_j recomputed from scratch at the recorded point
        redo.load_state_dict(state)
        redo.train()
        redo.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        target_terms(redo, xb, tb, rc.schedule, rc.hparams)["loss"].backward()
        path.append((flat_params(redo), flat_grads(redo)))
    redo.load_state_dict(start)
    assert all(torch.equal(v, flat_params(redo)[n]) for n, v in path[0][0].items())  # w_0
    for (w, g), (w_next, _) in zip(path, path[1:]):  # w_{j+1} = w_j - lr g_j
        for n in w:
            assert torch.allclose(w_next[n], w[n] - rc.lr * g[n], atol=1e-6), n
    returned = {f"{g}/{n}": t for g, ts in grads.items() for n, t in ts.items()}
    for n, v in returned.items():
        mean = sum(gr[n] for _, gr in path) / k
        assert torch.allclose(v, mean, atol=1e-6), n
    if k > 1:  # a different batch at every local step
        batches = [c[1] for c in calls]
        assert all(not torch.equal(a, b) for a, b in zip(batches, batches[1:]))


def test_reestimated_bn_statistics_are_the_node_windows_statistics():
    torch.manual_seed(1)
    nets = UniKDNets.for_spec(SPEC)
    x = torch.randn(512, SPEC.channels, SPEC.length) * 3.0 + 2.0  # two equal chunks of 256
    first_bn = next(m for m in nets.student.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    captured = []
    hook = first_bn.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    reestimate_bn(nets.student, x)
    hook.remove()
    inputs = torch.cat(captured)  # what the first BN layer saw: the node's own windows
    assert not nets.student.training
    dims = [0, 2] if inputs.dim() == 3 else [0]
    assert torch.allclose(first_bn.running_mean, inputs.mean(dims), atol=1e-4)
    assert torch.allclose(first_bn.running_var, inputs.var(dims, unbiased=True), rtol=1e-3)


def test_local_sgd_moves_after_every_step_but_the_last_and_returns_the_mean():
    """The one local-SGD helper plain and record-DP steps share, on g_j = w - c_j."""
    from shared.clock.local_steps import LocalSteps

    targets = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [4.0, -1.0]], dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))  # never gets a gradient
    seen = []

    def gradient(j: int) -> dict:
        seen.append(w.detach().clone())
        return {"w": w.detach() - targets[j], "frozen": None}

    mean = target_side.local_sgd({"w": w, "frozen": frozen}, LocalSteps(3), 0.5, gradient)
    expected, grads = torch.zeros(2, dtype=torch.float64), []
    for j in range(3):
        assert torch.equal(seen[j], expected)
        grads.append(expected - targets[j])
        if j < 2:
            expected = expected - 0.5 * grads[-1]
    assert torch.equal(w.detach(), expected)  # the last step's gradient moves nothing
    assert torch.allclose(mean["w"], sum(grads) / 3)
    assert torch.equal(mean["frozen"], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(frozen.detach(), torch.ones(2, dtype=torch.float64))


def test_what_local_steps_means_on_both_sides():
    from shared.clock.local_steps import TEACHER_ROUND, LocalSteps

    three = LocalSteps(3)
    assert three.first_batch(2) == 6
    assert [three.moves_after(j) for j in range(3)] == [True, True, False]
    assert three.dp_steps() == 3 and three.dp_steps(rounds=5) == 15
    assert torch.equal(three.pseudo_gradient(torch.tensor([3.0, 6.0])), torch.tensor([1.0, 2.0]))
    assert TEACHER_ROUND.dp_steps(rounds=4) == 4
    assert LocalSteps(1).takes_noise_shares and not three.takes_noise_shares
    with pytest.raises(ValueError, match="local_steps=0"):
        LocalSteps(0)
