"""The replica's result cache: a hit vs a miss, and a new model version missing every time.

One :class:`~pipelines.replicas.ModelReplica` (the streaming line's and the HTTP endpoint's replica: one thread, the
shipped model) in this process, ``--items`` distinct parts of the benchmark recording (640x480 PNG + 1 s WAV), one
part per ``infer`` call (what an HTTP request or a batch of one costs):

- ``miss``: a part the cache has not seen (digest, decode, model, remembered);
- ``hit``: the same part again, right after (digest, lookup);
- after ``ModelReplica.load`` of the same weights under a new version (``config.json`` ``version`` changed in a
  copy), every part is asked again: each must miss (the cache is keyed by model version + input digest), then hit.

Each path's per-call wall time over the items: p50 and p99. The answers of hits must equal the misses' answers. The
last line is ``ratio: X`` = miss p50 / hit p50.

    python benchmarks/cache.py --items 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    LATENCY_HEADS, SERVING_MODEL, MachineWatch, add_bench_recording_flags, ensure_recording, latency_columns,
)
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402
from model.pretrained import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402
from pipelines.replicas import Inference, ModelReplica  # noqa: E402


def timed(replica: ModelReplica, sample: Sample) -> tuple[float, Inference]:
    """One part through ``replica.infer``: (wall ms, its inference)."""
    started = time.perf_counter()
    (outcome,) = replica.infer([sample])
    elapsed = (time.perf_counter() - started) * 1000
    if not isinstance(outcome, Inference):
        raise RuntimeError(f"{sample.item_id}: quarantined: {outcome.reason}")
    return elapsed, outcome


def renamed_version(model: Path, folder: Path) -> Path:
    """A copy of ``model``'s weights and configuration with ``+retrained`` appended to its version."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(model / name, folder / name)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["version"] = f"{config['version']}+retrained"
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_recording_flags(p, "whose parts are asked")
    p.add_argument("--items", type=int, default=64, help="distinct parts asked")
    p.add_argument("--model", type=Path, default=SERVING_MODEL, help="model folder (default: the CNN model factory-v2)")
    args = p.parse_args()

    watch = MachineWatch()
    recording = ensure_recording(args.recording, args.parts)
    parts = [s for s in Replayer(recording, limit=args.items) if isinstance(s, Sample)]
    replica = ModelReplica(str(args.model), cache_size=len(parts) * 2, line="factory")
    first_version = replica.handler.model_version
    times: dict[str, list[float]] = {"miss": [], "hit": [], "new version, first ask": [], "new version, again": []}
    cached: dict[str, int] = dict.fromkeys(times, 0)

    def ask_twice(sample: Sample, first: str, again: str, version: str) -> None:
        answers = []
        for path in (first, again):
            ms, outcome = timed(replica, sample)
            times[path].append(ms)
            cached[path] += outcome.cached
            answers.append(outcome.prediction)
        if answers[0] != answers[1] or answers[1].model_version != version:
            raise RuntimeError(f"{sample.item_id}: answers {answers} (model {version} expected twice)")

    for sample in parts:
        ask_twice(sample, "miss", "hit", first_version)
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        second_version = replica.load(str(renamed_version(args.model, Path(tmp))))
        for sample in parts:
            ask_twice(sample, "new version, first ask", "new version, again", second_version)

    print(f"\nModelReplica.infer, one part per call, {len(parts)} distinct 640x480 PNG + 1 s WAV parts; model "
          f"{first_version}, then the same weights as {second_version} (ModelReplica.load)")
    print(f"{'path':<24} {LATENCY_HEADS} {'answered from cache':>20}")
    for path, values in times.items():
        print(f"{path:<24} {latency_columns(values, 2)} {f'{cached[path]}/{len(values)}':>20}")
    ratio = np.percentile(times["miss"], 50) / np.percentile(times["hit"], 50)
    invalidated = cached["new version, first ask"] == 0 and cached["new version, again"] == len(parts)
    print(f"target: a hit >= 10x faster than a miss ({ratio:.1f}x: {'met' if ratio >= 10 else 'MISSED'}); a new model "
          f"version misses every part, then hits ({'met' if invalidated else 'MISSED'})")
    watch.verdict()
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
