"""Adaptive vs fixed task weighting: training steps until the defect head reaches a target accuracy.

The factory model's loss has two groups (``model.train.inspector_loss``): the **main** losses (the router's task
heads) and the **auxiliary** ones (deep supervision of each encoder and the dense CAM of the defect map).
``model.train.fit`` combines them as ``2 * ((1 - λ_t) * aux + λ_t * main)``; this script trains the same model
from scratch, on the same items and seeds, under each weighting:

- ``fixed 0.5``: the recipe (the plain sum of both groups);
- ``fixed 0.9``: mostly the main losses;
- ``sigmoid``: ``λ_t = 1 / (1 + exp(-k (t - t0)))`` with hand-set ``k``, ``t0`` (auxiliary first, main later);
- ``meta``: the same sigmoid, ``k`` and ``t0`` meta-learned by first-order hypergradient steps on a split held
  out of the training items (``model.train.MetaWeighting``; that split is not trained on).

Each run trains ``--epochs`` epochs of image-only defect-centred crops (the recipe's crop stage, without the
audio branch, to keep a run near three minutes) on ``--items`` items of ``--train`` and scores defect accuracy
after every epoch on fixed crops of ``--val-items`` parts of the held-out ``--test`` recording (cut once, with
the recipe's crop rule and labels: what this stage of training optimises; whole frames would also measure the
batch-norm statistics' shift from crops to frames, which the recipe's last full-frame epochs fix).

Reported per weighting and seed: steps (and seconds) until that accuracy first reaches ``--target``, the best
and final accuracy, and the λ_t the schedule ended with; then, per weighting, the mean steps until a run first
reaches the **recipe's own final accuracy** (the lowest final accuracy of the ``fixed 0.5`` seeds: every recipe
run gets there by the end of the budget), which is defined whatever ``--target`` turns out to be. The last line
is ``ratio: X`` = those steps of ``fixed 0.5`` / those of ``meta`` (0 when ``meta`` never gets there). A PNG of
all curves: ``--plot``.

    python benchmarks/task_weighting.py   # recordings synthesised if missing
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import add_train_test_flags, start_train_test_run  # noqa: E402
from model.config import InspectorConfig  # noqa: E402
from model.factory_model import FactoryInspector  # noqa: E402
from model.train import (  # noqa: E402
    TensorData, TrainConfig, crop_labels, fit, has_box, nominal_index, random_crops,
)

WEIGHTINGS: dict[str, dict[str, object]] = {
    "fixed 0.5": {"task_weighting": "fixed", "main_share": 0.5},
    "fixed 0.9": {"task_weighting": "fixed", "main_share": 0.9},
    "sigmoid": {"task_weighting": "sigmoid"},
    "meta": {"task_weighting": "meta"},
}


def steps_to_target(history: dict, target: float) -> tuple[int | None, float | None]:
    """The step count and seconds at the end of the first epoch whose validation defect accuracy >= target."""
    for acc, steps, seconds in zip(history["val_acc"]["defect"], history["steps"], history["seconds"], strict=True):
        if acc >= target:
            return steps, seconds
    return None, None


def held_out_crops(data: TensorData, config: InspectorConfig, seed: int = 1234) -> TensorData:
    """One crop per item at the recipe's crop size and focus, labelled by the recipe's rule (``model.train``)."""
    cfg = TrainConfig()
    nominal = nominal_index(config)
    crops, boxes, inside = random_crops(data.images, data.boxes, cfg.crop, cfg.crop_focus,
                                        torch.Generator().manual_seed(seed))
    labels = dict(data.labels, defect=crop_labels(data.labels["defect"], inside, has_box(data.boxes), nominal))
    return TensorData(crops.contiguous(), data.waveforms, labels, boxes, data.present, data.texts)


def plot_curves(curves: list[tuple[str, int, list[int], list[float]]], target: float, path: Path) -> None:
    """Held-out defect accuracy against training steps, a line per run (colour: weighting, style: seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(c[0] for c in curves))}
    for name, seed, steps, acc in curves:
        ax.plot(steps, acc, color=colours[name], linestyle="-" if seed == 0 else "--",
                label=name if seed == 0 else None)
    ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training steps")
    ax.set_ylabel("held-out defect accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_train_test_flags(ap)
    ap.add_argument("--items", type=int, default=960, help="training items used")
    ap.add_argument("--val-items", type=int, default=600, help="held-out items cropped and scored after every epoch")
    ap.add_argument("--epochs", type=int, default=12, help="epochs per run")
    ap.add_argument("--target", type=float, default=0.7, help="defect accuracy to reach on the held-out items")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per weighting")
    ap.add_argument("--steepness", type=float, default=10.0, help="k of the sigmoid (start value for meta)")
    ap.add_argument("--midpoint", type=float, default=0.5, help="t0 of the sigmoid (start value for meta)")
    ap.add_argument("--weightings", nargs="+", default=list(WEIGHTINGS), choices=list(WEIGHTINGS),
                    help="which weightings to run")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--plot", type=lambda s: Path(s) if s else None, default=Path("runs/task_weighting.png"),
                    help="PNG of held-out accuracy against training steps, one line per run ('' for none)")
    args = ap.parse_args(argv)

    from pipelines.lines.factory.datasets import load_recording

    config = InspectorConfig()
    watch = start_train_test_run(args)
    train = load_recording(args.train, config, progress=False).data
    test = load_recording(args.test, config, progress=False).data
    train = train.subset(torch.arange(min(args.items, len(train))))
    test = held_out_crops(test.subset(torch.arange(min(args.val_items, len(test)))), config)
    print(f"train {len(train)} items of {args.train}, validate on {len(test)} crops of {args.test}; "
          f"{args.epochs} epochs of image-only crops; target defect accuracy {args.target:.0%}", flush=True)

    rows, curves = [], []
    for name in args.weightings:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = FactoryInspector(InspectorConfig())
            cfg = TrainConfig(epochs=args.epochs, seed=seed, crop_image_only=1.0, full_frame_epochs=0,
                              recalibrate_bn=0, progress=False, threads=args.threads,
                              weight_steepness=args.steepness, weight_midpoint=args.midpoint, **WEIGHTINGS[name])
            started = time.perf_counter()
            history = fit(model, train, test, cfg)
            steps, seconds = steps_to_target(history, args.target)
            acc = history["val_acc"]["defect"]
            trace = history.get("meta_trace", [])
            rows.append({"weighting": name, "seed": seed, "steps": steps, "seconds": seconds,
                         "total_steps": history["steps"][-1], "best": max(acc), "final": acc[-1],
                         "share_end": history["main_share"][-1],
                         "k": trace[-1]["steepness"] if trace else None, "t0": trace[-1]["midpoint"] if trace else None,
                         "wall": time.perf_counter() - started})
            curves.append((name, seed, history["steps"], acc))
            r = rows[-1]
            print(f"  {name} seed {seed}: steps to target {r['steps']}, best {r['best']:.3f}, final {r['final']:.3f}, "
                  f"λ end {r['share_end']:.2f}, {r['wall']:.0f} s; accuracy per epoch "
                  + " ".join(f"{a:.2f}" for a in acc), flush=True)

    print(f"\n| weighting | seed | steps to {args.target:.0%} | seconds to target | best acc | final acc | "
          "λ at end | k, t0 at end |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        kt = f"{r['k']:.2f}, {r['t0']:.2f}" if r["k"] is not None else "-"
        steps = r["steps"] if r["steps"] is not None else f"> {r['total_steps']}"
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        print(f"| {r['weighting']} | {r['seed']} | {steps} | {seconds} | {r['best']:.3f} | {r['final']:.3f} | "
              f"{r['share_end']:.2f} | {kt} |")

    names = list(dict.fromkeys(r["weighting"] for r in rows))
    reference = min(acc[-1] for name, _, _, acc in curves if name == "fixed 0.5") \
        if "fixed 0.5" in names else args.target

    def mean_steps(name: str, level: float) -> float:
        """Mean over seeds of the steps until accuracy >= level (inf where a run never gets there)."""
        found = []
        for run, _, steps, acc in curves:
            if run == name:
                found.append(next((s for s, a in zip(steps, acc, strict=True) if a >= level), math.inf))
        return statistics.mean(found)

    print(f"\nmean steps (inf: a run never got there) to reach the target {args.target:.0%} | "
          f"the recipe's final accuracy {reference:.3f}:")
    for name in names:
        print(f"  {name:<10} {mean_steps(name, args.target):7.1f} | {mean_steps(name, reference):7.1f}")
    if args.plot:
        plot_curves(curves, args.target, args.plot)
        print(f"curves: {args.plot}")
    watch.verdict()
    ratio = float("nan")
    if {"fixed 0.5", "meta"} <= set(names):
        fixed, meta = mean_steps("fixed 0.5", reference), mean_steps("meta", reference)
        ratio = 0.0 if math.isinf(meta) else fixed / meta  # meta never there: no speed-up at all
    print(f"ratio: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
