"""LoRA few-shot adaptation of a trained factory model to a product surface it never saw.

The new product type is a **woven carbon-fibre** part: a twill-weave texture (dark, glossy, strongly
structured) that is none of the training materials (brushed/cast metal, plastic, wood, brick, grass, gravel).
Parts are rendered with the factory synthesiser's own ``render_part`` (same shapes, defects, nuisance,
lighting and camera), with the material table and the texture bank patched **in this script only**
(``pipelines/lines/factory/synth.py`` is untouched). Machine sound is the synthesiser's, machine state dealt as on the line.

Adaptation: ``--adapt`` labelled parts (balanced over the defect classes) train LoRA adapters (``r=16``,
``lora_alpha=32``) on every dense ``Conv2d``/``Linear`` of the image encoder and the task heads
(:mod:`model.adapt`, found by type); the base weights stay frozen. The adaptation parts' defect boxes also
supervise the dense defect map (``--cam-weight``, as in training; 0: image-level labels only). ``--test`` held-out parts of the new product
(defect classes in the line's proportions) are scored before and after, and after merging the adapters.

The adaptation set is balanced over the defect classes, the line is not: the adapted defect head's logits are
shifted by ``log(line mix) - log(adaptation mix)`` (:func:`model.adapt.adjust_prior`; the line's mix is the
synthesiser's dealing block, i.e. the known production rate, not the test labels); ``--no-prior-correction``
skips it. Prints a table; the last line is ``ratio: X`` = defect accuracy of the deployed (merged) model / the
base model's.

    python benchmarks/lora_adapt.py   # the shipped model
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, MachineWatch  # noqa: E402
from model.adapt import (  # noqa: E402
    AdaptConfig, adapt, add_lora, adjust_prior, lora_targets, merge, predict, trainable_parameters,
)
from model.factory_model import FactoryInspector  # noqa: E402
from model.preprocess import image_uint8, waveform_tensor  # noqa: E402
from pipelines.lines.factory.datasets import MAX_BOXES  # noqa: E402
from pipelines.lines.factory import synth  # noqa: E402

CACHE = Path.home() / ".cache" / "fusionline" / "bench"
NEW_MATERIAL = "carbon"


def _carbon_weave(rng: np.random.Generator, n: int) -> np.ndarray:
    """Twill-woven carbon fibre: tows alternating direction on a diagonal-shifted grid, fine fibre streaks."""
    cell = int(rng.integers(14, 22))
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    i, j = (ys // cell).astype(int), (xs // cell).astype(int)
    horizontal = ((i + j) // 2) % 2 == 0  # 2x2 twill: the over/under pattern steps diagonally
    u, v = (xs % cell) / cell, (ys % cell) / cell
    across = np.where(horizontal, v, u)  # position across the tow
    tow = np.sin(np.pi * across) ** 0.5  # rounded tow cross-section
    streak_h = np.repeat(rng.standard_normal((n, 1)).astype(np.float32), n, 1)
    streak_v = np.repeat(rng.standard_normal((1, n)).astype(np.float32), n, 0)
    fibres = np.where(horizontal, streak_h, streak_v)
    sheen = np.where(horizontal, 0.35, -0.35)  # the two tow directions reflect differently
    return synth._standardise(tow + 0.25 * fibres + sheen + 0.3 * synth._fractal(rng, n, n, n / 4, 2))


def use_new_material() -> None:
    """Patch the synthesiser (this process only) so every part is carbon fibre."""
    bank = synth._texture_bank()
    if NEW_MATERIAL not in bank:
        rng = np.random.default_rng(7)
        bank[NEW_MATERIAL] = [_carbon_weave(rng, 1024) for _ in range(2)]
    synth.MATERIALS = {NEW_MATERIAL: 1.0}
    look = synth._material_look

    def material_look(rng: np.random.Generator, material: str):
        if material == NEW_MATERIAL:
            return synth._hsv(rng.uniform(200, 240), rng.uniform(0.0, 0.12), rng.uniform(0.18, 0.38)), \
                rng.uniform(0.25, 0.45)
        return look(rng, material)

    synth._material_look = material_look


def render_set(n: int, seed: int, balanced: bool, config) -> SimpleNamespace:
    """``n`` new-product parts as model inputs: uint8 images, waveforms, labels (defect, machine)."""
    key = hashlib.sha256(f"{n}:{seed}:{balanced}:{config.image_size}:{config.clip_samples}:v2".encode()).hexdigest()
    path = CACHE / f"lora_adapt-{key[:16]}.pt"
    if path.is_file():
        return SimpleNamespace(**torch.load(path, weights_only=True))
    use_new_material()
    if balanced:
        defects = [synth.DEFECTS[i % len(synth.DEFECTS)] for i in range(n)]
    else:
        defects = synth.deal(np.random.default_rng([seed, 0]), synth.DEFECT_BLOCK, n)
    machines = synth.deal(np.random.default_rng([seed, 1]), synth.MACHINE_BLOCK, n)
    images, waves = [], []
    boxes = torch.full((n, MAX_BOXES, 4), float("nan"))
    for i, (d, m) in enumerate(zip(defects, machines)):
        frame, instances = synth.render_part(np.random.default_rng([seed, 2, i]), d, (640, 480))
        for k, (x, y, w, h) in enumerate(instances[:MAX_BOXES]):
            boxes[i, k] = torch.tensor([x / 640, y / 480, w / 640, h / 480])
        clip = synth.render_machine_sound(np.random.default_rng([seed, 3, i]), m)
        images.append(image_uint8(frame, config.image_size))
        waves.append(waveform_tensor(clip[None] if clip.ndim == 1 else clip, synth.SAMPLE_RATE, config))
    data = {
        "images": torch.stack(images),
        "waveforms": torch.stack(waves),
        "boxes": boxes,
        "labels": {
            "defect": torch.tensor([config.classes["defect"].index(d) for d in defects]),
            "machine": torch.tensor([config.classes["machine"].index(m) for m in machines]),
        },
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return SimpleNamespace(**data)


def scores(pred: torch.Tensor, y: torch.Tensor, k: int) -> tuple[float, float]:
    acc = float((pred == y).float().mean())
    f1 = []
    for c in range(k):
        tp, fp, fn = int(((pred == c) & (y == c)).sum()), int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    return acc, sum(f1) / k


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SERVING_MODEL,
                    help="trained model folder (default: the CNN model factory-v2)")
    ap.add_argument("--adapt", type=int, default=40, help="labelled new-product parts to adapt on")
    ap.add_argument("--test", type=int, default=200, help="held-out new-product parts")
    ap.add_argument("--epochs", type=int, default=30, help="adaptation epochs")
    ap.add_argument("--lr", type=float, default=2e-3, help="adapter learning rate")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--alpha", type=int, default=32, help="LoRA alpha (scale alpha / r)")
    ap.add_argument("--cam-weight", type=float, default=1.0,
                    help="weight of the dense CAM loss from the parts' defect boxes (0: image-level labels only)")
    ap.add_argument("--no-prior-correction", action="store_true",
                    help="skip the logit adjustment from the balanced adaptation set to the line's class mix")
    ap.add_argument("--seed", type=int, default=0, help="random seed (rendering and training)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    watch = MachineWatch()
    t0 = time.perf_counter()

    model = FactoryInspector.from_pretrained(args.model)
    cfg = model.config
    few = render_set(args.adapt, 1000 + args.seed, True, cfg)
    test = render_set(args.test, 2000 + args.seed, False, cfg)
    print(f"model {args.model} ({cfg.version}); new product: {NEW_MATERIAL} fibre; {args.adapt} adaptation parts "
          f"(balanced), {args.test} test parts; rendered/loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    k = len(cfg.classes["defect"])
    y = test.labels["defect"]

    before_pred = predict(model, test, "defect")
    before = scores(before_pred, y, k)
    targets = lora_targets(model)
    lora = add_lora(model, AdaptConfig(r=args.r, lora_alpha=args.alpha))
    trainable, total = trainable_parameters(lora)
    base_params = total - trainable
    acfg = AdaptConfig(r=args.r, lora_alpha=args.alpha, epochs=args.epochs, lr=args.lr, seed=args.seed,
                       threads=args.threads, cam_weight=args.cam_weight)
    history = adapt(lora, few, acfg)
    after = scores(predict(lora, test, "defect"), y, k)
    adjusted = None
    if not args.no_prior_correction:  # the adaptation set is balanced; the line deals DEFECT_BLOCK's mix
        line_mix = torch.tensor([float(synth.DEFECT_BLOCK[c]) for c in cfg.classes["defect"]])
        adjust_prior(lora, "defect", torch.bincount(few.labels["defect"], minlength=k).float(), line_mix)
        adjusted = scores(predict(lora, test, "defect"), y, k)
    merged = merge(lora)
    merged_pred = predict(merged, test, "defect")
    merged_scores = scores(merged_pred, y, k)
    machine = scores(predict(merged, test, "machine"), test.labels["machine"], len(cfg.classes["machine"]))

    print()
    print(f"LoRA r={args.r}, alpha={args.alpha}, CAM weight {args.cam_weight} on {len(targets)} Conv2d/Linear layers (image encoder + heads): "
          f"{trainable:,} trainable of {base_params:,} base parameters = {100 * trainable / base_params:.2f} % "
          f"({100 * trainable / total:.2f} % of base + adapters); adaptation {history['seconds']:.0f} s, "
          f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}")
    print("| new-product test parts | defect accuracy | defect macro-F1 |")
    print("|---|---:|---:|")
    print(f"| base model (before) | {before[0]:.3f} | {before[1]:.3f} |")
    print(f"| + LoRA adapters (after) | {after[0]:.3f} | {after[1]:.3f} |")
    if adjusted is not None:
        print(f"| + logit adjustment to the line's class mix | {adjusted[0]:.3f} | {adjusted[1]:.3f} |")
    print(f"| merged (what is deployed) | {merged_scores[0]:.3f} | {merged_scores[1]:.3f} |")
    print(f"| predicting 'good' always | {float((y == 0).float().mean()):.3f} | - |")
    print(f"machine accuracy after merging (audio task, for reference): {machine[0]:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    watch.verdict()
    ratio = merged_scores[0] / max(before[0], 1e-9)
    print(f"ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
