"""Leave-one-renderer-out: how the factory model scores on parts drawn by a renderer it was never trained on.

The project has four independently written part renderers (``fusionline synth factory --renderer
paint|shaded|scene|photo``, ``docs/model.md``); no model trains on the fourth, ``photo``, so every model has a
renderer it never saw. Each model of the study is trained on one renderer's parts, or two or three
(``mixed`` is paint and shaded: ``factory-v3``, then ``factory-v4`` and ``factory-v5``, which continued it on more
parts; ``factory-v6`` continued v5 on all three, and the shipped ``factory-v7`` v6, with the audio encoder's per-band
normalisation; ``cnn-paint`` is ``factory-v2``), and scored on 600
held-out parts of each renderer (seeds never trained on): the renderer a model never saw is its
leave-one-renderer-out figure. Defect accuracy (5 classes), good-vs-defect AUROC
(``tasks.defect.per_class.good.auroc``), machine-sound accuracy, and the model's predict time per item
(``Predictor.forward_batch`` on 32 decoded held-out parts, after a warm-up, median of 5, this process's threads;
decoding excluded). With ``--train`` a model folder that is missing is trained first with the command printed (the
study is reproducible from a clean checkout, at the cost of the training time: about 8 minutes per model on 2 quiet
cores); without it (``make bench``) missing models are skipped. A recording that is missing is synthesised.

The last line is ``ratio: X`` = the shipped model's predict throughput (``factory-v7``, the pretrained encoder) /
the CNN's (``factory-v2``): what the pretrained backbone costs on this CPU; both ship, so every run prints it.

    python benchmarks/cross_renderer.py --train               # the whole study, training what is missing
    python benchmarks/cross_renderer.py --only cnn-paint lite-paint
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HOLDOUT, REPO, SERVING_MODEL, TRAIN, MachineWatch  # noqa: E402
from pipelines.lines import shipped_model  # noqa: E402


@dataclass(frozen=True)
class Recording:
    path: Path
    parts: int
    seed: int
    renderer: str


@dataclass(frozen=True)
class Study:
    """One model of the study: its folder, and how it is trained when missing."""

    name: str
    backbone: str
    trained_on: str
    folder: Path
    data: Recording | None  # None: a model the repository ships (its model card says how it was trained)
    epochs: int | None = None
    flags: tuple[str, ...] = ()  # further `fusionline train factory` flags: what the study varies


HELD_OUT = {
    "paint": Recording(HOLDOUT, 600, 2, "paint"),
    "shaded": Recording(Path("data/shaded-holdout"), 600, 12, "shaded"),
    "scene": Recording(Path("data/scene-holdout"), 600, 22, "scene"),
    "photo": Recording(Path("data/photo-holdout"), 600, 42, "photo"),  # no model of the study trains on it
}
TRAINING = {
    "paint": Recording(TRAIN, 2400, 1, "paint"),
    "shaded": Recording(Path("data/shaded-train"), 2400, 11, "shaded"),
    "scene": Recording(Path("data/scene-train"), 2400, 21, "scene"),
    # two renderers in equal shares, on as many parts as one renderer's
    "paint+scene": Recording(Path("data/paint+scene-train"), 2400, 31, "paint+scene"),
    "shaded+scene": Recording(Path("data/shaded+scene-train"), 2400, 32, "shaded+scene"),
    "paint+shaded+scene": Recording(Path("data/paint+shaded+scene-train"), 2400, 33, "paint+shaded+scene"),
}
STUDIES = [
    Study("cnn-paint", "cnn", "paint", SERVING_MODEL, None),
    Study("lite-paint", "efficientnet_lite0", "paint", Path("data/models/lite-paint"), TRAINING["paint"], 12),
    Study("cnn-shaded", "cnn", "shaded", Path("data/models/cnn-shaded"), TRAINING["shaded"], 24),
    Study("lite-shaded", "efficientnet_lite0", "shaded", Path("data/models/lite-shaded"), TRAINING["shaded"], 12),
    Study("lite-scene", "efficientnet_lite0", "scene", Path("data/models/lite-scene"), TRAINING["scene"], 12),
    Study("lite-paint+scene", "efficientnet_lite0", "paint+scene", Path("data/models/lite-paint+scene"),
          TRAINING["paint+scene"], 12),
    Study("lite-shaded+scene", "efficientnet_lite0", "shaded+scene", Path("data/models/lite-shaded+scene"),
          TRAINING["shaded+scene"], 12),
    # the same, with the audio encoder's per-band normalisation: machine sound on the synthesiser left out
    Study("lite-paint+scene-band", "efficientnet_lite0", "paint+scene", Path("data/models/lite-paint+scene-band"),
          TRAINING["paint+scene"], 12, ("--audio-norm", "band")),
    # how much of the pretrained trunk to fine-tune (the "frozen stem, tuned later stages"):
    # lite-paint+scene-band tunes the stride-8 and stride-16 stages (--frozen-stages 2); these keep the stride-8
    # stage, then the whole trunk, at their ImageNet weights
    Study("lite-paint+scene-f3", "efficientnet_lite0", "paint+scene", Path("data/models/lite-paint+scene-f3"),
          TRAINING["paint+scene"], 12, ("--audio-norm", "band", "--frozen-stages", "3")),
    Study("lite-paint+scene-f5", "efficientnet_lite0", "paint+scene", Path("data/models/lite-paint+scene-f5"),
          TRAINING["paint+scene"], 12, ("--audio-norm", "band", "--frozen-stages", "5")),
    # three renderers on the same budget: against the two-renderer models on the fourth renderer, left out by all
    Study("lite-all3", "efficientnet_lite0", "all three", Path("data/models/lite-all3"), TRAINING["paint+shaded+scene"],
          12, ("--audio-norm", "band")),
    Study("lite-mixed", "efficientnet_lite0", "mixed", REPO / "tests/data/models/factory-v3", None),
    # factory-v4: lite-mixed continued for 12 epochs on a second mixed recording; factory-v5 (shipped until v6) the
    # same again on a third (their model cards)
    Study("lite-mixed-cont", "efficientnet_lite0", "mixed", REPO / "tests/data/models/factory-v4", None),
    Study("lite-mixed-cont2", "efficientnet_lite0", "mixed", REPO / "tests/data/models/factory-v5", None),
    # factory-v6: lite-mixed-cont2 + 12 epochs on a recording of all three renderers; factory-v7, the shipped model:
    # v6 + 12 epochs on a second one, the audio encoder switched to per-band normalisation (--audio-norm band)
    Study("lite-all3-cont", "efficientnet_lite0", "all three", REPO / "tests/data/models/factory-v6", None),
    Study("lite-all3-band", "efficientnet_lite0", "all three", shipped_model("factory"), None),
    # ablations of lite-paint / lite-shaded: the frame size the encoder sees, style randomisation, synthetic defects
    Study("lite-shaded-288", "efficientnet_lite0", "shaded", Path("data/models/lite-shaded-288"),
          TRAINING["shaded"], 12, ("--image-size", "288", "384")),
    Study("lite-paint-style", "efficientnet_lite0", "paint", Path("data/models/lite-paint-style"),
          TRAINING["paint"], 12, ("--style-randomisation", "0.5")),
    Study("lite-paint-synth", "efficientnet_lite0", "paint", Path("data/models/lite-paint-synth"),
          TRAINING["paint"], 12, ("--synthetic-defects", "0.5")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[s.name for s in STUDIES], default=None,
                   help="models of the study to score (default: all)")
    p.add_argument("--train", action="store_true", help="train a model whose folder is missing (default: skip it)")
    args = p.parse_args()
    watch = MachineWatch()
    studies = [s for s in STUDIES if args.only is None or s.name in args.only]
    for recording in HELD_OUT.values():
        ensure(recording)
    rows, speed = [], {}
    for study in studies:
        if not (study.folder / "config.json").is_file():
            if not args.train or study.data is None:
                print(f"{study.name}: no model at {study.folder}; skipped")
                continue
            train(study)
        scores = {renderer: score(study.folder, recording.path) for renderer, recording in HELD_OUT.items()}
        speed[study.name] = predict_ms(study.folder, HELD_OUT["paint"].path)
        rows.append((study, scores))

    seeds = ", ".join(f"{renderer} seed {recording.seed}" for renderer, recording in HELD_OUT.items())
    print(f"\nleave-one-renderer-out: 600 held-out parts per renderer ({seeds}); "
          "defect accuracy / good-vs-defect AUROC / machine accuracy")
    heads = "".join(f" {'on ' + renderer:>22}" for renderer in HELD_OUT)
    print(f"{'model':<18} {'backbone':<19} {'trained on':<12}{heads} {'ms/item':>8}")
    for study, scores in rows:
        cells = "".join(f" {f'{a:6.1%} {auc:6.3f} {m:6.1%}':>22}" for a, auc, m in scores.values())
        print(f"{study.name:<18} {study.backbone:<19} {study.trained_on:<12}{cells} {speed[study.name]:8.2f}")
    watch.verdict()
    if "cnn-paint" in speed and "lite-all3-band" in speed:
        print(f"ratio: {speed['cnn-paint'] / speed['lite-all3-band']:.2f}")


def ensure(recording: Recording) -> None:
    """Synthesise ``recording`` unless it is there; one that is there must hold the study's number of parts (a
    shorter or longer run of the same seed would train or score another study)."""
    manifest = recording.path / "manifest.json"
    if manifest.is_file():
        count = json.loads(manifest.read_text()).get("count")
        if count != recording.parts:
            raise SystemExit(f"{recording.path} holds {count} parts; the study uses {recording.parts} "
                             f"({recording.renderer} renderer, seed {recording.seed}): move it aside and run again "
                             "to synthesise them")
        return
    run(["synth", "factory", "--out", str(recording.path), "--parts", str(recording.parts), "--seed",
         str(recording.seed), "--renderer", recording.renderer])


def train(study: Study) -> None:
    assert study.data is not None
    ensure(study.data)
    run(["train", "factory", "--data", str(study.data.path), "--out", str(study.folder), "--image-backbone",
         study.backbone, "--epochs", str(study.epochs), *study.flags])


def run(args: list[str]) -> None:
    print("$ fusionline " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, check=True)


def score(model: Path, recording: Path) -> tuple[float, float, float]:
    """Defect accuracy, good-vs-defect AUROC and machine accuracy of ``model`` on ``recording``."""
    from pipelines.lines.factory.evaluate import evaluate

    metrics = evaluate(model, recording, progress=False)
    defect, machine = metrics["tasks"]["defect"], metrics["tasks"]["machine"]
    return defect["accuracy"], defect["per_class"]["good"]["auroc"], machine["accuracy"]


def predict_ms(model: Path, recording: Path, batch: int = 32, repeats: int = 5) -> float:
    """Median ms per item of ``Predictor.forward_batch`` on the first ``batch`` parts of ``recording``."""
    from connectors.recording import Replayer
    from connectors.records import Sample
    from model.predictor import Predictor, batch_inputs
    from pipelines.lines.factory.handler import decode

    predictor = Predictor.from_pretrained(model)
    samples = [item for item, _ in zip((i for i in Replayer(recording) if isinstance(i, Sample)), range(batch))]
    inputs = batch_inputs([decode(sample) for sample in samples])
    predictor.forward_batch(inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.forward_batch(inputs)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / len(samples)


if __name__ == "__main__":
    main()
