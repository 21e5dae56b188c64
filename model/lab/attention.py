"""Chunked self-attention with learned global summary tokens, for long token sequences (e.g. clinical notes).

:class:`ChunkedAttention` splits ``(B, T, d)`` tokens into ``ceil(T / c)`` chunks of ``c`` (the last one padded)
and prepends ``G`` learned global tokens:

- each token attends to the tokens of its own chunk and to the ``G`` global tokens;
- each global token attends to all global tokens and all ``T`` tokens, so information crosses chunks through
  them (two layers connect any two tokens).

Padded positions (``key_padding_mask`` True, and the fill of the last chunk) are never attended to, and their
outputs are zero. Masked scores use the dtype's most negative finite value rather than ``-inf``, so a query with
every key masked gives finite output instead of NaN (as in :mod:`model.router`).

Cost per layer: scores ``B * heads * (T * (c + G) + G * (G + T))`` instead of ``B * heads * T^2`` for full
attention, i.e. linear in ``T`` for fixed ``c`` and ``G``; memory of the largest score tensor likewise
``O(T * (c + G))`` rather than ``O(T^2)``. With ``T <= c`` (one chunk) every query sees every key, and the layer
is exactly full multi-head attention over ``[globals; tokens]``; :meth:`ChunkedAttention.as_multihead_attention`
returns the equivalent ``nn.MultiheadAttention`` to check that.

Example:
    >>> attention = ChunkedAttention(d_model=64, num_heads=4, chunk_size=128, num_global=4)
    >>> tokens, summaries = attention(torch.randn(2, 1000, 64), key_padding_mask=torch.zeros(2, 1000, dtype=torch.bool))
    >>> tokens.shape, summaries.shape
    (torch.Size([2, 1000, 64]), torch.Size([2, 4, 64]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChunkedAttention(nn.Module):
    """Multi-head self-attention within chunks of ``chunk_size`` tokens plus ``num_global`` learned global tokens.

    Shapes: ``x`` ``(B, T, d)``, ``key_padding_mask`` ``(B, T)`` bool (True = padding) -> tokens ``(B, T, d)``
    (zero at padded positions) and global summaries ``(B, G, d)``.
    """

    def __init__(self, d_model: int, num_heads: int, chunk_size: int, num_global: int = 4) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model, self.num_heads, self.chunk_size, self.num_global = d_model, num_heads, chunk_size, num_global
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.global_tokens = nn.Parameter(torch.randn(num_global, d_model) * 0.02)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, length, d = x.shape
        heads, chunk, num_global = self.num_heads, self.chunk_size, self.num_global
        num_chunks = -(-length // chunk)
        fill = num_chunks * chunk - length
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        padding = F.pad(key_padding_mask, (0, fill), value=True)  # (B, T')

        sequence = torch.cat([self.global_tokens.expand(batch, -1, -1), F.pad(x, (0, 0, 0, fill))], dim=1)
        q, k, v = self.in_proj(sequence).view(batch, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B,h,S,hd)

        token_bias = torch.zeros(padding.shape, dtype=x.dtype, device=x.device)
        token_bias = token_bias.masked_fill(padding, torch.finfo(x.dtype).min)  # (B, T')
        global_bias = torch.zeros(batch, num_global, dtype=x.dtype, device=x.device)

        # Global queries: every key.
        all_keys_bias = torch.cat([global_bias, token_bias], dim=1)[:, None, None, :]  # (B, 1, 1, G + T')
        summaries = F.scaled_dot_product_attention(q[:, :, :num_global], k, v, attn_mask=all_keys_bias)

        # Token queries: the global keys plus their own chunk's keys.
        def per_chunk(t: Tensor) -> Tensor:  # (B, h, G + T', hd) -> (B, h, n, c, hd)
            return t[:, :, num_global:].reshape(batch, heads, num_chunks, chunk, -1)

        def with_globals(t: Tensor) -> Tensor:  # (B, h, G + T', hd) -> (B, h, n, G + c, hd)
            shared = t[:, :, None, :num_global].expand(-1, -1, num_chunks, -1, -1)
            return torch.cat([shared, per_chunk(t)], dim=3)

        chunk_bias = torch.cat(
            [global_bias[:, None, :].expand(-1, num_chunks, -1), token_bias.view(batch, num_chunks, chunk)], dim=2
        )[:, None, :, None, :]  # (B, 1, n, 1, G + c)
        local = F.scaled_dot_product_attention(per_chunk(q), with_globals(k), with_globals(v), attn_mask=chunk_bias)

        local = local.reshape(batch, heads, num_chunks * chunk, -1)
        merged = torch.cat([summaries, local], dim=2).transpose(1, 2).reshape(batch, -1, d)
        out = self.out_proj(merged)
        tokens = out[:, num_global : num_global + length].masked_fill(key_padding_mask[..., None], 0.0)
        return tokens, out[:, :num_global]

    def as_multihead_attention(self) -> nn.MultiheadAttention:
        """An ``nn.MultiheadAttention`` (``batch_first``) with these weights: on ``[globals; tokens]`` with
        ``T <= chunk_size`` it gives this layer's outputs (at non-padded positions)."""
        mha = nn.MultiheadAttention(self.d_model, self.num_heads, batch_first=True)
        mha.load_state_dict({
            "in_proj_weight": self.in_proj.weight, "in_proj_bias": self.in_proj.bias,
            "out_proj.weight": self.out_proj.weight, "out_proj.bias": self.out_proj.bias,
        })
        return mha.to(self.in_proj.weight.device)
