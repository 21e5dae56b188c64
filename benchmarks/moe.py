"""Top-k MoE dispatch on CPU: the vectorised ``SparseMoE`` vs the Hugging Face Mixtral expert loop vs a per-token loop.

All variants share one ``SparseMoE``'s router and SwiGLU expert weights (fp32) and compute the same output
(dropless). Rows:

- ``sorted dispatch`` -- ``SparseMoE`` (padded ``(E, capacity, d)`` buffer, two ``bmm``, ``embedding_bag``
  combine), dropless (capacity = busiest expert) and with ``--capacity-factor`` (padding and drops reported);
- ``expert loop`` -- ``ExpertLoopMoE``, the ``MixtralSparseMoeBlock`` algorithm (loop over experts,
  ``torch.where``, gather, separate w1/w3 matmuls, ``index_add_``);
- ``per-token loop`` -- a Python loop over tokens and their experts, timed on ``--per-token-sample`` tokens and
  extrapolated linearly to ``--tokens``;
- ``dense ceiling`` -- the same useful work without routing: one expert's SwiGLU on a dense
  ``(top_k * tokens, d)`` input (two large matmuls and the SiLU gate). A dispatch should not beat it, so "share
  of ceiling" is how much of the attainable matmul throughput the dispatch keeps.

Useful FLOPs = ``tokens * top_k * 3 * 2 * d * ffn`` (three ``d x ffn`` matmuls per routed token); backward
counts twice that (input gradient included, as in training). Times are medians over ``--repeats`` rounds
after a warm-up round; each round runs every variant once, so background load falls on all alike. The last
line is ``ratio: X`` = expert-loop forward time / sorted-dispatch (dropless) forward time.

    python benchmarks/moe.py --tokens 4096 --d-model 512 --ffn 1024 --experts 8 --top-k 2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MachineWatch  # noqa: E402
from model.lab.moe import ExpertLoopMoE, MoEConfig, SparseMoE, route  # noqa: E402


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A measurement: seconds one call of ``fn`` takes."""
    def measure() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return measure


def timed_backward(forward: Callable[[], Tensor], grad_out: Tensor, inputs: list[Tensor]) -> Callable[[], float]:
    """A measurement: seconds of ``backward`` alone (the forward before it is not timed)."""
    def measure() -> float:
        for tensor in inputs:
            tensor.grad = None
        out = forward()
        start = time.perf_counter()
        out.backward(grad_out)
        return time.perf_counter() - start
    return measure


def interleaved_median_ms(measurements: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median ms of each measurement over ``repeats`` rounds after one warm-up round. Every round runs each
    measurement once, so load from other processes falls on all of them alike."""
    for measure in measurements.values():
        measure()
    samples: dict[str, list[float]] = {name: [] for name in measurements}
    for _ in range(repeats):
        for name, measure in measurements.items():
            samples[name].append(measure())
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def per_token_loop(moe: SparseMoE, tokens: Tensor) -> Tensor:
    """One token at a time, one expert at a time (vector-matrix products)."""
    cfg = moe.config
    out = torch.zeros_like(tokens)
    for n in range(tokens.shape[0]):
        _, gates, experts = route(moe.router(tokens[n : n + 1]), cfg.top_k)
        for gate, expert in zip(gates[0].tolist(), experts[0].tolist()):
            gate_up = tokens[n] @ moe.w13[expert]
            out[n] += gate * ((F.silu(gate_up[: cfg.ffn_dim]) * gate_up[cfg.ffn_dim :]) @ moe.w2[expert])
    return out


def dense_swiglu(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    """One expert's SwiGLU on every row of ``x`` (the ceiling)."""
    gate, up = (x @ w13).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per forward (batch * sequence)")
    p.add_argument("--d-model", type=int, default=512, help="token width d")
    p.add_argument("--ffn", type=int, default=1024, help="hidden width of each SwiGLU expert")
    p.add_argument("--experts", type=int, default=8, help="number of experts E")
    p.add_argument("--top-k", type=int, default=2, help="experts per token")
    p.add_argument("--capacity-factor", type=float, default=1.25,
                   help="capacity factor of the extra capacity-bounded row (the main row is dropless)")
    p.add_argument("--repeats", type=int, default=7,
                   help="timed rounds (each runs every variant once, interleaved); medians reported")
    p.add_argument("--per-token-sample", type=int, default=256,
                   help="tokens the per-token loop runs (its time is extrapolated to --tokens)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and inputs")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    watch = MachineWatch()
    cfg = MoEConfig(d_model=args.d_model, ffn_dim=args.ffn, num_experts=args.experts, top_k=args.top_k,
                    capacity_factor=None)
    moe = SparseMoE(cfg)
    capped = SparseMoE(MoEConfig(**{**vars(cfg), "capacity_factor": args.capacity_factor}))
    capped.load_state_dict(moe.state_dict())
    loop = ExpertLoopMoE(moe)
    x = torch.randn(args.tokens, args.d_model)
    dense_x = torch.randn(args.top_k * args.tokens, args.d_model)
    w13, w2 = moe.w13.detach()[0].clone(), moe.w2.detach()[0].clone()
    sample = x[: args.per_token_sample]

    with torch.no_grad():
        ours, reference = moe(x), loop(x)
        max_diff = (ours - reference).abs().max().item()
        dropless_stats = moe.last_stats
        capped(x)
        capped_stats = capped.last_stats
        per_token_diff = (per_token_loop(moe, sample) - ours[: len(sample)]).abs().max().item()

        scale = args.tokens / len(sample)
        forward_ms = interleaved_median_ms({
            "sorted dispatch (dropless)": timed(lambda: moe(x)),
            f"sorted dispatch (capacity {args.capacity_factor})": timed(lambda: capped(x)),
            "expert loop (HF Mixtral)": timed(lambda: loop(x)),
            f"per-token loop (x{scale:g} extrapolated)": lambda: timed(lambda: per_token_loop(moe, sample))() * scale,
            "dense ceiling": timed(lambda: dense_swiglu(dense_x, w13, w2)),
        }, args.repeats)

    # Training: the input needs its gradient too (an earlier layer), so backward does twice the forward's work.
    x.requires_grad_()
    dense_x.requires_grad_()
    dense_w = [w13.requires_grad_(), w2.requires_grad_()]
    grad_out = torch.randn_like(x)
    params = [x, *moe.parameters()]
    backward_ms = interleaved_median_ms({
        "sorted dispatch (dropless)": timed_backward(lambda: moe(x), grad_out, params),
        "expert loop (HF Mixtral)": timed_backward(lambda: loop(x), grad_out, params),
        "dense ceiling": timed_backward(lambda: dense_swiglu(dense_x, *dense_w), torch.randn_like(dense_x),
                                        [dense_x, *dense_w]),
    }, args.repeats)

    useful_gflop = args.tokens * args.top_k * 6 * args.d_model * args.ffn / 1e9
    print(f"MoE dispatch, CPU fp32, {args.threads} threads: tokens {args.tokens}, d {args.d_model}, "
          f"ffn {args.ffn}, experts {args.experts}, top-{args.top_k}; useful forward {useful_gflop:.2f} GFLOP; "
          f"median of {args.repeats}")
    print(f"dropless capacity {dropless_stats.capacity} (balanced {args.tokens * args.top_k / args.experts:g}); "
          f"capacity {args.capacity_factor}: {capped_stats.capacity} slots, "
          f"{int(capped_stats.dropped)} of {args.tokens * args.top_k} assignments dropped; "
          f"max |diff| vs expert loop {max_diff:.1e}, vs per-token loop {per_token_diff:.1e}")
    for title, timings, gflop in (("forward", forward_ms, useful_gflop), ("backward", backward_ms, 2 * useful_gflop)):
        ceiling = timings["dense ceiling"]
        print(f"\n{title:<44} {'ms':>10} {'tokens/s':>12} {'GFLOP/s':>9} {'of ceiling':>11}")
        for name, ms in timings.items():
            print(f"{name:<44} {ms:>10.1f} {args.tokens / ms * 1e3:>12,.0f} {gflop / ms * 1e3:>9.1f} "
                  f"{ceiling / ms:>10.0%}")
    ours_ms = forward_ms["sorted dispatch (dropless)"]
    per_token_ms = next(ms for name, ms in forward_ms.items() if name.startswith("per-token"))
    hf = "expert loop (HF Mixtral)"
    print(f"\nsorted dispatch vs per-token loop: {per_token_ms / ours_ms:.0f}x faster (forward)")
    print(f"sorted dispatch vs expert loop: forward {forward_ms[hf] / ours_ms:.2f}x, backward "
          f"{backward_ms[hf] / backward_ms['sorted dispatch (dropless)']:.2f}x (above 1: the dispatch is faster)")
    watch.verdict()
    print(f"ratio: {forward_ms[hf] / ours_ms:.2f}")


if __name__ == "__main__":
    main()
