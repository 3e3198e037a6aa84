"""Models against spec §2: parameter counts, MACs, temporal lengths, shapes, aux modules, GRL."""

from __future__ import annotations

import pytest
import torch

from shared.data.datasets import get_spec
from shared.unikd.models import (
    Adapter, DomainDisc, FeatureDisc, count_macs, count_params, grad_reverse, student_for, teacher_for,
)

# spec §2.4: (teacher params, student params, teacher MACs [M], student MACs [M]) as printed there
SPEC_SIZES = {
    "HAR": (200_902, 13_366, "9.28", "0.649"),
    "HHAR": (198_982, 12_886, "9.04", "0.588"),
    "FD": (199_683, 13_059, "58.18", "3.96"),
    "SSC": (199_493, 13_013, "34.09", "2.28"),
}
# spec §2.3: length after each conv block (conv -> BN -> ReLU -> pool)
SPEC_LENGTHS = {"HAR": (65, 34, 18), "HHAR": (65, 34, 18), "FD": (428, 215, 109), "SSC": (251, 127, 65)}
DATASETS = list(SPEC_SIZES)


def _matches_printed(value: float, printed: str) -> bool:
    """True when `value` rounds to the spec's printed number at the precision it was printed."""
    decimals = len(printed.split(".")[1])
    return round(value, decimals) == float(printed)


@pytest.mark.parametrize("name", DATASETS)
def test_param_counts_match_spec(name):
    spec = get_spec(name)
    t_params, s_params, _, _ = SPEC_SIZES[name]
    assert count_params(teacher_for(spec)) == t_params
    assert count_params(student_for(spec)) == s_params


@pytest.mark.parametrize("name", DATASETS)
def test_macs_match_spec_table(name):
    spec = get_spec(name)
    _, _, t_macs, s_macs = SPEC_SIZES[name]
    t = count_macs(teacher_for(spec), spec.channels, spec.length) / 1e6
    s = count_macs(student_for(spec), spec.channels, spec.length) / 1e6
    assert _matches_printed(t, t_macs), f"teacher {t:.4f} M vs spec {t_macs} M"
    assert _matches_printed(s, s_macs), f"student {s:.4f} M vs spec {s_macs} M"


@pytest.mark.parametrize("name", DATASETS)
def test_temporal_lengths_match_spec(name):
    spec = get_spec(name)
    model = teacher_for(spec).eval()
    with torch.no_grad():
        h1 = model.block1(torch.zeros(1, spec.channels, spec.length))
        h2 = model.block2(h1)
        h3 = model.block3(h2)
    assert (h1.shape[2], h2.shape[2], h3.shape[2]) == SPEC_LENGTHS[name]


@pytest.mark.parametrize("name", DATASETS)
def test_forward_shapes_and_finite(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    x = torch.randn(3, spec.channels, spec.length)
    for model, feat in ((teacher_for(spec), 128), (student_for(spec), 32)):
        model.eval()
        with torch.no_grad():
            h = model.forward_features(x)
            logits = model.forward_head(h)
        assert h.shape == (3, feat)
        assert logits.shape == (3, spec.classes)
        assert torch.equal(logits, model(x))
        assert torch.isfinite(h).all() and torch.isfinite(logits).all()


def test_aux_module_shapes():
    h_s, h_t = torch.randn(5, 32), torch.randn(5, 128)
    assert Adapter()(h_s).shape == (5, 128)
    assert DomainDisc(32, 64)(h_s).shape == (5, 2)
    assert DomainDisc(128, 64)(h_t).shape == (5, 2)
    assert FeatureDisc(128, 64)(h_t).shape == (5,)
    assert FeatureDisc(128, 100)(h_t).shape == (5,)


@pytest.mark.parametrize("module, params", [
    (Adapter(), 4_224),
    (DomainDisc(32, 64), 6_402),
    (DomainDisc(32, 100), 13_602),
    (FeatureDisc(128, 64), 12_481),
    (FeatureDisc(128, 100), 23_101),
    (DomainDisc(128, 64), 12_546),  # the DANN teacher's discriminator
    (DomainDisc(128, 100), 23_202),
], ids=["adapter", "Dd-h64", "Dd-h100", "Df-h64", "Df-h100", "teacher-disc-h64", "teacher-disc-h100"])
def test_aux_param_counts_match_spec(module, params):
    assert count_params(module) == params


def test_count_macs_leaves_training_mode_unchanged():
    model = student_for(get_spec("HAR")).train()
    count_macs(model, 9, 128)
    assert model.training


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_grad_reverse_is_identity_forward_and_negates_scaled_gradient(alpha):
    # Prepare
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, generator=g, requires_grad=True)
    upstream = torch.randn(4, 32, generator=g)
    # Execute
    y = grad_reverse(x, alpha)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    # Assert
    assert torch.equal(y, x)
    assert torch.allclose(grad, -alpha * upstream, rtol=0, atol=0)
