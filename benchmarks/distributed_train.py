"""Data-parallel training on Ray Train: ``train factory --workers 2`` against ``--workers 1`` on this machine.

The same training (the factory model and recipe: batches of ``--batch-size`` random crops, augmented, seed 0) on
the first ``--parts`` parts of the training recording, ``--epochs`` epochs, four ways:

- ``in-process``: ``fit`` in this process with ``--threads`` threads (``train factory`` without ``--workers``);
- ``ray 1x1``: one Ray Train worker with 1 thread (what one worker of ``--workers 2`` has);
- ``ray 1 worker``: one Ray Train worker with the machine's cores (``train factory --workers 1``);
- ``ray 2 workers``: two Ray Train workers, the cores shared out (``train factory --workers 2``): each takes half
  of every global batch, DDP all-reduces the gradients (gloo), batch norms use the global batch's statistics.

Each Ray run checkpoints every epoch, as ``train factory --workers`` does. Throughput: training parts per second
over the epochs after the first (rank 0's clock, checkpoints included; the first epoch carries DDP's set-up);
``start-up`` is the rest of the wall time (Ray Train's controller and workers, shipping model and data). Every
run must train the same thing: the largest relative gap of its per-epoch loss to the in-process curve is printed
(round-off for one worker; two also draw their own dropout masks, so theirs is a statistical match).

The last line is ``ratio: X`` = throughput of ``ray 2 workers`` / that of ``ray 1 worker``.

    python benchmarks/distributed_train.py --parts 384 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import TRAIN, MachineWatch, ensure_recording  # noqa: E402
from model.config import InspectorConfig  # noqa: E402
from model.factory_model import FactoryInspector  # noqa: E402
from model.train import TrainConfig, fit  # noqa: E402
from pipelines.distributed import RayTrain, fit_data_parallel  # noqa: E402
from pipelines.lines.factory.datasets import load_recording, recording_classes  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=TRAIN, help="training recording (synthesised if missing)")
    p.add_argument("--parts", type=int, default=384, help="parts of the recording trained on (its first ones)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (the recipe's)")
    p.add_argument("--threads", type=int, default=cores, help="torch threads of the in-process run")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not timed)")

    watch = MachineWatch()
    config = InspectorConfig()
    root = ensure_recording(args.train, 2400)
    config.classes = {task: list(names) for task, names in recording_classes(root).items() if task in config.classes}
    data = load_recording(root, config, limit=args.parts, progress=False).data
    recipe = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, full_frame_epochs=0, recalibrate_bn=0,
                         progress=False, threads=args.threads)

    def model() -> FactoryInspector:
        torch.manual_seed(0)
        return FactoryInspector(config)

    runs: dict[str, tuple[dict, float]] = {}
    started = time.perf_counter()
    runs["in-process"] = (fit(model(), data, None, recipe), time.perf_counter() - started)
    print(f"in-process: {runs['in-process'][1]:.0f} s", flush=True)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        for name, workers, threads in (("ray 1x1", 1, 1), ("ray 1 worker", 1, None), ("ray 2 workers", 2, None)):
            with tempfile.TemporaryDirectory(prefix="distributed-train-") as tmp:
                started = time.perf_counter()
                state = fit_data_parallel(fit, model(), data, None, recipe, RayTrain(workers, threads=threads),
                                          Path(tmp) / "checkpoints")
                runs[name] = (state["history"], time.perf_counter() - started)
            print(f"{name}: {runs[name][1]:.0f} s", flush=True)
    finally:
        ray.shutdown()

    print(f"\n{len(data)} parts of {root}, {config.image_size[1]}x{config.image_size[0]} frames cut to "
          f"{recipe.crop[1]}x{recipe.crop[0]} crops, global batch {args.batch_size}, {args.epochs} epochs "
          f"({args.epochs - 1} timed), {cores} cores")
    print(f"{'run':<14} {'workers x threads':>17} {'parts/s':>8} {'epoch s':>8} {'start-up s':>10} "
          f"{'loss gap':>9}")
    reference = runs["in-process"][0]["train_loss"]
    shape = {"in-process": f"- x {args.threads}", "ray 1x1": "1 x 1", "ray 1 worker": f"1 x {cores}",
             "ray 2 workers": f"2 x {max(1, cores // 2)}"}
    throughput = {}
    for name, (history, wall) in runs.items():
        seconds = history["seconds"]
        timed = seconds[-1] - seconds[0]
        throughput[name] = len(data) * (args.epochs - 1) / timed
        gap = max(abs(a - b) / abs(b) for a, b in zip(history["train_loss"], reference, strict=True))
        print(f"{name:<14} {shape[name]:>17} {throughput[name]:>8.1f} {timed / (args.epochs - 1):>8.1f} "
              f"{wall - seconds[-1]:>10.1f} {gap:>9.1e}")
    print("loss gap: the largest relative difference of the per-epoch training loss from the in-process run's "
          "(round-off with one worker; with two, each draws its own dropout masks)")
    watch.verdict()
    print(f"ratio: {throughput['ray 2 workers'] / throughput['ray 1 worker']:.2f}")


if __name__ == "__main__":
    main()
