"""Where one part's CPU goes in a serving replica, stage by stage; serving preprocessing vs the in-graph path.

One process, one thread (as a replica runs), the shipped model with batch norms folded, batches of
``--batch-size`` parts of the factory benchmark recording (640x480 PNG + 1 s WAV). Every row is CPU time per
part (``time.process_time``), the median over ``--repeats`` rounds after a warm-up round; within a round every
batch goes through every row in turn, so load from other processes falls on all rows alike.

Rows:

- decode: PNG (OpenCV) and WAV, as the replica decodes them (``pipelines.lines.factory.handler.decode``);
- image preprocessing: ``model.preprocess.image_batch`` (resize, normalise, local-contrast channels by OpenCV);
- image encoder: each module of ``ImageEncoder.features`` in turn, then its pooling, CAM and token heads;
- audio: waveform to a clip tensor, log-mel, audio encoder;
- the rest of ``Predictor.predict`` (router, task heads, boxes, copies): the whole ``predict`` minus the rows
  above it;
- the whole replica: ``ModelReplica.infer`` on the encoded samples (digest, decode, predict), what the rows add
  up to.

Baseline beside the fast path: the in-graph image path that training uses (``image_tensor``: resize and
normalise to 3 channels; the encoder computes the local contrast itself) against serving's ``image_batch`` +
encoder on the same frames (same input within 1e-6, ``tests/unit/test_model.py``). The last line is
``ratio: X`` = in-graph / serving CPU per part for image preprocessing + encoder.

    python benchmarks/part_cost.py --parts 160 --batch-size 16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, MachineWatch, ensure_recording  # noqa: E402
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.predictor import batch_inputs  # noqa: E402
from model.preprocess import image_batch, image_tensor, waveform_tensor  # noqa: E402
from pipelines.lines.factory.handler import decode  # noqa: E402
from pipelines.replicas import ModelReplica  # noqa: E402


def interleaved_cpu_ms(rows: dict[str, Callable[[int], object]], batches: int, parts: int, repeats: int
                       ) -> dict[str, float]:
    """Median CPU ms per part of each row (called with a batch index) over ``repeats`` rounds after a warm-up."""
    totals: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(repeats + 1):
        spent = dict.fromkeys(rows, 0.0)
        for b in range(batches):
            for name, row in rows.items():
                start = time.process_time()
                row(b)
                spent[name] += time.process_time() - start
        if round_:
            for name in rows:
                totals[name].append(spent[name])
    return {name: 1000 * statistics.median(t) / parts for name, t in totals.items()}


def undecoded(samples: list[Sample]) -> list[Sample]:
    """Copies with the payloads still encoded (decoding keeps the pixels and waveform on the record)."""
    return [replace(s, frame=replace(s.frame, pixels=None), audio=replace(s.audio, waveform=None, sample_rate=0))
            for s in samples]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recording", type=Path, default=Path("data/bench/factory-640x480"),
                   help="recording to read parts from (synthesised here if missing, as by factory_line.py)")
    p.add_argument("--model", type=Path, default=SERVING_MODEL, help="model folder (default: the CNN model factory-v2)")
    p.add_argument("--parts", type=int, default=160, help="parts measured (a multiple of --batch-size)")
    p.add_argument("--batch-size", type=int, default=16, help="parts per batch, as the line's micro-batches")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, 600)
    replica = ModelReplica(str(args.model), cache_size=0, threads=1)  # sets torch and OpenCV to one thread
    predictor = replica.handler.predictor
    cfg = predictor.config
    model = predictor.model
    samples = [s for s in Replayer(recording, limit=args.parts) if isinstance(s, Sample)]
    bs = args.batch_size
    batches = [samples[i:i + bs] for i in range(0, len(samples) - len(samples) % bs, bs)]
    parts = bs * len(batches)
    decoded = [[decode(s) for s in undecoded(batch)] for batch in batches]
    inputs = [batch_inputs(batch) for batch in decoded]
    frames = [batch["image"] for batch in inputs]
    audios = [batch["audio"] for batch in inputs]
    fast_in = [image_batch(f, cfg.image_size, cfg.image_highpass) for f in frames]
    graph_in = [torch.stack([image_tensor(x, cfg.image_size) for x in f]) for f in frames]
    encoder = model.image_encoder
    stages = list(encoder.features)
    stage_in: list[list[torch.Tensor]] = [[] for _ in stages]  # each stage's input, per batch
    with torch.inference_mode():
        for x in fast_in:
            x = x.contiguous(memory_format=torch.channels_last)
            for k, stage in enumerate(stages):
                stage_in[k].append(x)
                x = stage(x)
        fmaps = [stages[-1](x) for x in stage_in[-1]]
        waves = [torch.stack([waveform_tensor(w, r, cfg) for w, r in a]) for a in audios]
        mels = [predictor.logmel(w) for w in waves]

    def encoder_head(fmap: torch.Tensor) -> None:
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        encoder.global_proj(pooled)
        F.adaptive_avg_pool2d(fmap, encoder.grid)
        cam = encoder.cam(fmap)
        probs = torch.softmax(cam, dim=1).flatten(2)
        encoder.evidence_proj(torch.cat([probs.amax(dim=2), probs.mean(dim=2)], dim=1))

    rows: dict[str, Callable[[int], object]] = {
        "decode PNG + WAV": lambda b: [decode(s) for s in undecoded(batches[b])],
        "image preprocessing (image_batch)": lambda b: image_batch(frames[b], cfg.image_size, cfg.image_highpass),
    }
    for k, stage in enumerate(stages):
        rows[f"image encoder {k + 1}: {type(stage).__name__}"] = lambda b, k=k, stage=stage: stage(stage_in[k][b])
    rows.update({
        "image encoder: pooling, CAM, tokens": lambda b: encoder_head(fmaps[b]),
        "audio: clip tensor + log-mel": lambda b: predictor.logmel(
            torch.stack([waveform_tensor(w, r, cfg) for w, r in audios[b]])),
        "audio encoder": lambda b: model.audio_encoder(mels[b]),
        "Predictor.predict (decoded inputs)": lambda b: predictor.predict(inputs[b]),
        "ModelReplica.infer (encoded samples)": lambda b: replica.infer(undecoded(batches[b])),
        "baseline: image_tensor (3 channels)": lambda b: torch.stack(
            [image_tensor(x, cfg.image_size) for x in frames[b]]),
        "baseline: encoder on 3 channels": lambda b: encoder(
            graph_in[b].contiguous(memory_format=torch.channels_last)),
        "serving: encoder on 6 channels": lambda b: encoder(fast_in[b].contiguous(memory_format=torch.channels_last)),
    })
    with torch.inference_mode():
        cost = interleaved_cpu_ms(rows, len(batches), parts, args.repeats)

    stage_rows = [n for n in rows if n.startswith(("image preprocessing", "image encoder", "audio"))]
    rest = cost["Predictor.predict (decoded inputs)"] - sum(cost[n] for n in stage_rows)
    print(f"\nCPU ms per part, one thread, {parts} parts in batches of {bs}, model {args.model}; median of "
          f"{args.repeats} interleaved rounds")
    print(f"{'stage':<42} {'ms/part':>8}")
    for name in ["decode PNG + WAV", *stage_rows]:
        print(f"{name:<42} {cost[name]:>8.2f}")
    print(f"{'router, heads, boxes, copies (the rest)':<42} {rest:>8.2f}")
    print(f"{'sum: decode + Predictor.predict':<42} {cost['decode PNG + WAV'] + cost['Predictor.predict (decoded inputs)']:>8.2f}")
    print(f"{'ModelReplica.infer (measured whole)':<42} {cost['ModelReplica.infer (encoded samples)']:>8.2f}")
    encoder_total = sum(cost[n] for n in stage_rows if n.startswith("image encoder"))
    print(f"image encoder stages together: {encoder_total:.2f} ms/part")
    fast = cost["image preprocessing (image_batch)"] + cost["serving: encoder on 6 channels"]
    slow = cost["baseline: image_tensor (3 channels)"] + cost["baseline: encoder on 3 channels"]
    print(f"\nimage preprocessing + encoder, CPU ms per part: in-graph local contrast {slow:.2f} "
          f"({cost['baseline: image_tensor (3 channels)']:.2f} + {cost['baseline: encoder on 3 channels']:.2f}), "
          f"serving fast path {fast:.2f} ({cost['image preprocessing (image_batch)']:.2f} + "
          f"{cost['serving: encoder on 6 channels']:.2f})")
    diff = float((fast_in[0][:, :3] - graph_in[0]).abs().max())
    print(f"max |difference| of the RGB channels between the two inputs: {diff:.1e}")
    watch.verdict()
    print(f"ratio: {slow / fast:.2f}")


if __name__ == "__main__":
    main()
