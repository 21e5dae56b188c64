"""Ray actor call overhead: a round trip to an actor method that does nothing, vs the same call made locally.

On a local Ray started here (``--cpus`` CPUs, no dashboard), one actor of a class whose methods return their argument
(or nothing). From this process, one call in flight at a time (``ray.get(actor.method.remote(arg))``), after
``--warm-up`` untimed calls; every call is timed from ``.remote`` to ``ray.get`` returning:

- ``local``: the same method on a plain instance in this process (what the call costs without Ray);
- ``actor, no argument``: the bare round trip (submit, schedule onto the actor's worker, run, reply);
- ``actor, one part``: a :class:`~connectors.records.Sample` of one 640x480 PNG + 1 s WAV part (~0.5 MB, through
  Ray's object store) sent and its item id returned, as a replica receives a batch of one;
- ``actor, 16 parts``: a list of 16 such Samples, as a replica receives a micro-batch;
- ``Serve handle, no argument``: the same no-op as a Ray Serve deployment's method through a ``DeploymentHandle``
  (``handle.method.remote().result()``), the hop the HTTP endpoint's ingress makes to the model deployment.

Each path: p50, p99 and mean per call, over ``--calls`` calls (a tenth of them for the payload paths). The overhead
of the bare round trip is its p50 minus the local call's. The last line is ``ratio: X`` = the 2 ms budget / that
overhead (at least 1: within the budget).

    python benchmarks/actor_overhead.py --calls 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    LATENCY_HEADS, MachineWatch, add_bench_recording_flags, ensure_recording, latency_columns,
)
from connectors.recording import Replayer  # noqa: E402
from connectors.records import Sample  # noqa: E402

BUDGET_MS = 2.0


class Echo:
    """Methods that do (next to) nothing: what a call costs is the calling."""

    def nothing(self) -> None:
        return None

    def item_ids(self, samples: Sample | list[Sample]) -> list[str]:
        return [s.item_id for s in (samples if isinstance(samples, list) else [samples])]


def timings(call: Callable[[], Any], calls: int, warm_up: int) -> list[float]:
    """``call`` made ``warm_up`` times untimed, then ``calls`` times: each call's wall ms."""
    for _ in range(warm_up):
        call()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_recording_flags(p, "whose parts are sent")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per path without payload (a tenth with)")
    p.add_argument("--warm-up", type=int, default=50, help="untimed calls before each path")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = p.parse_args()

    watch = MachineWatch()
    parts = [s for s in Replayer(ensure_recording(args.recording, args.parts), limit=16) if isinstance(s, Sample)]
    import ray
    from ray import serve

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=1)(Echo).remote()
        local = Echo()
        few = max(1, args.calls // 10)
        paths: dict[str, list[float]] = {
            "local": timings(local.nothing, args.calls, args.warm_up),
            "actor, no argument": timings(lambda: ray.get(actor.nothing.remote()), args.calls, args.warm_up),
            "actor, one part": timings(lambda: ray.get(actor.item_ids.remote(parts[0])), few, args.warm_up),
            "actor, 16 parts": timings(lambda: ray.get(actor.item_ids.remote(parts)), few, args.warm_up),
        }
        handle = serve.run(serve.deployment(ray_actor_options={"num_cpus": 1})(Echo).bind(), name="actor-overhead",
                           route_prefix=None)
        paths["Serve handle, no argument"] = timings(lambda: handle.nothing.remote().result(), args.calls,
                                                     args.warm_up)
    finally:
        serve.shutdown()
        ray.shutdown()

    part_mb = (len(parts[0].frame.encoded) + len(parts[0].audio.encoded)) / 2**20
    print(f"\none call in flight at a time from the driver, local Ray with {args.cpus} CPUs; a part is "
          f"{part_mb:.2f} MB (640x480 PNG + 1 s WAV)")
    print(f"{'path':<27} {'calls':>6} {LATENCY_HEADS}")
    for path, values in paths.items():
        print(f"{path:<27} {len(values):>6} {latency_columns(values, 3)}")
    overhead = np.percentile(paths["actor, no argument"], 50) - np.percentile(paths["local"], 50)
    print(f"target: actor call overhead <= {BUDGET_MS:g} ms (p50 {overhead:.3f} ms: "
          f"{'met' if overhead <= BUDGET_MS else 'MISSED'}; p99 "
          f"{np.percentile(paths['actor, no argument'], 99):.3f} ms)")
    watch.verdict()
    print(f"ratio: {BUDGET_MS / overhead:.2f}")


if __name__ == "__main__":
    main()
