"""Top-k mixture of experts with SwiGLU experts and vectorised, capacity-bounded dispatch.

:class:`SparseMoE` routes each token to its ``top_k`` experts (softmax router, top-k gates renormalised to sum
to 1, as in Mixtral) and runs every expert as one batched matmul over a padded ``(E, capacity, d)`` buffer:

1. the ``top_k * N`` assignments are sorted by expert, first choices of all tokens before second choices
   (Switch / GShard priority, so a token loses its second expert before any token loses its first), and each
   gets its rank within its expert;
2. assignment ``(token, expert)`` with rank ``r < capacity`` owns slot ``expert * capacity + r``; a gather fills
   the ``(E * capacity, d)`` buffer (unused slots hold an arbitrary token whose result is never read);
3. ``bmm`` with the fused gate/up weights ``w13`` ``(E, d, 2 * ffn)``, SiLU-gate, ``bmm`` with ``w2``
   ``(E, ffn, d)``;
4. ``embedding_bag`` gathers each token's ``top_k`` slot results and sums them weighted by the gates.

Assignments over capacity are dropped: they contribute zero, so a token that lost all its experts outputs zero
and, inside a residual block ``x + moe(x)``, passes through unchanged. ``capacity_factor=None`` sizes the
buffer to the busiest expert (dropless; one host sync, so keep a float factor for export).

Cost: ``E * capacity * 6 * d * ffn`` FLOPs, i.e. ``capacity_factor`` times the useful
``top_k * N * 6 * d * ffn`` (dropless: busiest / mean expert load). Memory ``O(E * capacity * ffn)``.
No Python loop over tokens or experts and no data-dependent shapes (with a float ``capacity_factor``).

After every forward ``last_stats`` (:class:`MoEStats`) holds the load-balancing loss, the router z-loss, the
per-expert utilisation and the count of dropped assignments; the trainer adds the losses with its own weights.

:class:`ExpertLoopMoE` is the Hugging Face ``MixtralSparseMoeBlock`` algorithm (a loop over the experts that
received tokens, ``torch.where``, gather, ``index_add_``) over the *same* parameters: the reference the
benchmark (``benchmarks/moe.py``) and the tests compare against.

Example:
    >>> moe = SparseMoE(MoEConfig(d_model=64, ffn_dim=128, num_experts=8, top_k=2))
    >>> y = moe(torch.randn(2, 10, 64))
    >>> y.shape, moe.last_stats.utilisation.shape
    (torch.Size([2, 10, 64]), torch.Size([8]))
    >>> loss = y.pow(2).mean() + 0.01 * moe.last_stats.aux_loss + 0.001 * moe.last_stats.z_loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class MoEConfig:
    """Shape and routing of a :class:`SparseMoE`.

    Attributes:
        d_model: token width ``d``.
        ffn_dim: hidden width of each SwiGLU expert.
        num_experts: ``E``.
        top_k: experts per token.
        capacity_factor: slots per expert as a multiple of the balanced load ``top_k * N / E`` (capped at
            ``N``); ``None`` = dropless (capacity = busiest expert's load, data-dependent).
    """

    d_model: int = 512
    ffn_dim: int = 1024
    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = 1.25


@dataclass
class MoEStats:
    """Routing statistics of the last forward.

    Attributes:
        aux_loss: ``()`` load-balancing loss ``E * sum_e f_e * P_e`` with ``f_e`` the fraction of the
            ``top_k * N`` assignments routed to expert ``e`` and ``P_e`` its mean router probability; 1.0 when
            routing is uniform, up to ``E / top_k`` when it collapses onto ``top_k`` experts. Gradient via ``P``.
        z_loss: ``()`` router z-loss, mean over tokens of ``logsumexp(logits)^2`` (keeps logits small).
        utilisation: ``(E,)`` ``f_e``, fraction of assignments per expert (before dropping); sums to 1.
        dropped: ``()`` int64, assignments over capacity (each cost one token one of its experts).
        capacity: slots per expert used.
    """

    aux_loss: Tensor
    z_loss: Tensor
    utilisation: Tensor
    dropped: Tensor
    capacity: int


def route(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax router in fp32: ``(N, E)`` logits -> probabilities ``(N, E)``, gates ``(N, k)`` (renormalised to
    sum to 1 per token) and expert ids ``(N, k)``, best first."""
    probs = torch.softmax(logits.float(), dim=-1)
    gates, experts = probs.topk(top_k, dim=-1)
    return probs, gates / gates.sum(dim=-1, keepdim=True), experts


def routing_losses(logits: Tensor, probs: Tensor, experts: Tensor, assignment_counts: Tensor) -> tuple[Tensor, ...]:
    """Load-balancing loss, z-loss and utilisation from ``(N, E)`` logits and probabilities, ``(N, k)`` expert
    ids and ``(E,)`` assignment counts."""
    utilisation = assignment_counts.float() / assignment_counts.sum()
    aux_loss = probs.shape[-1] * (utilisation * probs.mean(dim=0)).sum()
    # logsumexp(l) = l_e - log p_e for any e; the top expert's p_e >= 1/E keeps the log well-conditioned.
    top = experts[:, :1]
    log_partition = logits.float().gather(1, top) - probs.gather(1, top).log()
    z_loss = log_partition.pow(2).mean()
    return aux_loss, z_loss, utilisation


class SparseMoE(nn.Module):
    """Top-k mixture of SwiGLU experts, ``(..., d) -> (..., d)``; see the module docstring for the dispatch.

    Parameters:
        router: ``nn.Linear(d, E, bias=False)``.
        w13: ``(E, d, 2 * ffn)`` fused gate (first ``ffn`` columns, SiLU) and up projections.
        w2: ``(E, ffn, d)`` down projection.

    Example:
        >>> moe = SparseMoE(MoEConfig(d_model=32, ffn_dim=64, capacity_factor=None))
        >>> moe(torch.randn(100, 32)).shape, int(moe.last_stats.dropped)
        (torch.Size([100, 32]), 0)
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        d, ffn, num_experts = config.d_model, config.ffn_dim, config.num_experts
        self.router = nn.Linear(d, num_experts, bias=False)
        self.w13 = nn.Parameter(torch.randn(num_experts, d, 2 * ffn) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(num_experts, ffn, d) / math.sqrt(ffn))
        self.last_stats: MoEStats | None = None

    def capacity(self, num_tokens: int, assignment_counts: Tensor) -> int:
        """Slots per expert for ``num_tokens`` tokens (an expert never needs more than ``num_tokens``)."""
        cfg = self.config
        if cfg.capacity_factor is None:
            return int(assignment_counts.max())
        return min(num_tokens, math.ceil(cfg.capacity_factor * cfg.top_k * num_tokens / cfg.num_experts))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., d)`` -> ``(..., d)``; sets ``self.last_stats``."""
        cfg = self.config
        num_experts, top_k = cfg.num_experts, cfg.top_k
        tokens = x.reshape(-1, cfg.d_model)
        num_tokens = tokens.shape[0]

        logits = self.router(tokens)
        probs, gates, experts = route(logits, top_k)

        # Assignment a = choice * N + token. Sorting by (expert, a) groups assignments by expert, first choices
        # ahead of second choices; the keys are unique, so any sort algorithm gives this order.
        num_assignments = top_k * num_tokens
        assignment = torch.arange(num_assignments, device=x.device)
        expert_of_assignment = experts.t().reshape(-1)  # (k*N,)
        order = torch.argsort(expert_of_assignment * num_assignments + assignment)  # (k*N,)
        sorted_expert = expert_of_assignment.index_select(0, order)
        assignment_counts = torch.zeros(num_experts, dtype=torch.long, device=x.device).scatter_add(
            0, expert_of_assignment, torch.ones_like(expert_of_assignment))  # (E,)
        first_of_expert = assignment_counts.cumsum(dim=0) - assignment_counts
        rank = assignment - first_of_expert.index_select(0, sorted_expert)  # place within its expert, sorted order
        capacity = self.capacity(num_tokens, assignment_counts)
        dump = num_experts * capacity  # one extra slot collects the dropped assignments and is cut off
        sorted_slot = torch.where(rank < capacity, sorted_expert * capacity + rank, dump)

        token_of_slot = torch.zeros(dump + 1, dtype=torch.long, device=x.device)
        token_of_slot = token_of_slot.scatter(0, sorted_slot, order % num_tokens)[:-1]
        expert_in = tokens.index_select(0, token_of_slot).view(num_experts, capacity, cfg.d_model)

        gate_up = torch.bmm(expert_in, self.w13)  # (E, cap, 2*ffn)
        gate, up = gate_up.chunk(2, dim=-1)
        expert_out = torch.bmm(F.silu(gate) * up, self.w2).view(num_experts * capacity, cfg.d_model)

        # Gather-and-weigh in one op; dropped assignments read slot 0 with weight 0.
        slot = torch.empty_like(sorted_slot).scatter(0, order, sorted_slot).view(top_k, num_tokens).t()  # (N, k)
        kept = slot < dump
        weight = (gates * kept).to(x.dtype)
        out = F.embedding_bag(torch.where(kept, slot, 0), expert_out, per_sample_weights=weight, mode="sum")

        aux_loss, z_loss, utilisation = routing_losses(logits, probs, experts, assignment_counts)
        self.last_stats = MoEStats(aux_loss, z_loss, utilisation, (~kept).sum(), capacity)
        return out.view_as(x)


class ExpertLoopMoE(nn.Module):
    """Hugging Face ``MixtralSparseMoeBlock`` dispatch over a :class:`SparseMoE`'s own parameters (no capacity).

    Loops over the experts that received tokens; for each, ``torch.where`` finds its tokens, they are gathered,
    run through separate gate (``w1``) and up (``w3``) matmuls and ``w2``, scaled by their gates and
    ``index_add_``-ed into the output. Matches ``SparseMoE`` with nothing dropped. Shapes ``(..., d) -> (..., d)``.
    """

    def __init__(self, moe: SparseMoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: Tensor) -> Tensor:
        moe, cfg = self.moe, self.moe.config
        tokens = x.reshape(-1, cfg.d_model)
        _, gates, experts = route(moe.router(tokens), cfg.top_k)
        gates = gates.to(x.dtype)
        out = torch.zeros_like(tokens)
        expert_mask = F.one_hot(experts, cfg.num_experts).permute(2, 1, 0)  # (E, k, N)
        for expert in torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist():
            choice, token = torch.where(expert_mask[expert])
            state = tokens[token]
            w1, w3 = moe.w13[expert, :, : cfg.ffn_dim], moe.w13[expert, :, cfg.ffn_dim :]
            hidden = (F.silu(state @ w1) * (state @ w3)) @ moe.w2[expert]
            out.index_add_(0, token, hidden * gates[token, choice, None])
        return out.view_as(x)
