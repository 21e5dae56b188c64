"""Factory line throughput: the Ray pipeline vs a naive sequential per-frame loop, same model, same recording.

Also measures the source-only ceiling (frames/s that reading and decoding PNG + WAV alone reach on all cores, and
the share of it the pipeline reaches) and the full line: the same replicas with every decision going through
the outbox to a real PLC simulator (Modbus TCP) and a real Mosquitto, and into the SQLite audit store, as
``fusionline run factory`` does. Prints a table; the last line is ``ratio: X`` = pipeline fps / naive fps.

    python benchmarks/factory_line.py --parts 600 --replicas 2 --rounds 3 [--runtime onnx]

The measurements are interleaved for ``--rounds`` rounds (the Ray cluster and replicas stay up between rounds) and
each path's median round is reported, so a noisy neighbour on a shared machine moves all of them. ``--model`` (a
model or cascade folder) and ``--runtime`` choose what the replicas run; the naive loop is always the baseline:
``--model``'s network (a cascade's big model) in eager PyTorch, batch 1. With ``--runtime onnx|int8``, a network
without its ONNX file is exported into its folder first (INT8 calibrated on 256 parts of the training recording).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (SERVING_MODEL, MachineWatch, add_bench_recording_flags,  # noqa: E402
                                ensure_recording, ensure_runtime_files)
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.runtimes import RUNTIMES  # noqa: E402
from pipelines.lines.factory.handler import inspector_dir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_recording_flags(p, "to replay")
    p.add_argument("--model", type=Path, default=SERVING_MODEL,
                   help="model or cascade folder the replicas run (default: the CNN model factory-v2)")
    p.add_argument("--replicas", type=int, default=os.cpu_count() or 2, help="pipeline replicas")
    p.add_argument("--batch-size", type=int, default=16, help="pipeline micro-batch")
    p.add_argument("--naive-items", type=int, default=200, help="items the (slow) naive loop processes per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the measurements (median kept)")
    p.add_argument("--runtime", choices=RUNTIMES, default="eager",
                   help="what runs the model in the replicas and the naive loop (model.runtimes)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, args.parts)
    samples = [s for s in Replayer(recording) if isinstance(s, Sample)]
    files = [(s.frame.source, s.audio.source) for s in samples]
    ensure_runtime_files(args.model, args.runtime)

    runs: dict[str, list[tuple[float, float]]] = {"ceiling": [], "naive": [], "pipeline": [], "line": []}
    with RayPipeline(args.model, args.replicas, args.batch_size, args.runtime) as pipeline:
        for r in range(args.rounds):
            runs["ceiling"].append((source_ceiling(files, workers=os.cpu_count() or 2), float("nan")))
            runs["naive"].append(naive_loop(inspector_dir(args.model), recording, args.naive_items))
            runs["pipeline"].append(pipeline.run(recording))
            runs["line"].append(pipeline.run_line(recording))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1][0]:.1f} fps" for k, v in runs.items()))

    setups = {"ceiling": ("source only (read + decode)", f"{os.cpu_count()} processes"),
              "naive": ("naive per-frame loop", f"1 process, batch 1, eager, {inspector_dir(args.model).name}"),
              "pipeline": ("fusionline Ray pipeline", f"{args.replicas} replicas, batch {args.batch_size}, "
                                                     f"{args.runtime}, {args.model.name}"),
              "line": ("full line", "pipeline + outbox, PLC sim, Mosquitto, audit")}
    print(f"\nfactory line, {len(samples)} parts of 640x480 PNG + 1 s WAV, model {args.model}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'path':<30} {'fps':>9} {'range':>15} {'p99 ms':>9}  setup")
    median = {}
    for key, (name, setup) in setups.items():
        fps = [f for f, _ in runs[key]]
        median[key] = statistics.median(fps)
        p99 = statistics.median(p for _, p in runs[key])
        print(f"{name:<30} {median[key]:>9.1f} {f'{min(fps):.1f}-{max(fps):.1f}':>15} {p99:>9.1f}  {setup}")
    print(f"pipeline share of source ceiling: {median['pipeline'] / median['ceiling']:.0%}; full line "
          f"{median['line'] / median['pipeline']:.0%} of the pipeline; runtime {args.runtime}")
    print("pipeline CPU per part (psutil, median of rounds): " + ", ".join(
        f"{name} {statistics.median(ms):.1f} ms" for name, ms in pipeline.cpu_ms_per_part.items()))
    watch.verdict()
    print(f"ratio: {median['pipeline'] / median['naive']:.2f}")


def _decode_files(files: list[tuple[str, str]]) -> int:
    import cv2

    from connectors.records import decode_audio

    cv2.setNumThreads(1)
    for image_path, audio_path in files:
        cv2.imdecode(np.fromfile(image_path, np.uint8), cv2.IMREAD_COLOR)
        decode_audio("bench", Path(audio_path).read_bytes())
    return len(files)


def source_ceiling(files: list[tuple[str, str]], workers: int) -> float:
    """Frames/s of reading + decoding alone, spread over ``workers`` processes (spawned: forking a process
    that runs Ray's threads can deadlock the child)."""
    chunks = [files[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_files, [c[:4] for c in chunks]))  # warm up imports
        start = time.perf_counter()
        n = sum(pool.map(_decode_files, chunks))
    return n / (time.perf_counter() - start)


def naive_loop(model_dir: Path, recording: Path, items: int) -> tuple[float, float]:
    """One process: read, decode and infer each frame on its own (batch 1, eager PyTorch)."""
    from model.predictor import Predictor

    predictor = Predictor.from_pretrained(model_dir)
    latencies = []
    samples = [s for s in Replayer(recording, limit=items + 5) if isinstance(s, Sample)]
    for s in samples[:5]:  # warm-up
        predictor.predict({"image": [s.frame.decode()], "audio": [s.audio.decode()]})
    start = time.perf_counter()
    for s in Replayer(recording, limit=items):
        t0 = time.perf_counter()
        predictor.predict({"image": [s.frame.decode()], "audio": [s.audio.decode()]})
        latencies.append((time.perf_counter() - t0) * 1000)
    return len(latencies) / (time.perf_counter() - start), float(np.percentile(latencies, 99))


class RayPipeline:
    """The fusionline runtime: replayer → bounded queue → Ray replica actors → ordered results.

    A context manager: the local Ray and the replicas start once (warmed up) and serve every round.
    """

    def __init__(self, model_dir: Path, replicas: int, batch_size: int, runtime: str = "eager"):
        self.model_dir, self.replicas, self.batch_size, self.runtime = model_dir, replicas, batch_size, runtime

    def __enter__(self) -> RayPipeline:
        from pipelines.replicas import ReplicaPool
        from pipelines.runtime import connect_ray

        connect_ray(num_cpus=self.replicas)
        from connectors.modbus import PlcSimulator
        from connectors.mqtt import MosquittoBroker

        self.pool = ReplicaPool(str(self.model_dir), replicas=self.replicas, cache_size=0, runtime=self.runtime)
        self.peers = ExitStack()  # the full line's PLC simulator, broker and scratch folder
        self.plc = self.peers.enter_context(PlcSimulator("127.0.0.1", 0))
        self.broker = self.peers.enter_context(MosquittoBroker())
        self.scratch = self.peers.enter_context(tempfile.TemporaryDirectory(prefix="fusionline-bench-line-"))
        self.processes = {"replicas": [psutil.Process(i["pid"]) for i in self.pool.info()],
                          "driver": [psutil.Process()]}
        self.cpu_ms_per_part: dict[str, list[float]] = {name: [] for name in self.processes}
        return self

    def run(self, recording: Path) -> tuple[float, float]:
        """Replay ``recording`` as fast as possible: (fps, p99 latency in ms); records CPU ms per part of the
        replica processes (together) and of the driver (source, batching, collector) in :attr:`cpu_ms_per_part`."""
        from pipelines.runtime import run_stream

        run_stream(Replayer(recording, limit=64), self.pool, lambda o, lat: None, batch_size=self.batch_size)  # warm
        before = {name: sum(_cpu_s(p) for p in procs) for name, procs in self.processes.items()}
        stats = run_stream(Replayer(recording), self.pool, lambda o, lat: None, batch_size=self.batch_size)
        for name, procs in self.processes.items():
            used = sum(_cpu_s(p) for p in procs) - before[name]
            self.cpu_ms_per_part[name].append(1000 * used / stats.items)
        return stats.fps, stats.percentile(99)

    def run_line(self, recording: Path) -> tuple[float, float]:
        """The full line on the same replicas (fresh audit store and outbox each run): (fps, p99 latency in ms)."""
        from pipelines.line import run_line
        from pipelines.lines.factory.compose import FactoryLineConfig, compose

        run = Path(tempfile.mkdtemp(dir=self.scratch))
        cfg = FactoryLineConfig(model_dir=str(self.model_dir), recording=str(recording),
                                audit_db=str(run / "audit.db"), batch_size=self.batch_size,
                                plc=f"127.0.0.1:{self.plc.port}", mqtt=f"127.0.0.1:{self.broker.port}")
        report = run_line(compose(cfg, replicas=self.pool))
        if len(report.decisions) + len(report.quarantined) != report.stats.items or report.fail_safe:
            raise RuntimeError(f"full line lost items or raised FAIL-SAFE: {report.fail_safe}")
        return report.stats.fps, report.stats.percentile(99)

    def __exit__(self, *exc: object) -> None:
        import ray

        self.peers.close()
        self.pool.shutdown()
        ray.shutdown()


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its threads so far."""
    times = process.cpu_times()
    return times.user + times.system


if __name__ == "__main__":
    main()
