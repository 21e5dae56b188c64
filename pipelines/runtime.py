"""The streaming runtime: bounded source queue, micro-batches, bounded in-flight work, ordered delivery.

::

    source thread ──> bounded queue ──> micro-batcher ──> ReplicaPool (Ray actors) ──> collector thread ──> on_result
      (blocks when full:                 (batch_size or     (at most max_in_flight        (takes batches in
       backpressure)                      max_wait_s)        batches outstanding)          submission order)

Batches are formed and submitted in source order and the collector takes them back in that same order,
so controllers see parts in source order however the replicas interleave. Items the source could not read
(:class:`Quarantined`) travel the same ordered channel, so the audit sees them in their place too. A batch
whose replica died is run again on a live one (:meth:`ReplicaPool.result`) before the collector moves on,
so a replica crash neither loses nor reorders nor repeats an item.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import ray

from connectors.records import Quarantined, Sample
from pipelines.replicas import Inference, ReplicaPool

log = logging.getLogger("fusionline.runtime")

Outcome = Inference | Quarantined
_END = object()


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto``, ``host:port`` or ``ray://host:port``), or start a local one."""
    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    try:
        ray.init(logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot join the Ray cluster at {address}: {exc}") from None
    log.info("ray address=%s resources=%s", address or "local", ray.cluster_resources())


@dataclass
class StreamStats:
    """What one stream run did; latencies are ingest → result, in milliseconds."""

    items: int = 0
    inferred: int = 0
    quarantined: int = 0
    batches: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


def run_stream(
    source: Iterable[Sample | Quarantined],
    pool: ReplicaPool,
    on_result: Callable[[Outcome, float], None],
    batch_size: int = 16,
    max_wait_s: float | None = 0.02,
    max_in_flight: int = 4,
    queue_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> StreamStats:
    """Run ``source`` through ``pool`` and call ``on_result(outcome, latency_ms)`` in source order.

    ``on_result`` runs on the collector thread, concurrently with batching and inference.

    Args:
        batch_size: largest micro-batch sent to one replica.
        max_wait_s: longest a partial batch waits for more items (bounds latency at low rates); None: batches
            are cut only by count, a source-quarantined item or the end, so they depend on the source alone and
            results are bitwise reproducible whatever the timing and the number of replicas.
        max_in_flight: batches outstanding across all replicas (backpressure towards the source).
        queue_size: items buffered between the source thread and the batcher.
        progress: called with the number of items delivered so far.
    """
    stats = StreamStats()
    items: queue.Queue = queue.Queue(maxsize=queue_size)
    ordered: queue.Queue = queue.Queue()  # (ref, batch) or Quarantined, in source order
    slots = threading.Semaphore(max_in_flight)
    failure: list[BaseException] = []
    start = time.perf_counter()
    stop = threading.Event()
    reader = threading.Thread(target=_pump, args=(source, items, stop, failure), name="fusionline-source", daemon=True)
    collector = threading.Thread(
        target=_collect, args=(ordered, pool, slots, on_result, stats, progress, failure),
        name="fusionline-collector", daemon=True,
    )
    reader.start()
    collector.start()
    try:
        for batch in _micro_batches(items, ordered, batch_size, max_wait_s):
            slots.acquire()
            if failure:
                break
            ordered.put((pool.submit(batch), batch))
            stats.batches += 1
    finally:
        stop.set()
        ordered.put(_END)
        collector.join()
        _drain(items, reader)
    if failure:
        raise failure[0]
    stats.wall_s = time.perf_counter() - start
    return stats


def _micro_batches(
    items: queue.Queue, ordered: queue.Queue, batch_size: int, max_wait_s: float | None
) -> Iterator[list[Sample]]:
    """Group samples into batches of ``batch_size``, or fewer once ``max_wait_s`` passed since the first."""
    batch: list[Sample] = []
    deadline = 0.0
    while True:
        timeout = None if not batch or max_wait_s is None else max(0.0, deadline - time.perf_counter())
        try:
            item = items.get(timeout=timeout)
        except queue.Empty:
            item = None
        if item is _END:
            if batch:
                yield batch
            return
        if item is not None:
            if isinstance(item, Quarantined):
                if batch:  # keep source order: what came before goes first
                    yield batch
                    batch = []
                ordered.put(item)
                continue
            if not batch and max_wait_s is not None:
                deadline = time.perf_counter() + max_wait_s
            batch.append(item)
        if batch and (len(batch) >= batch_size or item is None):
            yield batch
            batch = []


def _collect(
    ordered: queue.Queue,
    pool: ReplicaPool,
    slots: threading.Semaphore,
    on_result: Callable[[Outcome, float], None],
    stats: StreamStats,
    progress: Callable[[int], None] | None,
    failure: list[BaseException],
) -> None:
    broken = False  # after a replica or sink failure, later results are not delivered out of order
    while (entry := ordered.get()) is not _END:
        if isinstance(entry, Quarantined):
            deliver = [(entry, 0.0)]
        else:
            ref, batch = entry
            try:
                if broken:  # nothing more is delivered: forget the batch
                    pool.done(ref)
                outcomes = [] if broken else pool.result(ref, batch)
            except BaseException as exc:  # surfaced by run_stream in the caller's thread
                failure.append(exc)
                broken, outcomes = True, []
            finally:
                slots.release()
            now = time.perf_counter()
            deliver = [(o, (now - s.ingest_time) * 1000.0) for s, o in zip(batch, outcomes)]
        try:
            for outcome, latency in ([] if broken else deliver):
                on_result(outcome, latency)
                stats.items += 1
                if isinstance(outcome, Quarantined):
                    stats.quarantined += 1
                else:
                    stats.inferred += 1
                    stats.latencies_ms.append(latency)
        except BaseException as exc:  # surfaced by run_stream in the caller's thread
            failure.append(exc)
            broken = True
        if progress and not broken:
            progress(stats.items)


def _pump(source: Iterable, items: queue.Queue, stop: threading.Event, failure: list[BaseException]) -> None:
    try:
        for item in source:
            items.put(item)
            if stop.is_set():
                break
    except BaseException as exc:  # surfaced by run_stream in the caller's thread
        failure.append(exc)
    finally:
        items.put(_END)


def _drain(items: queue.Queue, reader: threading.Thread) -> None:
    """Unblock and join the source thread after an early stop."""
    while reader.is_alive():
        try:
            items.get(timeout=0.1)
        except queue.Empty:
            pass
    reader.join()
