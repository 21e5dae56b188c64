"""Dynamic depth on the factory machine-sound task: full-depth encoder vs per-sample early exit (CPU, fp32).

Task: machine sound (``normal`` / ``bearing_click`` / ``imbalance_hum``, about 70 % normal) from the log-mel of
each part's audio. The :class:`model.lab.depth.GatedEncoder` (stem + 12 residual blocks, an exit with a halting gate
after each block) is trained on ``--train`` with deep supervision and a compute penalty (:func:`model.lab.depth.
fit_depth`), or loaded from ``--cache-dir`` when a checkpoint for the same data and settings exists. A
``--val-fraction`` of the training recording is held out from all training (backbone, exits and gates); the
default threshold is chosen on it (never on the training rows, nor on ``--test``): the lowest average depth whose
validation accuracy stays within ``--tolerance`` of full depth's.

On the held-out ``--test`` recording, batched as in serving (``--batch-size``), both run on the same
batch-norm-folded weights:

- ``full depth``: stem, all blocks, the last exit's classifier (no gates at all);
- ``gated @ t``: the same encoder with early exit at threshold ``t``; samples that exit leave the batch.

Reported: encoder ms/batch and items/s (wall clock; log-mel computed beforehand, not timed), the process CPU
time per batch (robust to other processes' load), accuracy and macro-F1, average blocks executed, skip rate
(fraction of block evaluations not executed). Times are medians over ``--repeats`` rounds after a warm-up
round; within a round every batch goes through every variant in turn, so background load falls on all alike. A speed/accuracy curve over ``--thresholds`` is printed and saved as PNG (``--plot``).
The last line is ``ratio: X`` = full-depth time / gated time at the chosen threshold.

Data: the recordings ``make demo`` writes; missing ones are synthesised first (2,400 training parts, seed 1;
600 held-out parts, seed 2)::

    python benchmarks/skip.py --train data/factory-train --test data/factory-holdout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HOLDOUT, TRAIN, MachineWatch, ensure_recording  # noqa: E402
from model.config import InspectorConfig  # noqa: E402
from model.lab.depth import DepthConfig, DepthTrainConfig, GatedEncoder, fit_depth  # noqa: E402

TASK = "machine"


def load_mels(root: Path, config: InspectorConfig, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """A labelled recording (its first ``limit`` items) -> log-mel ``(N, 1, n_mels, frames)`` and machine labels
    ``(N,)`` (labelled rows)."""
    from model.preprocess import LogMel
    from pipelines.lines.factory.datasets import load_recording

    data = load_recording(root, config, progress=False).data
    if limit is not None:
        data = data.subset(torch.arange(min(limit, len(data))))
    labels = data.labels[TASK]
    keep = (labels >= 0).nonzero().squeeze(1)
    mel = LogMel(config).eval()
    with torch.no_grad():
        mels = torch.cat([mel(data.waveforms[keep[i:i + 256]]) for i in range(0, len(keep), 256)])
    return mels, labels[keep]


def recording_key(root: Path) -> str:
    """Identity of a recording's contents (manifest, events size and mtime), for the checkpoint cache."""
    h = hashlib.sha256((root / "manifest.json").read_bytes())
    events = root / "events.jsonl"
    if events.is_file():
        st = events.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def macro_f1(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    """Mean F1 over the classes present in ``y``."""
    f1s = []
    for c in range(n):
        tp = int(((pred == c) & (y == c)).sum())
        support, predicted = int((y == c).sum()), int((pred == c).sum())
        if support:
            f1s.append(2 * tp / (support + predicted) if support + predicted else 0.0)
    return float(np.mean(f1s))


def scores(model: GatedEncoder, mels: Tensor, labels: Tensor, threshold: float | None, batch: int) -> dict:
    """Accuracy, macro-F1, average blocks and skip rate at ``threshold`` (None: full depth), batched."""
    preds, blocks = [], []
    with torch.no_grad():
        for i in range(0, len(mels), batch):
            x = mels[i:i + batch]
            if threshold is None:
                preds.append(model.forward_full(x).argmax(1))
                blocks.append(torch.full((len(x),), model.config.num_blocks))
            else:
                out = model(x, threshold)
                preds.append(out.logits.argmax(1))
                blocks.append(out.exit_block)
    pred, exit_block = torch.cat(preds).numpy(), torch.cat(blocks).float()
    y = labels.numpy()
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred, model.config.n_classes),
        "blocks": float(exit_block.mean()),
        "skip_rate": 1.0 - float(exit_block.mean()) / model.config.num_blocks,
        "blocks_by_class": [float(exit_block[labels == c].mean()) if (labels == c).any() else float("nan")
                            for c in range(model.config.n_classes)],
    }


def choose_threshold(model: GatedEncoder, mels: Tensor, labels: Tensor, candidates: list[float], tolerance: float,
                     batch: int) -> float:
    """The candidate with the fewest average blocks whose accuracy on ``mels`` is within ``tolerance`` of full
    depth's (ties: the higher, safer threshold)."""
    full = scores(model, mels, labels, None, batch)["accuracy"]
    ok = []
    for t in candidates:
        s = scores(model, mels, labels, t, batch)
        if s["accuracy"] >= full - tolerance:
            ok.append((s["blocks"], -t))
    return -min(ok)[1] if ok else max(candidates)


def interleaved_times(variants: dict, mels: Tensor, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of one pass of each variant over ``mels`` in batches of ``batch``.

    ``repeats`` rounds after a warm-up round; within a round, every batch runs through every variant in turn
    (the order rotating from batch to batch), so load from other processes falls on all variants alike. A
    variant's pass time in a round is the sum of its batch times; the median over rounds is reported.
    """
    batches = [mels[i:i + batch] for i in range(0, len(mels), batch)]
    names = list(variants)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            w = dict.fromkeys(names, 0.0)
            c = dict.fromkeys(names, 0.0)
            for j, x in enumerate(batches):
                shift = (round_ + j) % len(names)
                for name in names[shift:] + names[:shift]:
                    c0, w0 = time.process_time(), time.perf_counter()
                    variants[name](x)
                    w[name] += time.perf_counter() - w0
                    c[name] += time.process_time() - c0
            if round_:  # round 0 warms up
                for name in names:
                    wall[name].append(w[name])
                    cpu[name].append(c[name])
    return {n: {"wall": statistics.median(wall[n]), "cpu": statistics.median(cpu[n])} for n in names}


def plot_curve(rows: list[dict], full: dict, chosen: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    speed = [r["speedup"] for r in rows]
    for ax, key, label in ((ax1, "accuracy", "accuracy"), (ax2, "macro_f1", "macro-F1")):
        ax.plot(speed, [100 * r[key] for r in rows], "o-", label="gated (threshold)")
        for r in rows:
            ax.annotate(f"{r['threshold']:g}", (r["speedup"], 100 * r[key]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color="red" if r["threshold"] == chosen else "black")
        ax.axhline(100 * full[key], color="grey", ls="--", label="full depth")
        ax.set(xlabel="encoder speed-up vs full depth (x)", ylabel=f"{label} (%)", title=f"held-out {label}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=TRAIN,
                   help="labelled training recording (created by `make demo`; synthesised here if missing)")
    p.add_argument("--test", type=Path, default=HOLDOUT,
                   help="labelled held-out recording, never trained on (synthesised here if missing)")
    p.add_argument("--train-parts", type=int, default=2400,
                   help="training parts used: the first N of --train (a recording of seed 1 extends a shorter one)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of the training recording held out from all training to choose the threshold on")
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/fusionline/bench").expanduser(),
                   help="where trained checkpoints are cached (keyed by training data and settings)")
    p.add_argument("--retrain", action="store_true", help="train even if a cached checkpoint exists")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of backbone + exits")
    p.add_argument("--gate-epochs", type=int, default=20, help="gate-only epochs on the gate split")
    p.add_argument("--gate-fraction", type=float, default=0.2,
                   help="share of the training rows (after the validation split) held out from the backbone to train "
                        "the gates on")
    p.add_argument("--compute-weight", type=float, default=0.2,
                   help="lambda: training cost of running the whole depth, in units of cross-entropy")
    p.add_argument("--blocks", type=int, default=12, help="residual blocks L of the encoder")
    p.add_argument("--exit-every", type=int, default=1, help="an exit (classifier + gate) after every N blocks")
    p.add_argument("--channels", type=int, default=24, help="width of the residual blocks")
    p.add_argument("--batch-size", type=int, default=32, help="serving batch size for timing and scoring")
    p.add_argument("--threshold", type=float, default=None,
                   help="halting threshold of the headline row (default: chosen on the validation split)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="accuracy drop allowed on the validation split when choosing the threshold (0.005 = 0.5 point)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.99, 0.999],
                   help="thresholds of the speed/accuracy curve (also the candidates for the default threshold)")
    p.add_argument("--repeats", type=int, default=7,
                   help="timed rounds over the test set (every batch through every variant in turn); medians")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1, as a serving replica; 2 spin-waits badly on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of the speed/accuracy curve (default: <cache-dir>/skip-curve.png)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    watch = MachineWatch()
    ensure_recording(args.train, args.train_parts)
    ensure_recording(args.test, 600)
    config = InspectorConfig()
    x_test, y_test = load_mels(args.test, config)
    classes = list(config.classes[TASK])
    dcfg = DepthConfig(n_mels=config.n_mels, channels=args.channels, num_blocks=args.blocks,
                       exit_every=args.exit_every, n_classes=len(classes), classes=classes,
                       compute_weight=args.compute_weight)
    tcfg = DepthTrainConfig(epochs=args.epochs, gate_epochs=args.gate_epochs, gate_fraction=args.gate_fraction,
                            seed=args.seed, threads=args.threads)
    key = hashlib.sha256(json.dumps({"train": recording_key(args.train.resolve()) if args.train.exists() else "",
                                     "depth": asdict(dcfg), "fit": asdict(tcfg),
                                     "val_fraction": args.val_fraction, "train_parts": args.train_parts, "v": 2},
                                    sort_keys=True).encode()).hexdigest()[:12]
    ckpt = args.cache_dir / f"skip-{key}"
    if (ckpt / "config.json").is_file() and not args.retrain:
        model = GatedEncoder.from_pretrained(ckpt)
        meta = json.loads((ckpt / "config.json").read_text())
        print(f"loaded cached checkpoint {ckpt} (trained in {meta['train_seconds']:.0f} s)")
    else:
        x_all, y_all = load_mels(args.train, config, args.train_parts)
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(args.seed))
        n_val = int(round(args.val_fraction * len(x_all)))
        val, fit = order[:n_val], order[n_val:]
        print(f"training the gated encoder on {len(fit)} clips of {args.train} ({n_val} more held out for "
              f"validation) -> {ckpt}")
        torch.manual_seed(args.seed)
        model = GatedEncoder(dcfg)
        history = fit_depth(model, x_all[fit], y_all[fit], tcfg)
        chosen = choose_threshold(model, x_all[val], y_all[val], args.thresholds, args.tolerance, args.batch_size)
        model.save_pretrained(ckpt, threshold=chosen, train_seconds=history["seconds"], validation_clips=n_val,
                              history={k: v for k, v in history.items() if isinstance(v, list)})
        meta = json.loads((ckpt / "config.json").read_text())
        print(f"trained in {history['seconds']:.0f} s; threshold {chosen:g} chosen on the {n_val}-clip "
              f"validation split (trained on by nothing)")
    threshold = args.threshold if args.threshold is not None else float(meta["threshold"])
    thresholds = sorted(set(args.thresholds) | {threshold})

    fused = model.fused_for_inference()
    full = scores(fused, x_test, y_test, None, args.batch_size)
    rows = [{"threshold": t, **scores(fused, x_test, y_test, t, args.batch_size)} for t in thresholds]
    variants = {"full": fused.forward_full}
    for t in thresholds:
        variants[t] = lambda x, t=t: fused(x, t)
    times = interleaved_times(variants, x_test, args.batch_size, args.repeats)
    seconds = {name: v["wall"] for name, v in times.items()}
    n_batches = -(-len(x_test) // args.batch_size)
    for r in rows:
        r["seconds"] = seconds[r["threshold"]]
        r["speedup"] = seconds["full"] / r["seconds"]

    counts = torch.bincount(y_test, minlength=len(classes)).tolist()
    print(f"\nDynamic depth, machine sound ({', '.join(f'{c} {n}' for c, n in zip(classes, counts))}), held-out "
          f"{args.test}; GatedEncoder L={dcfg.num_blocks}, C={dcfg.channels}, exit every {dcfg.exit_every}; "
          f"CPU fp32 (batch norm folded), {args.threads} threads, batch {args.batch_size}; median of "
          f"{args.repeats}")
    header = (f"{'variant':<18} {'ms/batch':>9} {'items/s':>9} {'speed-up':>9} {'CPU ms/b':>9} {'CPU x':>6} "
              f"{'accuracy':>9} {'macro-F1':>9} "
              f"{'blocks':>7} {'skip':>6}  blocks per class ({' / '.join(classes)})")
    print(header)

    def line(name: str, key, r: dict) -> str:
        per_class = " / ".join(f"{b:.1f}" for b in r["blocks_by_class"])
        s, c = times[key]["wall"], times[key]["cpu"]
        return (f"{name:<18} {s / n_batches * 1e3:>9.1f} {len(x_test) / s:>9.0f} {seconds['full'] / s:>8.2f}x "
                f"{c / n_batches * 1e3:>9.1f} {times['full']['cpu'] / c:>5.2f}x "
                f"{100 * r['accuracy']:>8.2f}% {r['macro_f1']:>9.4f} {r['blocks']:>7.2f} {100 * r['skip_rate']:>5.1f}%"
                f"  {per_class}")

    print(line("full depth", "full", full))
    for r in rows:
        mark = " *" if r["threshold"] == threshold else ""
        print(line(f"gated @ {r['threshold']:g}{mark}", r["threshold"], r))
    head = next(r for r in rows if r["threshold"] == threshold)
    plot = plot_curve(rows, full, threshold, args.plot or args.cache_dir / "skip-curve.png")
    print(f"\n* chosen threshold {threshold:g}: accuracy {100 * full['accuracy']:.2f}% -> {100 * head['accuracy']:.2f}% "
          f"({100 * (head['accuracy'] - full['accuracy']):+.2f} points), macro-F1 {full['macro_f1']:.4f} -> "
          f"{head['macro_f1']:.4f} ({100 * (head['macro_f1'] - full['macro_f1']):+.2f} points), "
          f"{head['blocks']:.2f} of {dcfg.num_blocks} blocks, skip rate {100 * head['skip_rate']:.1f}%")
    print(f"curve: {plot}")
    watch.verdict()
    print(f"ratio: {head['speedup']:.2f}")


if __name__ == "__main__":
    main()
