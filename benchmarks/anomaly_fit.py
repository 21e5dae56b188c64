"""Fit to your line from good parts: a good-only anomaly model vs the shipped supervised inspector, one product.

A one-product line (``fusionline synth factory --product K``: the same design, material, pose, light and camera
in every part; nuisance, defects and sensor noise vary) that no model was trained on. ``model.anomaly`` fits a
patch-feature memory bank (PatchCore on the frozen ImageNet EfficientNet-Lite0) on ``--good`` good parts of one
recording of that product, with its threshold set on held-out good parts at ``--false-reject-rate``; both models
then score every part of a second recording of the product (another seed):

- ``anomaly fit``: the image score (largest nearest-neighbour patch distance); no defect label was used;
- ``shipped inspector``: ``1 - p(good)`` of the line's shipped supervised model (trained on our generators'
  varied parts, never on this product); it rejects when its defect class is not ``good``;
- ``fused (line rule)``: what ``fusionline run factory --anomaly`` does (``FactoryHandler``): a part is rejected
  when the inspector calls a defect or the anomaly model flags it; as a score, ``max(anomaly score / threshold,
  (1 - p(good)) / 0.5)``, each side over its own decision point.

Reported: good-vs-defect AUROC overall and per defect class, false rejects and defect recall of each rule,
fitting seconds (decode + features + coreset + threshold) and scoring ms per part. Last line ``ratio: X`` =
anomaly-fit AUROC / shipped-inspector AUROC on the same parts.

    python benchmarks/anomaly_fit.py --product 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MachineWatch, ensure_recording  # noqa: E402
from connectors.recording import Replayer, read_labels  # noqa: E402
from connectors.records import Quarantined, Sample  # noqa: E402
from model.anomaly import AnomalyConfig, fit_patch_memory  # noqa: E402
from model.predictor import Predictor, batch_inputs  # noqa: E402
from pipelines.lines import shipped_model  # noqa: E402
from pipelines.lines.factory.evaluate import auroc, fused_defect_score  # noqa: E402
from pipelines.lines.factory.fit import good_frames  # noqa: E402
from pipelines.lines.factory.handler import decode  # noqa: E402
from pipelines.lines.factory.synth import RENDERERS  # noqa: E402

DEFECTS = ("scratch", "dent", "crack", "contamination")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--product", type=int, default=3, help="the product K of both recordings")
    p.add_argument("--fit", type=Path, default=None,
                   help="recording whose good parts are fitted on (default: data/product<K>-fit, 500 parts, seed 31)")
    p.add_argument("--test", type=Path, default=None,
                   help="recording scored (default: data/product<K>-test, 400 parts, seed 32)")
    p.add_argument("--renderer", default="paint", choices=RENDERERS,
                   help="part renderer of the default recordings (other than paint: data/product<K>-<renderer>-fit "
                        "and -test; photo is the renderer no model trains on)")
    p.add_argument("--good", type=int, default=200, help="good parts fitted on (the first N of --fit)")
    p.add_argument("--coreset", type=int, default=AnomalyConfig.coreset, help="patches kept in the memory bank")
    p.add_argument("--image-size", type=int, nargs=2, default=AnomalyConfig.image_size, metavar=("H", "W"),
                   help="frame size the features are taken at (multiples of 16)")
    p.add_argument("--feature-levels", type=int, nargs="+", default=AnomalyConfig.feature_levels, metavar="L",
                   help="EfficientNet-Lite0 feature levels of the patches (0..3, strides 2..16; 2 3 is PatchCore's "
                        "choice of mid-level features)")
    p.add_argument("--false-reject-rate", type=float, default=0.01,
                   help="share of held-out good parts allowed above the threshold")
    p.add_argument("--model", type=Path, default=shipped_model("factory"),
                   help="supervised model compared against and fused with (default: the line's shipped model)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    watch = MachineWatch()
    stem = f"data/product{args.product}" + (f"-{args.renderer}" if args.renderer != "paint" else "")
    fit_root = ensure_recording(args.fit or Path(f"{stem}-fit"), 500, 31, args.product, args.renderer)
    test_root = ensure_recording(args.test or Path(f"{stem}-test"), 400, 32, args.product, args.renderer)

    started = time.perf_counter()
    good = good_frames(fit_root, args.good)
    config = AnomalyConfig(image_size=tuple(args.image_size), feature_levels=tuple(args.feature_levels),
                           coreset=args.coreset,
                           false_reject_rate=args.false_reject_rate)
    memory = fit_patch_memory(good, config)
    fit_s = time.perf_counter() - started

    test_labels = read_labels(test_root)
    samples = [s for s in Replayer(test_root) if isinstance(s, Sample) and s.frame is not None]
    decoded = [decode(s) for s in samples]
    kept = [(s.item_id, d) for s, d in zip(samples, decoded, strict=True) if not isinstance(d, Quarantined)]
    classes = np.array([test_labels[i]["defect"] for i, _ in kept])
    frames = [d["image"] for _, d in kept]
    started = time.perf_counter()
    scores = np.concatenate([memory.score_frames(frames[i:i + 16]).score.numpy() for i in range(0, len(frames), 16)])
    score_ms = 1000 * (time.perf_counter() - started) / len(frames)
    predictor = Predictor.from_pretrained(args.model)
    probs = np.concatenate([predictor.forward_batch(batch_inputs([d for _, d in kept[i:i + 32]])).probs["defect"]
                            for i in range(0, len(kept), 32)])
    defect = classes != "good"
    good_column = predictor.config.classes["defect"].index("good")
    supervised = 1.0 - probs[:, good_column]
    threshold = float(memory.threshold)
    fused = fused_defect_score(scores / threshold, probs[:, good_column])
    decisions = {"anomaly fit": scores > threshold, "shipped inspector": probs.argmax(1) != good_column}
    decisions["fused (line rule)"] = decisions["anomaly fit"] | decisions["shipped inspector"]

    def per_class(s: np.ndarray) -> str:
        return ", ".join(f"{c} {auroc(s[(classes == c) | ~defect], defect[(classes == c) | ~defect]):.3f}"
                         for c in DEFECTS)

    print(f"\nproduct {args.product}: fitted on {len(good)} good parts of {fit_root} at {config.image_size[0]}x"
          f"{config.image_size[1]} (feature levels {config.feature_levels}) in {fit_s:.0f} s; "
          f"scored {len(kept)} parts of {test_root} "
          f"({int((~defect).sum())} good) at {score_ms:.0f} ms per part; inspector {predictor.version}")
    print(f"{'model':<20} {'good-vs-defect AUROC':>21} {'false rejects':>14} {'defect recall':>14}  per defect class")
    for name, s in (("anomaly fit", scores), ("shipped inspector", supervised), ("fused (line rule)", fused)):
        flagged = decisions[name]
        print(f"{name:<20} {auroc(s, defect):>21.3f} {flagged[~defect].mean():>14.3f} {flagged[defect].mean():>14.3f}"
              f"  {per_class(s)}")
    print(f"anomaly threshold {threshold:.2f} (target {args.false_reject_rate:.0%} false rejects on held-out good "
          "parts); fused score: max(anomaly score / threshold, (1 - p(good)) / 0.5)")
    ours = auroc(scores, defect)
    watch.verdict()
    print(f"ratio: {ours / auroc(supervised, defect):.3f}")


if __name__ == "__main__":
    main()
