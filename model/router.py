"""The multimodal router: attention fusion over whatever modalities a sample has.

Tokens from each modality are projected into a shared ``d_model`` space and tagged with a learned
modality-type embedding (plus a position embedding per token within its modality). Optional self-attention
blocks mix them. Then one query per task (``defect``, ``machine``, ...) attends over all present tokens:

- a task's query is the projected **text embedding** (plus a per-task offset) when the sample has text, else the
  task's **learned query** (chosen per sample from the presence mask);
- absent modalities are removed with a key-padding mask (any subset may be missing, as long as one is left);
- the attention mass each modality receives, averaged over heads and task queries, is the sample's **modality
  weights**: they sum to 1 over the present modalities and are exactly 0 for absent ones.

One query per task rather than one shared query: with a single query the tasks compete for the attention (the
audio that explains the machine state crowds out the image that explains the defect); with one each, the defect
query learns to read the image and the machine query the audio, and the weights say which modality each
decision rested on.

Masked scores are filled with the dtype's most negative finite value rather than ``-inf`` so a sample with
nothing present yields finite (meaningless) outputs instead of NaN; callers should not send such samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class RouterOutput:
    """What the router returns.

    Attributes:
        fused: ``(B, T, d_model)`` one fused vector per task query (the task heads read theirs).
        modality_weights: ``(B, M)`` attention mass per modality (order of ``modalities``), mean over task queries.
        task_weights: ``(B, T, M)`` attention mass per modality for each task query.
        attention: ``(B, n_heads, T, N)`` the queries' attention over all ``N`` tokens.
    """

    fused: Tensor
    modality_weights: Tensor
    task_weights: Tensor
    attention: Tensor


def _masked_softmax(scores: Tensor, key_padding: Tensor) -> Tensor:
    """Softmax over the last dim with ``key_padding`` (``(B, N)``, True = ignore) broadcast over heads/queries."""
    mask = key_padding[:, None, None, :]
    scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


class Attention(nn.Module):
    """Multi-head attention with a key-padding mask that also returns the attention probabilities.

    Shapes: query ``(B, Q, d)``, keys/values ``(B, N, d)``, ``key_padding`` ``(B, N)`` bool (True = absent)
    -> output ``(B, Q, d)``, probabilities ``(B, heads, Q, N)``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, keys: Tensor, key_padding: Tensor) -> tuple[Tensor, Tensor]:
        b, nq, d = query.shape
        n = keys.shape[1]
        q = self.q(query).view(b, nq, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(keys).view(b, n, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        probs = _masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), key_padding)
        out = (self.drop(probs) @ v).transpose(1, 2).reshape(b, nq, d)
        return self.out(out), probs


class FusionBlock(nn.Module):
    """Pre-norm transformer block (self-attention over present tokens + MLP); ``(B, N, d) -> (B, N, d)``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model)
        )

    def forward(self, tokens: Tensor, key_padding: Tensor) -> Tensor:
        h = self.norm1(tokens)
        tokens = tokens + self.attn(h, h, key_padding)[0]
        return tokens + self.mlp(self.norm2(tokens))


class MultimodalRouter(nn.Module):
    """Fuse per-modality tokens into one vector with a text-or-learned query; report modality weights.

    Args:
        token_dims: input width of each modality's tokens, in modality order, e.g.
            ``{"image": 128, "audio": 128, "text": 128}``.
        token_counts: tokens per modality, e.g. ``{"image": 5, "audio": 5, "text": 1}``.
        d_model: shared token width.
        n_heads: attention heads.
        layers: self-attention blocks over the tokens before the query pools them (0 for none).
        dropout: dropout in the blocks.
        query_modality: the modality whose first token becomes the query when present (``"text"``).
        n_queries: task queries (one per task head).

    Shapes:
        - ``tokens[m]``: ``(B, token_counts[m], token_dims[m])`` for every modality ``m``
          (any values where the modality is absent; they are masked);
        - ``present``: ``(B, M)`` bool, ``M = len(token_dims)``;
        - output: :class:`RouterOutput` with ``fused (B, T, d_model)``, ``modality_weights (B, M)``.

    Example:
        >>> router = MultimodalRouter({"image": 128, "audio": 128, "text": 128}, {"image": 5, "audio": 5, "text": 1})
        >>> tokens = {"image": torch.randn(2, 5, 128), "audio": torch.randn(2, 5, 128), "text": torch.zeros(2, 1, 128)}
        >>> present = torch.tensor([[True, True, False], [True, False, False]])  # sample 1 is image-only
        >>> out = router(tokens, present)
        >>> out.fused.shape, out.modality_weights[1]
        (torch.Size([2, 2, 128]), tensor([1., 0., 0.]))
    """

    def __init__(
        self,
        token_dims: dict[str, int],
        token_counts: dict[str, int],
        d_model: int = 128,
        n_heads: int = 4,
        layers: int = 1,
        dropout: float = 0.1,
        query_modality: str = "text",
        n_queries: int = 2,
    ):
        super().__init__()
        if list(token_dims) != list(token_counts):
            raise ValueError("token_dims and token_counts must name the same modalities in the same order")
        self.modalities = tuple(token_dims)
        self.query_index = self.modalities.index(query_modality) if query_modality in self.modalities else -1
        self.d_model = d_model
        self.proj = nn.ModuleDict({m: nn.Linear(dim, d_model) for m, dim in token_dims.items()})
        self.type_embed = nn.Parameter(torch.zeros(len(self.modalities), d_model))
        self.pos_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(n, d_model)) for m, n in token_counts.items()})
        self.blocks = nn.ModuleList([FusionBlock(d_model, n_heads, dropout) for _ in range(layers)])
        self.n_queries = n_queries
        self.learned_query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.text_query = nn.Linear(token_dims[query_modality], d_model) if self.query_index >= 0 else None
        self.text_task = nn.Parameter(torch.zeros(n_queries, d_model)) if self.query_index >= 0 else None
        self.norm_kv = nn.LayerNorm(d_model)
        self.pool = Attention(d_model, n_heads, 0.0)
        self.norm_out = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.norm_final = nn.LayerNorm(d_model)
        # token -> modality one-hot (N, M): sums attention mass per modality with one matmul
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(token_counts.values())])
        self.register_buffer("token_owner", F.one_hot(owner, len(self.modalities)).float(), persistent=False)
        self.register_buffer("token_modality", owner, persistent=False)
        nn.init.normal_(self.type_embed, std=0.02)
        nn.init.normal_(self.learned_query, std=0.02)
        if self.text_task is not None:
            nn.init.normal_(self.text_task, std=0.02)
        for p in self.pos_embed.values():
            nn.init.normal_(p, std=0.02)

    def query(self, tokens: dict[str, Tensor], present: Tensor) -> Tensor:
        """``(B, T, d_model)``: the projected text embedding (plus a per-task offset) where text is present, else
        the learned task queries."""
        b = present.shape[0]
        learned = self.learned_query.expand(b, -1, -1)
        if self.text_query is None:
            return learned
        text = self.text_query(tokens[self.modalities[self.query_index]][:, 0])[:, None] + self.text_task
        return torch.where(present[:, self.query_index, None, None], text, learned)

    def forward(self, tokens: dict[str, Tensor], present: Tensor) -> RouterOutput:
        seq = torch.cat(
            [self.proj[m](tokens[m]) + self.type_embed[i] + self.pos_embed[m] for i, m in enumerate(self.modalities)],
            dim=1,
        )  # (B, N, d)
        key_padding = ~present[:, self.token_modality]  # (B, N)
        for block in self.blocks:
            seq = block(seq, key_padding)
        q = self.query(tokens, present)  # (B, T, d)
        pooled, probs = self.pool(q, self.norm_kv(seq), key_padding)  # (B, T, d), (B, h, T, N)
        fused = q + pooled
        fused = self.norm_final(fused + self.mlp(self.norm_out(fused)))
        task_weights = probs.mean(dim=1) @ self.token_owner  # (B, T, M)
        return RouterOutput(fused, task_weights.mean(dim=1), task_weights, probs)


def check_modalities(names: Iterable[str], modalities: Sequence[str]) -> None:
    """ValueError naming those of ``names`` that are not among the model's ``modalities``."""
    unknown = set(names) - set(modalities)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; the model knows {list(modalities)}")


def given_modalities(inputs: Mapping[str, Tensor | None], present: Tensor | None, modalities: Sequence[str],
                     model: str) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """What a forward pass was given: the tensors by modality and the per-sample presence mask.

    Args:
        inputs: tensors by modality name; one left out (or None) is absent from the whole batch.
        present: ``(B, M)`` bool per sample (columns ``modalities``); None: the given modalities.
        modalities: the model's modality names, in presence-mask column order.
        model: the model's name, for the errors.

    Returns:
        ``given`` (the tensors that are not None, in ``inputs`` order), ``present`` ``(B, M)`` bool on their device
        (a modality not given is never present) and ``ref``, the first given tensor (batch size, device and dtype
        for the zeros that stand in for absent modalities).

    Raises:
        ValueError: an unknown modality name, or no tensor at all.
    """
    check_modalities(inputs, modalities)
    given = {m: x for m, x in inputs.items() if x is not None}
    if not given:
        raise ValueError(f"{model} needs at least one of {list(modalities)}")
    ref = next(iter(given.values()))
    supplied = torch.tensor([m in given for m in modalities], device=ref.device)
    b = ref.shape[0]
    present = supplied.expand(b, -1) if present is None else present.to(device=ref.device, dtype=torch.bool) & supplied
    return given, present, ref
