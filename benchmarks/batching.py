"""Dynamic batching over HTTP: ``fusionline serve``'s application with ``@serve.batch`` vs the same deployment with
batches of one, 16 concurrent callers.

The application of :mod:`pipelines.serve` (FastAPI ingress -> the factory line's model deployment hosting a
``ModelReplica``, result cache off so every request runs the model) on a local Ray started here, served on a free
loopback port. ``--callers`` threads each POST ``--requests`` parts (640x480 PNG + 1 s WAV from the benchmark
recording, multipart, one part per request) one after the other, as fast as answers come back; every request is
timed from send to answer. Two settings of the same deployment:

- ``batch-1``: ``max_batch`` 1 (each request is a batch of its own);
- ``dynamic``: ``max_batch`` ``--max-batch``, waiting at most ``--batch-wait-ms`` for a batch to fill.

With ``--via handle`` the callers hand the parts to the model deployment's batched method through a DeploymentHandle
instead, leaving out the HTTP proxy and the ingress (multipart parsing, the upload's Sample, the JSON answer): the
batching alone.

The settings are interleaved for ``--rounds`` rounds (each deployed afresh, then warmed up with one request per
caller, untimed); each setting's median round is reported: items/s, p50 and p99 latency, the mean batch a model
replica ran (its own counters; with one replica, all of them), its CPU time per item and how busy it was (CPU seconds
per second: near 100 % the model is the bottleneck, well below it the HTTP path in front of it is). The last line is
``ratio: X`` = dynamic items/s / batch-1 items/s.

    python benchmarks/batching.py --callers 16 --requests 12 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from ray.serve.handle import DeploymentHandle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, MachineWatch, add_bench_recording_flags, ensure_recording  # noqa: E402
from connectors.mqtt import free_port  # noqa: E402
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.runtimes import RUNTIMES  # noqa: E402
from pipelines.replicas import Inference  # noqa: E402

Round = dict[str, float]  # items_s, p50_ms, p99_ms, mean_batch, replica_cpu_ms, replica_busy


class HttpCaller:
    """Sends a part as ``POST /v1/factory/decide`` (multipart), one keep-alive session per calling thread."""

    def __init__(self, base: str):
        self.url = f"{base}/v1/factory/decide"
        self.sessions = threading.local()

    def __call__(self, sample: Sample) -> None:
        if not hasattr(self.sessions, "session"):
            self.sessions.session = requests.Session()
        files = {"image": ("part.png", sample.frame.encoded, "image/png"),
                 "audio": ("part.wav", sample.audio.encoded, "audio/wav")}
        answer = self.sessions.session.post(self.url, files=files, data={"item_id": sample.item_id}, timeout=600)
        if answer.status_code != 200:
            raise RuntimeError(f"{sample.item_id}: HTTP {answer.status_code} {answer.text[:200]}")


class HandleCaller:
    """Hands a part to the model deployment's batched ``decide`` through a DeploymentHandle (no HTTP, no ingress)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    def __call__(self, sample: Sample) -> None:
        outcome = self.handle.decide.remote(sample).result()
        if not isinstance(outcome, Inference):
            raise RuntimeError(f"{sample.item_id}: {outcome}")


def load(send: Callable[[Sample], None], parts: list[Sample], callers: int,
         requests_each: int) -> tuple[float, list[float]]:
    """``callers`` threads, each sending ``requests_each`` parts back to back: (wall s, latencies ms)."""

    def caller(index: int) -> list[float]:
        latencies = []
        for k in range(requests_each):
            started = time.perf_counter()
            send(parts[(index * requests_each + k) % len(parts)])
            latencies.append((time.perf_counter() - started) * 1000)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        latencies = [ms for per_caller in pool.map(caller, range(callers)) for ms in per_caller]
    return time.perf_counter() - started, latencies


def replica_counters(base: str) -> tuple[int, int, float]:
    """A model replica's items and batches so far (its own counters) and the CPU seconds its process used."""
    info = requests.get(f"{base}/v1/lines", timeout=60).json()[0]
    cpu = psutil.Process(info["pid"]).cpu_times()
    return info["items"], info["batches"], cpu.user + cpu.system


def measure(base: str, send: Callable[[Sample], None], parts: list[Sample], callers: int,
            requests_each: int) -> Round:
    load(send, parts, callers, 1)  # warm-up: connections, the first answers
    items_before, batches_before, cpu_before = replica_counters(base)
    wall, latencies = load(send, parts, callers, requests_each)
    items, batches, cpu = replica_counters(base)
    return {"items_s": len(latencies) / wall, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "mean_batch": (items - items_before) / max(1, batches - batches_before),
            "replica_cpu_ms": (cpu - cpu_before) * 1000 / max(1, items - items_before),
            "replica_busy": (cpu - cpu_before) / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_recording_flags(p, "whose parts are sent")
    p.add_argument("--distinct", type=int, default=64, help="distinct parts sent (read once, kept in memory)")
    p.add_argument("--model", type=Path, default=SERVING_MODEL, help="model folder (default: the CNN model factory-v2)")
    p.add_argument("--runtime", choices=RUNTIMES, default="eager",
                   help="what runs the model in its replica (onnx and int8 read the model folder's exported files)")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers")
    p.add_argument("--via", choices=["http", "handle"], default="http",
                   help="http: POST to the endpoint (what a client sees); handle: call the model deployment's "
                        "batched method through a DeploymentHandle, without the HTTP proxy and the ingress")
    p.add_argument("--requests", type=int, default=12, help="requests each caller sends per measured round")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (one CPU core each)")
    p.add_argument("--max-batch", type=int, default=16, help="dynamic setting's largest batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="dynamic setting's longest wait for a batch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both settings (median kept)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, args.parts)
    parts = [s for s in Replayer(recording, limit=args.distinct) if isinstance(s, Sample)]

    import ray
    from ray import serve

    from pipelines.serve import APP_NAME, Serving, lines_app, model_deployment, start_http

    settings = {"batch-1": Serving(args.replicas, max_batch=1, batch_wait_s=0.0, cache_size=0, runtime=args.runtime),
                "dynamic": Serving(args.replicas, max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1000,
                                   cache_size=0, runtime=args.runtime)}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    runs: dict[str, list[Round]] = {name: [] for name in settings}
    try:
        port = free_port()
        start_http("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        for r in range(args.rounds):
            for name, serving in settings.items():
                serve.run(lines_app({"factory": args.model}, serving), name=APP_NAME, route_prefix="/")
                send = HttpCaller(base) if args.via == "http" else HandleCaller(
                    serve.get_deployment_handle(model_deployment("factory"), app_name=APP_NAME))
                runs[name].append(measure(base, send, parts, args.callers, args.requests))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{name} {rounds[-1]['items_s']:.1f} items/s p99 {rounds[-1]['p99_ms']:.0f} ms"
                for name, rounds in runs.items()))
    finally:
        serve.shutdown()
        ray.shutdown()

    via = "HTTP POST /v1/factory/decide" if args.via == "http" else "DeploymentHandle -> the model deployment's decide"
    print(f"\n{via}, {args.callers} callers x {args.requests} requests per round, {len(parts)} "
          f"distinct 640x480 PNG + 1 s WAV parts, model {args.model}, {args.replicas} replica(s), cache off; median "
          f"round of {args.rounds}")
    print(f"{'setting':<9} {'max batch':>9} {'wait ms':>8} {'items/s':>8} {'range':>13} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'replica CPU ms/item':>19} {'replica busy':>12}")
    median: dict[str, Round] = {}
    for name, rounds in runs.items():
        median[name] = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        rates = [r["items_s"] for r in rounds]
        serving = settings[name]
        print(f"{name:<9} {serving.max_batch:>9} {serving.batch_wait_s * 1000:>8g} {median[name]['items_s']:>8.1f} "
              f"{f'{min(rates):.1f}-{max(rates):.1f}':>13} {median[name]['p50_ms']:>8.0f} "
              f"{median[name]['p99_ms']:>8.0f} {median[name]['mean_batch']:>10.1f} "
              f"{median[name]['replica_cpu_ms']:>19.1f} {median[name]['replica_busy']:>12.0%}")
    ratio = median["dynamic"]["items_s"] / median["batch-1"]["items_s"]
    p99_ratio = median["dynamic"]["p99_ms"] / median["batch-1"]["p99_ms"]
    print(f"target: >= 2x batch-1 throughput ({ratio:.2f}x: {'met' if ratio >= 2 else 'MISSED'}), p99 <= 2x batch-1 "
          f"p99 ({p99_ratio:.2f}x: {'met' if p99_ratio <= 2 else 'MISSED'})")
    watch.verdict()
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
