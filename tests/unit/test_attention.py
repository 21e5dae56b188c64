"""ChunkedAttention: exact attention when one chunk holds everything, the chunk/global pattern, padding, gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.lab.attention import ChunkedAttention

D, HEADS = 32, 4


def make_attention(chunk_size: int, num_global: int) -> ChunkedAttention:
    torch.manual_seed(0)
    return ChunkedAttention(D, HEADS, chunk_size, num_global)


def with_globals(attention: ChunkedAttention, x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``[globals; x]`` and its padding mask."""
    batch, num_global = x.shape[0], attention.num_global
    sequence = torch.cat([attention.global_tokens.expand(batch, -1, -1), x], dim=1)
    return sequence, torch.cat([torch.zeros(batch, num_global, dtype=torch.bool), padding], dim=1)


def block_masked_reference(attention: ChunkedAttention, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Full attention over ``[globals; x]`` with a dense mask: token i sees the globals and its own chunk,
    globals see everything, padded keys nobody."""
    sequence, key_padding = with_globals(attention, x, padding)
    num_global, length = attention.num_global, x.shape[1]
    chunk_of = torch.cat([torch.full((num_global,), -1), torch.arange(length) // attention.chunk_size])
    is_global = chunk_of < 0
    allowed = is_global[:, None] | is_global[None, :] | (chunk_of[:, None] == chunk_of[None, :])  # (S, S)
    allowed = allowed[None, None] & ~key_padding[:, None, None, :]
    batch, seq_len, _ = sequence.shape
    q, k, v = attention.in_proj(sequence).view(batch, seq_len, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(batch, seq_len, D)
    return attention.out_proj(out)


def test_one_chunk_without_globals_equals_multihead_attention() -> None:
    attention = make_attention(chunk_size=16, num_global=0)
    x = torch.randn(3, 16, D)
    padding = torch.zeros(3, 16, dtype=torch.bool)
    padding[1, 10:] = True
    tokens, summaries = attention(x, padding)
    expected, _ = attention.as_multihead_attention()(x, x, x, key_padding_mask=padding, need_weights=False)
    assert summaries.shape == (3, 0, D)
    torch.testing.assert_close(tokens[~padding], expected[~padding], atol=1e-5, rtol=0)


def test_one_chunk_with_globals_equals_multihead_attention_over_globals_and_tokens() -> None:
    attention = make_attention(chunk_size=32, num_global=3)
    x = torch.randn(2, 20, D)  # T < chunk: one (padded) chunk
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[0, 15:] = True
    tokens, summaries = attention(x, padding)
    sequence, key_padding = with_globals(attention, x, padding)
    expected, _ = attention.as_multihead_attention()(sequence, sequence, sequence, key_padding_mask=key_padding,
                                                     need_weights=False)
    torch.testing.assert_close(summaries, expected[:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[~padding], expected[:, 3:][~padding], atol=1e-5, rtol=0)


def test_many_chunks_follow_the_chunk_and_global_pattern() -> None:
    attention = make_attention(chunk_size=8, num_global=2)
    x = torch.randn(2, 29, D)  # 4 chunks, the last padded by 3
    padding = torch.zeros(2, 29, dtype=torch.bool)
    padding[1, 21:] = True
    tokens, summaries = attention(x, padding)
    assert tokens.shape == (2, 29, D) and summaries.shape == (2, 2, D)
    expected = block_masked_reference(attention, x, padding)
    torch.testing.assert_close(summaries, expected[:, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[~padding], expected[:, 2:][~padding], atol=1e-5, rtol=0)


def test_tokens_only_see_other_chunks_through_globals() -> None:
    attention = make_attention(chunk_size=8, num_global=0)
    x = torch.randn(1, 24, D)
    changed = x.clone()
    changed[:, 16:] += 1.0  # the third chunk only
    before, _ = attention(x)
    after, _ = attention(changed)
    torch.testing.assert_close(before[:, :16], after[:, :16])
    assert not torch.allclose(before[:, 16:], after[:, 16:])


def test_padded_positions_are_ignored_and_zeroed() -> None:
    attention = make_attention(chunk_size=8, num_global=2)
    x = torch.randn(2, 20, D)
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[:, 13:] = True
    tokens, summaries = attention(x, padding)
    noisy = x.clone()
    noisy[padding] = 1e3 * torch.randn(int(padding.sum()), D)
    noisy_tokens, noisy_summaries = attention(noisy, padding)
    torch.testing.assert_close(tokens, noisy_tokens)
    torch.testing.assert_close(summaries, noisy_summaries)
    assert torch.all(tokens[padding] == 0)
    assert torch.isfinite(tokens).all()


def test_fully_padded_sequence_stays_finite() -> None:
    attention = make_attention(chunk_size=4, num_global=0)
    tokens, _ = attention(torch.randn(1, 8, D), torch.ones(1, 8, dtype=torch.bool))
    assert torch.isfinite(tokens).all() and torch.all(tokens == 0)


def test_gradients_reach_inputs_projections_and_global_tokens() -> None:
    attention = make_attention(chunk_size=8, num_global=2)
    x = torch.randn(2, 19, D, requires_grad=True)
    padding = torch.zeros(2, 19, dtype=torch.bool)
    padding[0, 17:] = True
    tokens, summaries = attention(x, padding)
    (tokens.pow(2).sum() + summaries.pow(2).sum()).backward()
    for name, param in attention.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad[~padding].abs().sum() > 0
    assert torch.all(x.grad[padding] == 0)
