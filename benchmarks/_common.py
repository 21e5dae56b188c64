"""What every benchmark shares: the machine it ran on, how quiet it was, and the data and model it needs.

A benchmark prints :class:`MachineWatch`'s header first (CPU model, the flags that decide what INT8 and bf16 can
do, cores, load average) and its verdict just before its ``ratio:`` line: the load average then, and how much CPU
*other* processes took during the run (sampled every second, outside this process and its children, Ray's
workers included). A run during which other processes averaged more than :data:`BUSY_CORES` cores, or that
started with a load average above the core count, is marked ``BUSY``: its figures are not comparable.

Missing recordings are synthesised here (same seeds as ``make demo``) and the model is one the repository ships
(:data:`SERVING_MODEL`), so every benchmark runs on a clean checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
BUSY_CORES = 0.25  # other processes' average CPU (in cores) above which a run is marked BUSY
TRAIN = Path("data/factory-train")  # seed 1, as `make demo` writes it (a shorter run is a prefix of it)
HOLDOUT = Path("data/factory-holdout")  # seed 2, never trained on
SEEDS = {TRAIN: 1, HOLDOUT: 2}
#: The serving benchmarks' model: the CNN ``factory-v2`` (shipped until issue 15), which carries the ONNX and INT8
#: exports; the line's default is ``factory-v6`` (pipelines.lines.SHIPPED_MODELS).
SERVING_MODEL = REPO / "tests/data/models/factory-v2"
BENCH_RECORDING = Path("data/bench/factory-640x480")  # the serving benchmarks' parts (seed 7 where synthesised)
#: Column heads of :func:`latency_columns`.
LATENCY_HEADS = f"{'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"


def cpu_description() -> str:
    """``AMD EPYC, 2 cores, flags avx2 fma (no avx512f avx512_vnni ...)`` from ``/proc/cpuinfo``."""
    from model.runtimes import cpu_flags

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = cpu_flags()
    have = [f for f in CPU_FLAGS if f in flags]
    lack = [f for f in CPU_FLAGS if f not in flags]
    return f"{name}, {os.cpu_count()} cores, flags {' '.join(have) or 'none'}" + (
        f" (no {' '.join(lack)})" if lack else "")


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


class MachineWatch:
    """Prints the machine header now; samples other processes' CPU in the background until :meth:`verdict`."""

    def __init__(self, interval_s: float = 1.0):
        self.cores = os.cpu_count() or 1
        self.start_load = os.getloadavg()[0]
        self.start = time.perf_counter()
        self.others_cpu_s = 0.0
        self._stop = threading.Event()
        self._previous = self._others()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True,
                                        name="fusionline-machine-watch")
        self._thread.start()
        print(f"machine: {cpu_description()}; load average {load_average()} at start")

    def _others(self) -> dict[int, float]:
        """CPU seconds so far of every process outside this one and its descendants, by pid."""
        me = psutil.Process()
        ours = {me.pid, *(c.pid for c in me.children(recursive=True))}
        cpu = {}
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            times = proc.info["cpu_times"]
            if proc.info["pid"] not in ours and times is not None:
                cpu[proc.info["pid"]] = times.user + times.system
        return cpu

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            now = self._others()
            self.others_cpu_s += sum(max(0.0, t - self._previous.get(pid, t)) for pid, t in now.items())
            self._previous = now

    def verdict(self) -> str:
        """Stop sampling and print (and return) the run's quiet/BUSY line."""
        self._stop.set()
        self._thread.join()
        wall = time.perf_counter() - self.start
        others = self.others_cpu_s / wall if wall > 0 else 0.0
        busy = others > BUSY_CORES or self.start_load > self.cores
        line = (f"{'BUSY' if busy else 'quiet'}: other processes used {others:.2f} cores on average over "
                f"{wall:.0f} s; load average {load_average()} at the end (start {self.start_load:.2f}, "
                f"{self.cores} cores)" + ("; figures from this run are not comparable" if busy else ""))
        print(line)
        return line


def ensure_recording(path: Path, parts: int, seed: int | None = None, product: int | None = None,
                     renderer: str = "paint") -> Path:
    """``path`` as it is, or synthesised (``seed``: the one ``make demo`` uses for that folder, else given;
    ``product``: a one-product line; ``renderer``: the part renderer, ``fusionline synth factory --help``)."""
    if (path / "manifest.json").is_file():
        return path
    from pipelines.lines.factory.synth import synth_factory

    seed = SEEDS.get(path, 7) if seed is None else seed
    what = f"seed {seed}" + (f", product {product}" if product is not None else "") + f", renderer {renderer}"
    print(f"{path}: missing; synthesising {parts} parts ({what})")
    return synth_factory(path, parts, seed=seed, product=product, renderer=renderer)


def ensure_runtime_files(model_dir: Path, runtime: str, force: bool = False) -> None:
    """Export the ONNX file ``runtime`` needs (``onnx``, ``int8``; ``eager`` and ``bf16`` need none) into each network
    folder of ``model_dir`` (itself, or a cascade's small and big models) that lacks it, or into every one with
    ``force``; INT8 is calibrated on 256 parts of the training recording."""
    from model.runtimes import ONNX_FILES
    from pipelines.lines.factory.export import export_factory
    from pipelines.lines.factory.handler import network_dirs

    if runtime not in ONNX_FILES:
        return
    for network in network_dirs(model_dir):
        if force or not (network / ONNX_FILES[runtime]).is_file():
            print(f"exporting {network} for the {runtime} runtime")
            export_factory(network, runtime, ensure_recording(TRAIN, 256) if runtime == "int8" else None)


def add_train_test_flags(p: argparse.ArgumentParser, train_use: str = "training recording") -> None:
    """``--train`` (default :data:`TRAIN`; ``train_use`` names it in the help) and ``--test`` (default
    :data:`HOLDOUT`), which :func:`start_train_test_run` synthesises where missing."""
    p.add_argument("--train", type=Path, default=TRAIN, help=f"{train_use} (synthesised if missing)")
    p.add_argument("--test", type=Path, default=HOLDOUT, help="held-out recording (synthesised if missing)")


def start_train_test_run(args: argparse.Namespace) -> MachineWatch:
    """Start a benchmark on ``--train`` and ``--test``: print the machine header (the returned
    :class:`MachineWatch`), then synthesise whichever recording is missing (2,400 and 600 parts)."""
    watch = MachineWatch()
    ensure_recording(args.train, 2400)
    ensure_recording(args.test, 600)
    return watch


def add_bench_recording_flags(p: argparse.ArgumentParser, use: str) -> None:
    """``--recording`` (default :data:`BENCH_RECORDING`; ``use`` says what the benchmark does with it, "to replay")
    and ``--parts``, how many parts :func:`ensure_recording` synthesises where it is missing."""
    p.add_argument("--recording", type=Path, default=BENCH_RECORDING,
                   help=f"recording {use} (synthesised here if missing)")
    p.add_argument("--parts", type=int, default=600, help="parts to synthesise when the recording is missing")


def latency_columns(ms: Sequence[float], decimals: int) -> str:
    """p50, p99 and mean of per-call times in ms, each right-aligned in 8 characters (under :data:`LATENCY_HEADS`)
    with ``decimals`` decimals."""
    return " ".join(f"{v:>8.{decimals}f}" for v in (np.percentile(ms, 50), np.percentile(ms, 99), statistics.mean(ms)))
