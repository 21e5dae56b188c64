"""Runtimes side by side on a whole held-out recording: eager PyTorch (fp32, and under bf16 autocast), ONNX Runtime
fp32, ONNX Runtime INT8.

Every part of the recording is decoded once, then each runtime predicts all of it through the one inference path
(:class:`model.predictor.Predictor`: same pre- and post-processing, only the network differs), one thread each as
in a replica. Reports throughput of the whole predict call and of the network alone, accuracy against the labels,
the largest probability difference from eager and how many decisions differ. The last line is
``ratio: X`` = INT8 predict throughput / eager predict throughput.

    python benchmarks/runtimes.py --rounds 3

The model's ONNX files are used as they are (exported first when missing: the line's shipped model carries none);
``--export`` writes them again first (INT8 calibrated on 256 parts of the training recording, never the held-out
one). ``--model tests/data/models/factory-v2`` measures the CNN, which ships with both files.
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

from benchmarks._common import HOLDOUT, MachineWatch, ensure_recording, ensure_runtime_files  # noqa: E402
from connectors.recording import Replayer, read_labels  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.predictor import Predictor, batch_inputs  # noqa: E402
from model.runtimes import ONNX_FILES, RUNTIMES, cpu_has_bf16  # noqa: E402
from pipelines.lines import shipped_model  # noqa: E402
from pipelines.lines.factory.handler import decode  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recording", type=Path, default=HOLDOUT, help="held-out recording (synthesised if missing)")
    p.add_argument("--parts", type=int, default=600, help="parts to synthesise when the recording is missing")
    p.add_argument("--model", type=Path, default=shipped_model("factory"),
                   help="model folder (default: the line's shipped model; its ONNX files are exported when missing)")
    p.add_argument("--export", action="store_true", help="export the ONNX files again before measuring")
    p.add_argument("--batch-size", type=int, default=16, help="items per predict call, as a replica's micro-batch")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime (a replica uses one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    args = p.parse_args()

    watch = MachineWatch()
    torch.set_num_threads(args.threads)
    recording = ensure_recording(args.recording, args.parts)
    for runtime in ONNX_FILES:
        ensure_runtime_files(args.model, runtime, force=args.export)
    labels = read_labels(recording)
    items = [(s.item_id, d) for s in Replayer(recording) if isinstance(s, Sample)
             for d in [decode(s)] if isinstance(d, dict)]
    batches = [batch_inputs([d for _, d in items[i:i + args.batch_size]])
               for i in range(0, len(items), args.batch_size)]
    predictors = {r: Predictor.from_pretrained(args.model, runtime=r) for r in RUNTIMES}
    tensors = [next(iter(predictors.values()))._inputs_tensors(b) for b in batches]

    outputs = {r: [pr.forward_batch(b) for b in batches] for r, pr in predictors.items()}  # warm-up + answers
    times: dict[str, dict[str, list[float]]] = {r: {"predict": [], "network": []} for r in RUNTIMES}
    for _ in range(args.rounds):
        for runtime, predictor in predictors.items():
            start = time.perf_counter()
            for b in batches:
                predictor.predict(b)
            times[runtime]["predict"].append(len(items) / (time.perf_counter() - start))
            start = time.perf_counter()
            with torch.inference_mode():
                for t, present in tensors:
                    predictor._network(t, present)
            times[runtime]["network"].append(len(items) / (time.perf_counter() - start))

    truth = [(labels[i]["defect"], labels[i]["machine"]) for i, _ in items]
    eager = outputs["eager"]
    print(f"\n{len(items)} held-out parts of {recording}, model {args.model}, batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds")
    print(f"{'runtime':<8} {'predict/s':>10} {'network/s':>10} {'defect acc':>11} {'machine acc':>12} "
          f"{'max |dp|':>10} {'decisions differ':>17} {'size MB':>8}")
    speed = {}
    for runtime, predictor in predictors.items():
        preds = [pr for out in outputs[runtime] for pr in predictor.predictions(out)]
        ref = [pr for out in eager for pr in predictors["eager"].predictions(out)]
        defect, machine = np.mean([(pr.label == d, pr.extra["machine"] == m)
                                   for pr, (d, m) in zip(preds, truth, strict=True)], axis=0)
        diff = max(float(np.abs(a.probs[k] - b.probs[k]).max()) for a, b in zip(outputs[runtime], eager, strict=True)
                   for k in a.probs)
        differ = sum((a.label, a.reject) != (b.label, b.reject) for a, b in zip(preds, ref, strict=True))
        size = (args.model / ONNX_FILES.get(runtime, "model.safetensors")).stat().st_size / 1e6
        speed[runtime] = statistics.median(times[runtime]["predict"])
        print(f"{runtime:<8} {speed[runtime]:>10.1f} {statistics.median(times[runtime]['network']):>10.1f} "
              f"{defect:>11.2%} {machine:>12.2%} {diff:>10.2e} {differ:>17} {size:>8.2f}")
    int8 = predictors["int8"].session.metadata
    print(f"int8: activation ranges at the {int8.get('int8_percentile', '?')}th percentile of the calibration "
          f"histograms; kept fp32: {int8.get('int8_fp32_modules') or 'nothing'}")
    print(f"bf16 vs eager: {speed['bf16'] / speed['eager']:.2f}x (CPU bf16 instructions: "
          f"{'yes' if cpu_has_bf16() else 'none, emulated'}); onnx vs eager: {speed['onnx'] / speed['eager']:.2f}x; "
          f"int8 vs eager: {speed['int8'] / speed['eager']:.2f}x; int8 vs onnx: {speed['int8'] / speed['onnx']:.2f}x")
    watch.verdict()
    print(f"ratio: {speed['int8'] / speed['eager']:.2f}")


if __name__ == "__main__":
    main()
