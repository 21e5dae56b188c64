"""The confidence cascade vs the big model alone, on a whole held-out recording.

The cascade (``fusionline cascade factory``) lets the small model decide the parts whose calibrated confidence
clears a threshold chosen on a separate validation recording (seed 3), and sends the rest to the big model in the
same replica, on the same decoded inputs. The shipped cascade pairs ``factory-v5-small`` (``factory-v5``, the
line's model before v6, fine-tuned on frames of 96x128 instead of 192x256: about a sixth of its CPU a part) with
``factory-v5`` (big).
Every part of the held-out recording (seed 2) is decoded once; then, interleaved for ``--rounds`` rounds, the big
model alone, the cascade's small model alone and the cascade predict all of it (``FactoryHandler.predict``, one
thread, batches of 16, as a replica does). Reports accuracy, the share the small model decided, and compute (wall
time of the predict calls). A second table scores the same three on ``--other-renderer`` (the shaded renderer's
held-out parts): what the cascade costs on the parts the line finds hardest. The last line is ``ratio: X`` =
always-big time / cascade time on the held-out recording.

    python benchmarks/cascade.py [--runtime onnx|int8]

``--runtime`` runs all three paths on ONNX Runtime (fp32 or INT8; each network's file exported into its folder
first where missing, INT8 calibrated on 256 parts of the training recording), with the threshold the cascade was
built with on eager outputs.

The cascade folder is built on the validation recording when it is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HOLDOUT, REPO, MachineWatch, ensure_recording, ensure_runtime_files  # noqa: E402
from connectors.recording import Replayer, read_labels  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.predictor import Prediction, batch_inputs  # noqa: E402
from model.runtimes import RUNTIMES  # noqa: E402
from pipelines.lines.factory.cascade import build_cascade  # noqa: E402
from pipelines.lines.factory.handler import FactoryHandler, decode, network_dirs  # noqa: E402

BIG = REPO / "tests/data/models/factory-v5"  # the shipped cascade's big model (the line ships factory-v6 now)
SMALL = REPO / "tests/data/models/factory-v5-small"
CASCADE = REPO / "tests/data/models/factory-v5-cascade"
VALIDATION = Path("data/factory-val")
OTHER_RENDERER = Path("data/shaded-holdout")  # seed 12, as benchmarks/cross_renderer.py writes it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recording", type=Path, default=HOLDOUT, help="held-out recording (synthesised if missing)")
    p.add_argument("--big", type=Path, default=BIG, help="big model folder")
    p.add_argument("--small", type=Path, default=SMALL, help="small model folder, when the cascade is built here")
    p.add_argument("--cascade", type=Path, default=CASCADE, help="cascade folder (built here if missing)")
    p.add_argument("--other-renderer", type=Path, default=OTHER_RENDERER,
                   help="held-out parts of the other renderer, scored once without timing (synthesised if missing; "
                        "'none' skips it)")
    p.add_argument("--validation", type=Path, default=VALIDATION,
                   help="recording the cascade's threshold is chosen on when it is built (seed 3 if synthesised)")
    p.add_argument("--batch-size", type=int, default=16, help="parts per predict call")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    p.add_argument("--runtime", choices=RUNTIMES, default="eager",
                   help="runtime of every path (onnx, int8: each network's ONNX file, exported where missing)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, 600)
    other = None if str(args.other_renderer) == "none" else ensure_recording(args.other_renderer, 600, seed=12,
                                                                                   renderer="shaded")
    if not (args.cascade / "config.json").is_file():
        print(f"building the cascade on {args.validation} (never trained on)")
        build_cascade(args.small, args.big, ensure_recording(args.validation, 600, seed=3), args.cascade)
    torch.set_num_threads(1)
    for model_dir in (args.big, args.cascade):
        ensure_runtime_files(model_dir, args.runtime)
    handlers = {"always big": FactoryHandler.from_pretrained(args.big, args.runtime),
                "small alone": FactoryHandler.from_pretrained(network_dirs(args.cascade)[0], args.runtime),
                "cascade": FactoryHandler.from_pretrained(args.cascade, args.runtime)}
    items, batches = decoded(recording, args.batch_size)
    answers = {name: [a for b in batches for a in h.predict(b)] for name, h in handlers.items()}  # warm + answers
    seconds: dict[str, list[float]] = {name: [] for name in handlers}
    for _ in range(args.rounds):
        for name, handler in handlers.items():
            start = time.perf_counter()
            for b in batches:
                handler.predict(b)
            seconds[name].append(time.perf_counter() - start)
    wall = {name: statistics.median(s) for name, s in seconds.items()}

    cascade = handlers["cascade"]
    print(f"\n{len(items)} held-out parts of {recording}; cascade {args.cascade} (threshold {cascade.threshold:.4f}, "
          f"temperature {cascade.temperature:.2f}); {args.runtime}, batch {args.batch_size}, 1 thread, median of "
          f"{args.rounds} rounds")
    scores = score_table(answers, items, read_labels(recording), wall)
    drop = scores["always big"].defect - scores["cascade"].defect
    decided, compute = scores["cascade"].decided, wall["cascade"] / wall["always big"]
    print(f"targets: small decides >= 60 % ({decided:.1%}: {'met' if decided >= 0.6 else 'NOT met'}); accuracy within "
          f"0.5 point of always-big ({100 * drop:+.2f} points: {'met' if drop <= 0.005 else 'NOT met'}); compute <= 50 "
          f"% of always-big ({compute:.0%}: {'met' if compute <= 0.5 else 'NOT met'})")
    if other is not None:
        other_items, other_batches = decoded(other, args.batch_size)
        print(f"\n{len(other_items)} held-out parts of {other}, drawn by the other renderer; one pass, not timed")
        other_answers = {name: [a for b in other_batches for a in h.predict(b)] for name, h in handlers.items()}
        score_table(other_answers, other_items, read_labels(other))
    watch.verdict()
    print(f"ratio: {wall['always big'] / wall['cascade']:.2f}")


@dataclass
class Score:
    """One path's accuracies on a recording."""

    defect: float
    machine: float
    decided: float  # share the small model decided


def decoded(recording: Path, batch_size: int) -> tuple[list[tuple[str, dict]], list[dict]]:
    """The recording's decodable parts ``(item id, inputs)`` and their batches, as a replica decodes them."""
    items = [(s.item_id, d) for s in Replayer(recording) if isinstance(s, Sample)
             for d in [decode(s)] if isinstance(d, dict)]
    return items, [batch_inputs([d for _, d in items[i:i + batch_size]]) for i in range(0, len(items), batch_size)]


def score_table(answers: dict[str, list[Prediction]], items: list[tuple[str, dict]], labels: dict[str, dict],
                wall: dict[str, float] | None = None) -> dict[str, Score]:
    """Print each path's defect and machine accuracy and the small model's share (and time, with ``wall``)."""
    timing = f" {'seconds':>8} {'parts/s':>8}" if wall else ""
    print(f"{'path':<12} {'defect acc':>11} {'machine acc':>12} {'small decides':>14}{timing}")
    scores = {}
    for name, said in answers.items():
        score = scores[name] = Score(
            defect=float(np.mean([a.label == labels[i]["defect"] for a, (i, _) in zip(said, items, strict=True)])),
            machine=float(np.mean([a.extra["machine"] == labels[i]["machine"]
                                   for a, (i, _) in zip(said, items, strict=True)])),
            decided=float(np.mean([a.extra.get("cascade", "small" if name == "small alone" else "big") == "small"
                                   for a in said])))
        timing = f" {wall[name]:>8.2f} {len(items) / wall[name]:>8.1f}" if wall else ""
        print(f"{name:<12} {score.defect:>11.2%} {score.machine:>12.2%} {score.decided:>14.1%}{timing}")
    return scores


if __name__ == "__main__":
    main()
