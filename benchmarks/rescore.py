"""Batch re-scoring throughput: ``fusionline rescore`` on Ray Data with 1 and 2 replicas vs a naive single-process
loop, same model, same recording, same batches.

- naive: one process loads the line's handler and calls ``handler.infer`` on the recording's parts
  ``--batch-size`` at a time (torch's default threads);
- rescore: :func:`pipelines.rescore.rescore` into a fresh output folder (shards of ``--shard-size``, Parquet rows
  written), on a local Ray started once beforehand.

Both are timed end to end, model loading and warm-up included (for rescore: the actors' start, one CPU each), so
each figure is what a user waits for per item. ``start-up s`` is the wait for the first ``--shard-size`` items to
be scored (for rescore: the first shard written); ``steady items/s`` is the rate after it, the one a long archive
converges to (for rescore the other replicas' first shards, under way at that moment, are counted as done by then,
which errs low). The paths are interleaved for ``--rounds`` rounds and each one's median is reported. The last line is
``ratio: X`` = 2-replica rescore items/s / naive items/s, end to end.

    python benchmarks/rescore.py --parts 600 --shard-size 32 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, MachineWatch, add_bench_recording_flags, ensure_recording  # noqa: E402
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402
from pipelines import lines  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_recording_flags(p, "to rescore")
    p.add_argument("--model", type=Path, default=SERVING_MODEL, help="model folder (default: the CNN model factory-v2)")
    p.add_argument("--shard-size", type=int, default=32, help="rescore events per shard")
    p.add_argument("--batch-size", type=int, default=16, help="parts per handler call, both paths")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the three paths (median kept)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, args.parts)
    parts = sum(isinstance(item, Sample) for item in Replayer(recording))
    paths = {"naive": lambda: naive_loop(args.model, recording, args.batch_size, args.shard_size)}
    for replicas in (1, 2):
        paths[f"rescore-{replicas}"] = lambda r=replicas: rescore_run(args.model, recording, r, args.shard_size,
                                                                       args.batch_size)
    import ray

    from pipelines.runtime import connect_ray

    connect_ray(num_cpus=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs: dict[str, list[Timing]] = {name: [] for name in paths}
    try:
        for r in range(args.rounds):
            for name, run in paths.items():
                runs[name].append(run())
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1].rate:.1f} items/s" for k, v in runs.items()))
    finally:
        ray.shutdown()

    setups = {"naive": ("naive loop, handler.infer", f"1 process, {torch.get_num_threads()} torch threads"),
              "rescore-1": ("fusionline rescore (Ray Data)", "1 replica"),
              "rescore-2": ("fusionline rescore (Ray Data)", "2 replicas")}
    print(f"\nrescore, {parts} parts of {recording} (640x480 + 1 s WAV), model {args.model}, batch {args.batch_size}, "
          f"shards of {args.shard_size}; end to end (model load and warm-up included); median of {args.rounds} "
          "interleaved rounds")
    print(f"{'path':<32} {'items/s':>9} {'range':>15} {'start-up s':>11} {'steady items/s':>15}  setup")
    median = {}
    for name, (what, setup) in setups.items():
        rates = [t.rate for t in runs[name]]
        median[name] = statistics.median(rates)
        start_up = statistics.median(t.start_up_s for t in runs[name])
        steady = statistics.median(t.steady_rate for t in runs[name])
        print(f"{what:<32} {median[name]:>9.1f} {f'{min(rates):.1f}-{max(rates):.1f}':>15} {start_up:>11.1f} "
              f"{steady:>15.1f}  {setup}")
    watch.verdict()
    print(f"ratio: {median['rescore-2'] / median['naive']:.2f}")


@dataclass(frozen=True)
class Timing:
    """One path's run: ``items`` scored in ``wall_s``, the first ``first_items`` of them after ``start_up_s``."""

    items: int
    wall_s: float
    first_items: int
    start_up_s: float

    @property
    def rate(self) -> float:
        return self.items / self.wall_s

    @property
    def steady_rate(self) -> float:
        return (self.items - self.first_items) / (self.wall_s - self.start_up_s)


def naive_loop(model_dir: Path, recording: Path, batch_size: int, first_items: int) -> Timing:
    """One process: load the line's handler, then ``infer`` the parts ``batch_size`` at a time."""
    start = time.perf_counter()
    handler = lines.handler_class(lines.serving(model_dir)).from_pretrained(model_dir)
    handler.warm_up()
    items, batch, start_up_s = 0, [], 0.0
    for item in Replayer(recording):
        batch += [item] if isinstance(item, Sample) else []
        if len(batch) == batch_size:
            items += len(handler.infer(batch))
            batch = []
            if not start_up_s and items >= first_items:
                start_up_s, first_items = time.perf_counter() - start, items
    items += len(handler.infer(batch)) if batch else 0
    return Timing(items, time.perf_counter() - start, first_items, start_up_s)


def rescore_run(model_dir: Path, recording: Path, replicas: int, shard_size: int, batch_size: int) -> Timing:
    """:func:`pipelines.rescore.rescore` into a fresh output folder (actors started and stopped)."""
    from pipelines.rescore import rescore

    first_done: list[float] = []

    def progress(done: int, planned: int) -> None:
        if done and not first_done:
            first_done.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="fusionline-rescore-bench-") as out:
        start = time.perf_counter()
        summary = rescore(lines.serving(model_dir), [recording], model_dir, out, replicas=replicas,
                          shard_size=shard_size, batch_size=batch_size, progress=progress)
        return Timing(summary["items"], time.perf_counter() - start, shard_size * replicas, first_done[0])


if __name__ == "__main__":
    main()
