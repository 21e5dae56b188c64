"""SparseMoE against a per-token reference and the expert-loop block; capacity, losses, utilisation, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.lab.moe import ExpertLoopMoE, MoEConfig, SparseMoE

D, FFN, E, K = 16, 32, 8, 2


def make_moe(capacity_factor: float | None = None, seed: int = 0) -> SparseMoE:
    torch.manual_seed(seed)
    return SparseMoE(MoEConfig(d_model=D, ffn_dim=FFN, num_experts=E, top_k=K, capacity_factor=capacity_factor))


def per_token_reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Each token on its own: softmax router, top-k, renormalised gates, SwiGLU experts, weighted sum."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        probs = torch.softmax(moe.router.weight @ x[n], dim=0)
        top_probs, top_experts = probs.topk(K)
        for prob, expert in zip(top_probs / top_probs.sum(), top_experts.tolist()):
            w1, w3 = moe.w13[expert, :, :FFN], moe.w13[expert, :, FFN:]
            out[n] += prob * ((F.silu(x[n] @ w1) * (x[n] @ w3)) @ moe.w2[expert])
    return out


def test_matches_per_token_reference_when_nothing_drops() -> None:
    moe = make_moe(capacity_factor=E / K)  # capacity = N: nothing can drop
    x = torch.randn(64, D)
    out = moe(x)
    assert int(moe.last_stats.dropped) == 0
    torch.testing.assert_close(out, per_token_reference(moe, x), atol=1e-5, rtol=0)


def test_matches_expert_loop_block_and_keeps_leading_shape() -> None:
    moe = make_moe(capacity_factor=None)
    x = torch.randn(3, 40, D)
    out = moe(x)
    assert out.shape == x.shape
    assert moe.last_stats.capacity == int((moe.last_stats.utilisation * 120 * K).round().max())
    torch.testing.assert_close(out, ExpertLoopMoE(moe)(x), atol=1e-5, rtol=0)


def test_capacity_drops_second_choices_first_and_zeroes_tokens_with_no_expert_left() -> None:
    moe = make_moe(capacity_factor=0.5)
    with torch.no_grad():  # every token prefers expert 0, then expert 1
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 2.0, 1.0
    x = torch.randn(32, D)
    x[:, 0] = 1.0
    capacity = math.ceil(0.5 * K * 32 / E)  # 4 slots per expert
    out = moe(x)
    stats = moe.last_stats
    assert stats.capacity == capacity
    assert int(stats.dropped) == K * (32 - capacity)
    # First choices rank ahead of second choices, so tokens 0..3 take expert 0's slots and then expert 1's:
    # they keep both experts; every later token lost both and outputs zero.
    torch.testing.assert_close(out[:capacity], per_token_reference(moe, x[:capacity]), atol=1e-5, rtol=0)
    assert torch.all(out[capacity:] == 0)
    torch.testing.assert_close(stats.utilisation, torch.tensor([0.5, 0.5] + [0.0] * (E - 2)))


def test_aux_loss_is_one_for_uniform_routing_and_grows_when_routing_collapses() -> None:
    moe = make_moe()
    x = torch.randn(256, D)
    with torch.no_grad():
        moe.router.weight.zero_()  # all-equal logits
    moe(x)
    uniform = moe.last_stats
    # All-equal logits: P_e = 1/E exactly, so aux = E * sum_e f_e / E = 1 whatever f is.
    assert uniform.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    assert uniform.z_loss.item() == pytest.approx(math.log(E) ** 2, rel=1e-6)

    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 20.0, 19.0
    x[:, 0] = 1.0
    moe(x)
    collapsed = moe.last_stats
    # f = (1/2, 1/2, 0, ...), P ~ (0.73, 0.27, 0, ...) -> aux = E * (0.73 + 0.27) / 2 = E / K.
    assert collapsed.aux_loss.item() == pytest.approx(E / K, rel=1e-3)
    assert collapsed.aux_loss > uniform.aux_loss


def test_balanced_hard_routing_gives_aux_loss_one() -> None:
    moe = make_moe()
    # Token n strongly prefers experts n % E and (n + 1) % E: every expert gets exactly 2 * N / E assignments.
    n_tokens = 4 * E
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(E, D) * 30.0)
    x = torch.zeros(n_tokens, D)
    for n in range(n_tokens):
        x[n, n % E], x[n, (n + 1) % E] = 1.0, 0.99
    moe(x)
    stats = moe.last_stats
    torch.testing.assert_close(stats.utilisation, torch.full((E,), 1 / E))
    assert stats.aux_loss.item() == pytest.approx(1.0, abs=1e-4)


def test_z_loss_is_mean_squared_logsumexp() -> None:
    moe = make_moe()
    x = torch.randn(50, D)
    moe(x)
    expected = torch.logsumexp(x @ moe.router.weight.t(), dim=-1).pow(2).mean()
    torch.testing.assert_close(moe.last_stats.z_loss, expected)


def test_utilisation_sums_to_one() -> None:
    moe = make_moe(capacity_factor=1.0)
    moe(torch.randn(100, D))
    assert moe.last_stats.utilisation.shape == (E,)
    assert moe.last_stats.utilisation.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_gradients_reach_router_and_experts() -> None:
    moe = make_moe(capacity_factor=1.25)
    x = torch.randn(64, D, requires_grad=True)
    out = moe(x)
    (out.pow(2).mean() + 0.01 * moe.last_stats.aux_loss + 0.001 * moe.last_stats.z_loss).backward()
    for name, param in moe.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_gradients_match_expert_loop_block() -> None:
    moe = make_moe(capacity_factor=None)
    x = torch.randn(48, D)
    moe(x).pow(2).sum().backward()
    ours = {name: p.grad.clone() for name, p in moe.named_parameters()}
    moe.zero_grad()
    ExpertLoopMoE(moe)(x).pow(2).sum().backward()
    for name, param in moe.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, atol=1e-4, rtol=1e-4)


def test_first_choices_take_slots_before_second_choices() -> None:
    moe = make_moe(capacity_factor=0.5)  # 4 slots per expert for 32 tokens
    with torch.no_grad():  # tokens 0..15 prefer experts (0, 1), tokens 16..31 prefer (1, 0)
        moe.router.weight.zero_()
        moe.router.weight[0, :2] = torch.tensor([2.0, 1.0])
        moe.router.weight[1, :2] = torch.tensor([1.0, 2.0])
    x = torch.randn(32, D)
    x[:, :2] = torch.tensor([[1.0, 0.0]] * 16 + [[0.0, 1.0]] * 16)
    out = moe(x)
    kept = out.abs().sum(dim=1) > 0
    assert kept.nonzero().flatten().tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    assert int(moe.last_stats.dropped) == 2 * 32 - 8
