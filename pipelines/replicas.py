"""Model replicas hosted by Ray actors: a line's :class:`~pipelines.handler.Handler` behind a result cache.

Each replica hosts the Handler of one registered line (:mod:`pipelines.lines`) in one runtime (``eager``,
``onnx``, ``int8``), on a share of a GPU when the cluster has GPUs (replicas share GPUs by fractional requests,
:func:`gpu_share`), one CPU core otherwise. Samples arrive with *encoded* payloads; the handler decodes them, so
decoding scales with replicas. An item that cannot be decoded comes back as
:class:`connectors.records.Quarantined`, never as an error that fails its batch.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from connectors.records import Quarantined, Sample
from pipelines import lines
from pipelines.handler import Answer

log = logging.getLogger("fusionline.replica")


@dataclass
class Inference:
    """A replica's answer for one sample: the handler's answer plus what the audit trail needs.

    ``provenance`` is the handler's :meth:`~pipelines.handler.Handler.provenance` of the sample (where its
    payloads came from), merged into the decision's ``extra``.
    """

    item_id: str
    seq: int
    prediction: Answer
    input_digest: str
    provenance: dict[str, str] = field(default_factory=dict)
    cached: bool = False


class ModelReplica:
    """One model replica. Ray hosts it as an actor through :class:`ReplicaPool`; it also runs in-process.

    The result cache is keyed by the model version and the input digest, so a new model (:meth:`load`) never
    answers from its predecessor's results.

    Args:
        model_dir: a ``save_pretrained`` folder.
        cache_size: LRU entries (0 disables the cache).
        threads: torch/OpenCV threads for this replica (1: replicas, not threads, use the cores).
        line: the registered line whose Handler hosts the model (None: the line serving the folder's
            ``model_type``, :func:`pipelines.lines.serving`).
        runtime: what runs the model: ``eager`` (PyTorch), ``onnx`` or ``int8`` (ONNX Runtime), where the line's
            Handler offers it.
        handler_options: keyword arguments of the Handler's ``from_pretrained`` beyond the model and the runtime
            (a line's own, e.g. where the service line keeps its tickets' dialog state).

    Example:
        >>> replica = ModelReplica("runs/model", line="factory")
        >>> outcomes = replica.infer(samples)   # list[Inference | Quarantined], same order as samples
    """

    def __init__(self, model_dir: str, cache_size: int = 4096, threads: int = 1, line: str | None = None,
                 runtime: str = "eager", handler_options: dict[str, Any] | None = None):
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.line = line
        self.runtime = runtime
        self.handler_options = dict(handler_options or {})
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], Answer] = OrderedDict()
        self.stats = {"items": 0, "cache_hits": 0, "quarantined": 0, "batches": 0}
        self.load(model_dir)

    def load(self, model_dir: str) -> str:
        """Host the model in ``model_dir`` from now on (a new version rolled out to a running replica); warms it up
        and returns its version. Cached results of other versions are never served."""
        handler_class = lines.handler_class(self.line or lines.serving(model_dir))
        handler = handler_class.from_pretrained(model_dir, runtime=self.runtime, **self.handler_options)
        handler.warm_up()
        self.handler = handler
        return handler.model_version

    def infer(self, samples: list[Sample]) -> list[Inference | Quarantined]:
        """Look up the cache, hand the misses to the handler in one batch; order is preserved."""
        outcomes: list[Inference | Quarantined | None] = [None] * len(samples)
        misses: list[tuple[int, str, Sample]] = []
        version = self.handler.model_version
        for i, sample in enumerate(samples):
            digest = sample.digest()
            hit = self._cache.get((version, digest))
            if hit is None:
                misses.append((i, digest, sample))
                continue
            self._cache.move_to_end((version, digest))
            outcomes[i] = Inference(sample.item_id, sample.seq, hit, digest, self.handler.provenance(sample),
                                    cached=True)
            self.stats["cache_hits"] += 1
        answers = self.handler.infer([sample for _, _, sample in misses]) if misses else []
        for (i, digest, sample), answer in zip(misses, answers, strict=True):
            if isinstance(answer, Quarantined):
                outcomes[i] = answer
                self.stats["quarantined"] += 1
                continue
            outcomes[i] = Inference(sample.item_id, sample.seq, answer, digest, self.handler.provenance(sample))
            self._remember((version, digest), answer)
        self.stats["items"] += len(samples)
        self.stats["batches"] += 1
        return outcomes  # type: ignore[return-value]

    def _remember(self, key: tuple[str, str], answer: Answer) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = answer
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def info(self) -> dict[str, Any]:
        """Model version, runtime, where it runs (device, node, GPU ids, pid) and counters (for logs and tests)."""
        where: dict[str, Any] = {"node": None, "gpu_ids": []}
        if ray.is_initialized():
            where = {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        return {
            "model_version": self.handler.model_version,
            "runtime": self.runtime,
            "device": self.handler.device,
            **where,
            "pid": os.getpid(),
            **self.stats,
        }


@dataclass
class ReplicaRestart:
    """A replica that died and what became of it; ``recovery_s`` is death noticed → answering again."""

    replica: int
    error: str
    died: float  # time.monotonic() when a batch's result reported the death
    back: float | None = None  # time.monotonic() when the restarted actor answered
    lost: bool = False  # Ray gave up restarting it

    @property
    def recovery_s(self) -> float | None:
        return None if self.back is None else self.back - self.died


class PlacementError(ValueError):
    """Replicas the cluster can never place (more GPUs or CPUs than it has): said at once, not waited on."""


def gpu_share(replicas: int, gpus_per_replica: float | None = None,
              nodes: list[dict[str, float]] | None = None) -> float:
    """The GPUs each of ``replicas`` replicas asks Ray for, checked against what the cluster has.

    Args:
        replicas: how many replicas the pool starts.
        gpus_per_replica: the share asked for (``0.5``: two replicas on one GPU; above 1 a whole number); None:
            the cluster's GPUs split evenly (``1 / ceil(replicas / GPUs)``, at most 1), 0 without GPUs.
        nodes: each live node's resources (``{"GPU": 1.0, "CPU": 16.0}``); None: the connected Ray cluster's.

    Raises:
        PlacementError: the share cannot be placed ``replicas`` times on the nodes' GPUs, or replicas without GPUs
            need more CPU cores than the nodes have (Ray would wait for them forever).
    """
    if nodes is None:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    if gpus_per_replica is None:
        gpus_per_replica = 1 / math.ceil(replicas / gpus) if gpus else 0.0
    if gpus_per_replica < 0 or (gpus_per_replica > 1 and not float(gpus_per_replica).is_integer()):
        raise PlacementError(f"--gpus-per-replica {gpus_per_replica:g}: a share of one GPU (0 < share <= 1) or a "
                             "whole number of GPUs")
    if gpus_per_replica > 0:
        per_gpu = math.floor(1 / gpus_per_replica + 1e-9) if gpus_per_replica <= 1 else 0
        fits = sum(int(node.get("GPU", 0.0)) * per_gpu if per_gpu else int(node.get("GPU", 0.0) // gpus_per_replica)
                   for node in nodes)
        if fits < replicas:
            raise PlacementError(
                f"{replicas} replicas x {gpus_per_replica:g} GPU each cannot be placed: the cluster has "
                f"{gpus:g} GPU(s), room for {fits} such replicas; ask for fewer replicas or a smaller "
                "--gpus-per-replica")
        return float(gpus_per_replica)
    cores = sum(int(node.get("CPU", 0.0)) for node in nodes)
    if replicas > cores:
        raise PlacementError(f"{replicas} replicas on CPU need one core each; the cluster has {cores}: ask for at "
                             f"most {cores} replicas")
    return 0.0


class ReplicaPool:
    """N :class:`ModelReplica` actors with least-loaded dispatch, restarted by Ray when they die.

    Each actor asks for a share of a GPU when the cluster has GPUs (:func:`gpu_share`; a request the cluster can
    never meet fails at once with :class:`PlacementError`), else one CPU, and is restarted up to
    ``max_restarts`` times. ``submit`` returns a Ray ObjectRef (the caller bounds how many are in flight);
    ``result`` gets it and, when the replica died with the batch, runs the same batch again on a live replica
    (``retries`` times at most), so a replica crash loses and duplicates nothing. A dead replica gets no new
    batches until its restarted actor answers; :attr:`restarts` records each death and the recovery time.
    :attr:`placement` says where each replica runs (device, node, GPU ids, runtime).

    Args:
        line: the registered line whose Handler each replica hosts (None: the line serving the model folder).
        max_restarts: restarts Ray makes of each replica's actor.
        retries: replicas one batch is tried on after the first died with it.
        restart_timeout_s: how long a dead replica may take to come back before it counts as lost.
        gpus_per_replica: GPUs each replica asks for (None: the cluster's GPUs shared evenly, 0 without GPUs).
        runtime: ``eager``, ``onnx`` or ``int8`` (:class:`ModelReplica`).
        handler_options: the line's own ``from_pretrained`` keywords (:class:`ModelReplica`).
    """

    def __init__(
        self,
        model_dir: str,
        replicas: int = 2,
        cache_size: int = 4096,
        max_restarts: int = 3,
        retries: int = 3,
        restart_timeout_s: float = 120.0,
        line: str | None = None,
        gpus_per_replica: float | None = None,
        runtime: str = "eager",
        handler_options: dict[str, Any] | None = None,
    ):
        gpus = gpu_share(replicas, gpus_per_replica)
        actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus, max_restarts=max_restarts,
                           max_task_retries=0)(ModelReplica)
        self.actors = [actor.remote(model_dir, cache_size, line=line, runtime=runtime,
                                    handler_options=handler_options) for _ in range(replicas)]
        self.retries = retries
        self.restart_timeout_s = restart_timeout_s
        self.restarts: list[ReplicaRestart] = []
        self._load = [0] * replicas
        self._owner: dict[ray.ObjectRef, int] = {}
        self._probes: dict[int, tuple[ray.ObjectRef, ReplicaRestart]] = {}  # down replica -> info() call
        self._lock = threading.RLock()  # submit (batcher thread) and result (collector thread)
        infos = ray.get([a.info.remote() for a in self.actors])
        self.model_version = infos[0]["model_version"]
        self.placement = [{k: info[k] for k in ("runtime", "device", "node", "gpu_ids", "pid")} for info in infos]
        for index, where in enumerate(self.placement):
            log.info("replica %d: %s runtime on %s (node %s, GPU %s, pid %d), %g GPU asked", index,
                     where["runtime"], where["device"], where["node"], where["gpu_ids"] or "-", where["pid"], gpus)
        log.info("replicas=%d model_version=%s max_restarts=%d", replicas, self.model_version, max_restarts)

    def submit(self, samples: list[Sample]) -> ray.ObjectRef:
        """Send a batch to the least-loaded live replica."""
        with self._lock:
            index = min(self._live(), key=self._load.__getitem__)
            ref = self.actors[index].infer.remote(samples)
            self._load[index] += 1
            self._owner[ref] = index
        return ref

    def result(self, ref: ray.ObjectRef, samples: list[Sample]) -> list[Inference | Quarantined]:
        """The batch's outcomes; when its replica died, the same batch again on a live replica."""
        attempt = 0
        while True:
            with self._lock:
                index = self._owner[ref]
            try:
                return ray.get(ref)
            except RayActorError as exc:
                with self._lock:
                    self._down(index, exc)
                if attempt == self.retries:
                    raise RuntimeError(
                        f"batch {samples[0].item_id}..{samples[-1].item_id} failed on {attempt + 1} replicas, "
                        f"last: {type(exc).__name__}"
                    ) from exc
            finally:
                self.done(ref)
            attempt += 1
            log.warning("replica died replica=%d items=%s..%s retry=%d", index, samples[0].item_id,
                        samples[-1].item_id, attempt)
            ref = self.submit(samples)

    def done(self, ref: ray.ObjectRef) -> None:
        """Forget a submitted batch (its result taken, or not wanted any more)."""
        with self._lock:
            self._load[self._owner.pop(ref)] -= 1

    def _down(self, index: int, exc: BaseException) -> None:
        """Stop sending batches to replica ``index`` and watch for its restarted actor."""
        if index not in self._probes:
            event = ReplicaRestart(index, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                                   time.monotonic())
            self.restarts.append(event)
            self._probes[index] = (self.actors[index].info.remote(), event)

    def recover(self, timeout_s: float) -> list[ReplicaRestart]:
        """Wait up to ``timeout_s`` for every dead replica to answer again; the restarts so far."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._probes and time.monotonic() < deadline:
                ray.wait([probe for probe, _ in self._probes.values()], num_returns=len(self._probes),
                         timeout=max(0.0, deadline - time.monotonic()))
                self._live()
            return list(self.restarts)

    def _live(self) -> list[int]:
        """Replicas that take batches; waits for a restart when all are down."""
        while True:
            now = time.monotonic()
            for index, (probe, event) in list(self._probes.items()):
                if not ray.wait([probe], timeout=0)[0]:
                    continue
                try:
                    ray.get(probe)
                except RayActorError:  # not restarted yet, or never again
                    if now - event.died < self.restart_timeout_s:
                        self._probes[index] = (self.actors[index].info.remote(), event)
                        continue
                    event.lost = True
                    log.error("replica lost replica=%d: not back after %.0f s", index, now - event.died)
                else:
                    event.back = now
                    log.warning("replica back replica=%d recovery_s=%.2f", index, event.recovery_s)
                del self._probes[index]
            lost = {e.replica for e in self.restarts if e.lost}
            live = [i for i in range(len(self.actors)) if i not in self._probes and i not in lost]
            if live:
                return live
            if not self._probes:
                raise RuntimeError(f"no live model replica: all {len(self.actors)} lost")
            ray.wait([probe for probe, _ in self._probes.values()], num_returns=1, timeout=1.0)
            time.sleep(0.05)

    def info(self) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
