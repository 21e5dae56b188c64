"""Sigmoid and fixed task weighting, symmetric InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import FixedTaskWeight, SigmoidTaskWeight, info_nce


def test_sigmoid_weight_at_known_points() -> None:
    weight = SigmoidTaskWeight(steepness=4.0, midpoint=10.0)
    assert weight.steepness.item() == pytest.approx(4.0, rel=1e-6)
    assert weight.weight(10.0).item() == pytest.approx(0.5)
    assert weight.weight(10.0 + math.log(3) / 4).item() == pytest.approx(0.75, rel=1e-6)
    assert weight.weight(0.0).item() == pytest.approx(1 / (1 + math.exp(40)), abs=1e-12)
    steps = torch.arange(7.0, 14.0)
    assert torch.all(weight.weight(steps).diff() > 0)  # monotone hand-over


def test_sigmoid_combination_is_aux_early_main_late() -> None:
    weight = SigmoidTaskWeight(steepness=50.0, midpoint=0.5)
    aux, main = torch.tensor(2.0), torch.tensor(5.0)
    assert weight(aux, main, t=0.0).item() == pytest.approx(2.0, abs=1e-6)
    assert weight(aux, main, t=0.5).item() == pytest.approx(3.5)
    assert weight(aux, main, t=1.0).item() == pytest.approx(5.0, abs=1e-6)


def test_gradients_reach_steepness_and_midpoint() -> None:
    weight = SigmoidTaskWeight(steepness=3.0, midpoint=0.4)
    weight(torch.tensor(1.0), torch.tensor(2.0), t=torch.tensor(0.6)).backward()
    # d/dλ = main - aux = 1; dλ/dt0 = -k λ (1 - λ); dλ/dk = (t - t0) λ (1 - λ), times softplus' = sigmoid(raw).
    share = weight.weight(0.6).item()
    assert weight.midpoint.grad.item() == pytest.approx(-3.0 * share * (1 - share), rel=1e-5)
    expected_raw = 0.2 * share * (1 - share) * torch.sigmoid(weight.raw_steepness).item()
    assert weight.raw_steepness.grad.item() == pytest.approx(expected_raw, rel=1e-5)


def test_steepness_stays_positive() -> None:
    weight = SigmoidTaskWeight()
    with torch.no_grad():
        weight.raw_steepness.fill_(-30.0)
    assert weight.steepness.item() > 0
    with pytest.raises(ValueError):
        SigmoidTaskWeight(steepness=0.0)


def test_fixed_weight() -> None:
    weight = FixedTaskWeight(main_share=0.25)
    assert weight(torch.tensor(4.0), torch.tensor(8.0)).item() == pytest.approx(5.0)
    assert weight(torch.tensor(4.0), torch.tensor(8.0), t=123).item() == pytest.approx(5.0)
    assert list(weight.parameters()) == []
    with pytest.raises(ValueError):
        FixedTaskWeight(main_share=1.5)


def test_info_nce_low_for_aligned_pairs_and_log_batch_for_unrelated() -> None:
    torch.manual_seed(0)
    batch = 32
    a = torch.randn(batch, 256)
    aligned = info_nce(a, 3.0 * a + 0.01 * torch.randn(batch, 256), temperature=0.07)
    assert aligned.item() < 1e-3
    unrelated = info_nce(a, torch.randn(batch, 256), temperature=1.0)
    assert unrelated.item() == pytest.approx(math.log(batch), rel=0.02)


def test_info_nce_is_symmetric_and_differentiable() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    loss = info_nce(a, b)
    torch.testing.assert_close(loss, info_nce(b, a))
    loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
