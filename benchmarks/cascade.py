"""The confidence cascade vs the big model alone, on a whole held-out recording.

The cascade (``fusionline cascade factory``) lets the small model decide the parts whose calibrated confidence
clears a threshold chosen on a separate validation recording (seed 3), and sends the rest to the big model in the
same replica, on the same decoded inputs. Every part of the held-out recording (seed 2) is decoded once; then,
interleaved for ``--rounds`` rounds, the big model alone, the small model alone and the cascade predict all of
it (``FactoryHandler.predict``, one thread, batches of 16, as a replica does). Reports accuracy, the share the
small model decided, and compute (wall time of the predict calls). The last line is ``ratio: X`` = always-big time
/ cascade time.

    python benchmarks/cascade.py

The shipped small model and cascade folder are used when present; otherwise the small model (the big model's
half-width configuration, ``model.lab.distill.student_config``) is trained with the line's own recipe on the
training recording (seed 1) and the cascade is built on the validation recording.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HOLDOUT, REPO, SERVING_MODEL, TRAIN, MachineWatch, ensure_recording  # noqa: E402
from connectors.recording import Replayer, read_labels  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.predictor import batch_inputs  # noqa: E402
from pipelines.lines.factory.cascade import build_cascade  # noqa: E402
from pipelines.lines.factory.handler import FactoryHandler, decode  # noqa: E402

SMALL = REPO / "tests/data/models/factory-v2-small"
CASCADE = REPO / "tests/data/models/factory-v2-cascade"
VALIDATION = Path("data/factory-val")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recording", type=Path, default=HOLDOUT, help="held-out recording (synthesised if missing)")
    p.add_argument("--big", type=Path, default=SERVING_MODEL, help="big model folder")
    p.add_argument("--small", type=Path, default=SMALL, help="small model folder (trained here if missing)")
    p.add_argument("--cascade", type=Path, default=CASCADE, help="cascade folder (built here if missing)")
    p.add_argument("--validation", type=Path, default=VALIDATION,
                   help="recording the cascade's threshold is chosen on when it is built (seed 3 if synthesised)")
    p.add_argument("--batch-size", type=int, default=16, help="parts per predict call")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, 600)
    if not (args.small / "config.json").is_file():
        train_small(args.big, args.small)
    if not (args.cascade / "config.json").is_file():
        print(f"building the cascade on {args.validation} (never trained on)")
        build_cascade(args.small, args.big, ensure_recording(args.validation, 600, seed=3), args.cascade)
    torch.set_num_threads(1)
    labels = read_labels(recording)
    items = [(s.item_id, d) for s in Replayer(recording) if isinstance(s, Sample)
             for d in [decode(s)] if isinstance(d, dict)]
    batches = [batch_inputs([d for _, d in items[i:i + args.batch_size]])
               for i in range(0, len(items), args.batch_size)]
    handlers = {"always big": FactoryHandler.from_pretrained(args.big),
                "small alone": FactoryHandler.from_pretrained(args.small),
                "cascade": FactoryHandler.from_pretrained(args.cascade)}
    answers = {name: [a for b in batches for a in h.predict(b)] for name, h in handlers.items()}  # warm + answers
    seconds: dict[str, list[float]] = {name: [] for name in handlers}
    for _ in range(args.rounds):
        for name, handler in handlers.items():
            start = time.perf_counter()
            for b in batches:
                handler.predict(b)
            seconds[name].append(time.perf_counter() - start)

    truth = [labels[i]["defect"] for i, _ in items]
    cascade = handlers["cascade"]
    print(f"\n{len(items)} held-out parts of {recording}; cascade {args.cascade} (threshold {cascade.threshold:.4f}, "
          f"temperature {cascade.temperature:.2f}); batch {args.batch_size}, 1 thread, median of {args.rounds} rounds")
    print(f"{'path':<12} {'defect acc':>11} {'machine acc':>12} {'small decides':>14} {'seconds':>8} {'parts/s':>8}")
    accuracy, wall = {}, {}
    for name in handlers:
        accuracy[name] = float(np.mean([a.label == t for a, t in zip(answers[name], truth, strict=True)]))
        machine = np.mean([a.extra["machine"] == labels[i]["machine"] for a, (i, _) in zip(answers[name], items, strict=True)])
        decided = np.mean([a.extra.get("cascade") == "small" for a in answers[name]]) if name == "cascade" else \
            (1.0 if name == "small alone" else 0.0)
        wall[name] = statistics.median(seconds[name])
        print(f"{name:<12} {accuracy[name]:>11.2%} {machine:>12.2%} {decided:>14.1%} {wall[name]:>8.2f} "
              f"{len(items) / wall[name]:>8.1f}")
    decided = float(np.mean([a.extra["cascade"] == "small" for a in answers["cascade"]]))
    drop = accuracy["always big"] - accuracy["cascade"]
    compute = wall["cascade"] / wall["always big"]
    print(f"targets: small decides >= 60 % ({decided:.1%}: {'met' if decided >= 0.6 else 'NOT met'}); accuracy within "
          f"0.5 point of always-big ({100 * drop:+.2f} points: {'met' if drop <= 0.005 else 'NOT met'}); compute <= 50 "
          f"% of always-big ({compute:.0%}: {'met' if compute <= 0.5 else 'NOT met'})")
    watch.verdict()
    print(f"ratio: {wall['always big'] / wall['cascade']:.2f}")


def train_small(big: Path, out: Path) -> None:
    """The big model's half-width configuration, trained with the line's recipe on the training recording."""
    from model.config import InspectorConfig
    from model.lab.distill import student_config
    from pipelines.lines.factory.train import train_factory

    print(f"training the small model into {out} (the recipe's 24 epochs on {TRAIN}; about 15 minutes on 2 cores)")
    train_factory(ensure_recording(TRAIN, 4800), out, seed=0,
                  config=student_config(InspectorConfig.load(big), width=0.5))


if __name__ == "__main__":
    main()
