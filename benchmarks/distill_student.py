"""Teacher -> student distillation for the serving cascade: accuracy kept vs speed gained.

The teacher is a trained factory model (``--model``); the student is ``model.lab.distill.student_config`` of it
(every image/audio stage ``--width`` times as wide, half the router width), trained from scratch by
``model.lab.distill.distill`` (KL on logits softened by ``--temperature`` + hard-label cross-entropy, ``--alpha``
the KL share, plus the per-cell KL between the defect maps weighted by ``--cam-weight``) on ``--items`` items
of the training recording for ``--epochs`` epochs, full frames, no augmentation. Both are scored on the held-out
recording; latency is the median of ``--repeats`` forward passes of a ``--batch`` batch (image + audio, BN
folded where the model supports it).

Last line: ``ratio: X`` = student / teacher throughput (images per second) on this machine.

    python benchmarks/distill_student.py   # the shipped model; recordings synthesised if missing
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, add_train_test_flags, start_train_test_run  # noqa: E402
from model.lab.distill import DistillConfig, agreement, distill, student_config  # noqa: E402
from model.factory_model import FactoryInspector  # noqa: E402
from model.preprocess import log_mel_batch, normalize_images  # noqa: E402
from pipelines.lines.factory.datasets import load_recording  # noqa: E402


def latency(model: torch.nn.Module, data, batch: int, repeats: int) -> float:
    fast = model.fused_for_inference() if hasattr(model, "fused_for_inference") else model.eval()
    image = normalize_images(data.images[:batch])
    audio = log_mel_batch(data.waveforms[:batch], model.config)
    times = []
    with torch.inference_mode():
        fast({"image": image, "audio": audio})
        for _ in range(repeats):
            t = time.perf_counter()
            fast({"image": image, "audio": audio})
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SERVING_MODEL, help="trained teacher folder (default: factory-v2)")
    add_train_test_flags(ap, "recording distilled on")
    ap.add_argument("--items", type=int, default=800, help="training items distilled on")
    ap.add_argument("--test-items", type=int, default=300, help="held-out items scored")
    ap.add_argument("--epochs", type=int, default=20, help="distillation epochs")
    ap.add_argument("--width", type=float, default=0.5, help="student stage widths as a share of the teacher's")
    ap.add_argument("--temperature", type=float, default=4.0, help="softmax temperature of the KL term")
    ap.add_argument("--alpha", type=float, default=0.7, help="share of the KL term (the rest: hard labels)")
    ap.add_argument("--cam-weight", type=float, default=1.0,
                    help="weight of the per-cell KL between the defect maps (0: part-level logits only)")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the latency measurement")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward passes (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    watch = start_train_test_run(args)
    t0 = time.perf_counter()
    teacher = FactoryInspector.from_pretrained(args.model)
    student = FactoryInspector(student_config(teacher.config, width=args.width))
    train = load_recording(args.train, teacher.config, progress=False).data
    test = load_recording(args.test, teacher.config, progress=False).data
    train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.items])
    test = test.subset(torch.arange(min(args.test_items, len(test))))
    cfg = DistillConfig(epochs=args.epochs, temperature=args.temperature, alpha=args.alpha, lr=2e-3,
                        threads=args.threads, cam_weight=args.cam_weight)
    history = distill(teacher, student, train, cfg)
    scores = agreement(teacher, student, test, cfg)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    lat_t = latency(teacher, test, args.batch, args.repeats)
    lat_s = latency(student, test, args.batch, args.repeats)
    print(f"teacher {args.model} ({teacher.config.image_channels} image, {teacher.config.d_model} d_model); "
          f"student width {args.width} ({student.config.image_channels}, {student.config.d_model}); distilled on "
          f"{len(train)} items x {args.epochs} epochs in {history['seconds']:.0f} s, loss "
          f"{history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}; T={args.temperature}, alpha={args.alpha}")
    print(f"| model | parameters | defect acc | machine acc | ms / batch of {args.batch} | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| teacher | {n_t:,} | {scores['defect_teacher_acc']:.3f} | {scores['machine_teacher_acc']:.3f} | "
          f"{1000 * lat_t:.0f} | {args.batch / lat_t:.0f} |")
    print(f"| student | {n_s:,} | {scores['defect_student_acc']:.3f} | {scores['machine_student_acc']:.3f} | "
          f"{1000 * lat_s:.0f} | {args.batch / lat_s:.0f} |")
    print(f"student-teacher top-1 agreement on {len(test)} held-out items: defect {scores['defect_agree']:.3f}, "
          f"machine {scores['machine_agree']:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    watch.verdict()
    ratio = lat_t / lat_s
    print(f"ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
