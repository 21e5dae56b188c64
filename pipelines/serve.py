"""The HTTP endpoint: a line's model behind Ray Serve, with dynamic batching and a FastAPI ingress.

::

    client ─HTTP─> LineIngress (FastAPI)           ─handle─> LineModel, N replicas per line
                   POST /v1/<line>/decide                    @serve.batch: up to max_batch items, waiting at most
                   GET /v1/lines, /healthz, /docs             batch_wait_s -> ModelReplica.infer (result cache,
                   upload -> Sample (connectors.uploads)      the line's Handler: decode, then the model)

``LineModel`` hosts the same :class:`~pipelines.replicas.ModelReplica` a streaming line's actors host (same cache,
same Handler, same decoding), and the answer becomes a decision through the same
:func:`~pipelines.line.to_decision`. The parts an upload takes are the line Handler's ``payloads``, named as a
recording's events name them; the OpenAPI description (``/openapi.json``, ``/docs``) lists them per line. An item
that cannot be used answers 422 with its id, the stage (``upload``: the request itself; ``decode``: the line's
Handler) and the reason, the Handler's quarantine reason unchanged.

Why ``@serve.batch`` in the model deployment and not the streaming runtime's micro-batcher: HTTP callers are
independent, one item per request, so a batch can only form where their requests meet, in the model replica; the
decorator does that with a maximum batch and a maximum wait per replica, and the batch runs in a worker thread, so
the replica takes the next requests while it runs. ``docs/performance.md`` (Serving) says more.

The files of an uploaded CT series are spooled on the ingress's node, where the model replica reads them: the model
deployment must share the ingress node's file system (one node, as a medical line's PACS spool does).

Example:
    >>> ray.init()
    >>> start_http("127.0.0.1", 8000)
    >>> serve.run(lines_app({"factory": "tests/data/models/factory-v2"}, Serving(max_batch=16)), name=APP_NAME,
    ...           route_prefix="/")
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from connectors.records import InputError, Quarantined, Sample
from connectors.recording import MAX_ITEM_ID_CHARS
from connectors.uploads import PARTS, File, check_size, upload_sample
from pipelines.line import to_decision
from pipelines.replicas import Inference, ModelReplica, gpu_share

log = logging.getLogger("fusionline.serve")

APP_NAME = "fusionline"
SOURCE_ID = "http"  # the source in an HTTP decision's id: the same line and item id give the same decision id
ITEM_ID_FIELD = "item_id"
#: Requests one ingress replica holds at once, and one model replica takes at once: every request the ingress holds
#: waits in the model replica's batch queue, so a batch fills from all of them (a lower cap would hold requests back in
#: Serve's router, which retries a full replica with a growing backoff).
MAX_UPLOADS_IN_FLIGHT = 64
MAX_FILES = 2048  # files in one upload (a CT series' slices)


class DecisionOut(BaseModel):
    """The decision on one uploaded item."""

    item_id: str = Field(description="the item, as the caller named it (or the id given to it)")
    decision_id: str = Field(description="stable id: the same line and item id give the same one")
    label: str = Field(description="the primary task's class")
    confidence: float = Field(description="probability of the label")
    reject: bool = Field(description="the line's action: reject the part, flag the case for review")
    modality_weights: dict[str, float] = Field(description="the router's weight per modality")
    extra: dict[str, Any] = Field(description="the other heads' outputs (the line's own fields)")
    model_version: str = Field(description="the model that answered")
    input_digest: str = Field(description="SHA-256 of the payloads (the result cache's key with the model version)")
    latency_ms: float = Field(description="request received to decision, ms (batching wait included)")
    cached: bool = Field(description="answered from the result cache")


class Refusal(BaseModel):
    """An item that could not be decided, and why (HTTP 422)."""

    item_id: str
    stage: str = Field(description="upload (the request's parts) or decode (the line's Handler)")
    reason: str


@dataclass(frozen=True)
class Serving:
    """How each line's model is served.

    Attributes:
        replicas: :class:`LineModel` replicas per line (one CPU core each, or a share of a GPU where the cluster has
            GPUs).
        gpus_per_replica: GPUs each replica asks for (None: the cluster's GPUs shared evenly,
            :func:`~pipelines.replicas.gpu_share`).
        runtime: what runs the model (``eager``, ``onnx``, ``int8``: :class:`~pipelines.replicas.ModelReplica`).
        max_batch: the most items one batch holds.
        batch_wait_s: how long a partial batch waits for more items.
        cache_size: each replica's result cache (0: none).
    """

    replicas: int = 1
    gpus_per_replica: float | None = None
    runtime: str = "eager"
    max_batch: int = 16
    batch_wait_s: float = 0.01
    cache_size: int = 4096


@serve.deployment
class LineModel:
    """A line's :class:`~pipelines.replicas.ModelReplica` behind Serve's dynamic batching (:class:`Serving`)."""

    def __init__(self, model_dir: str, line: str, serving: Serving):
        self.replica = ModelReplica(model_dir, serving.cache_size, line=line, runtime=serving.runtime)
        self.line = line
        self.serving = serving
        self.decide.set_max_batch_size(serving.max_batch)
        self.decide.set_batch_wait_timeout_s(serving.batch_wait_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def decide(self, samples: list[Sample]) -> list[Inference | Quarantined]:
        """Called with one sample, run with the batch it joined: one ``ModelReplica.infer`` in a worker thread."""
        return await asyncio.to_thread(self.replica.infer, samples)

    def describe(self) -> dict[str, Any]:
        """The replica's :meth:`~pipelines.replicas.ModelReplica.info`, the line, its payloads and the batching."""
        return {**self.replica.info(), "line": self.line, "payloads": list(self.replica.handler.payloads),
                "max_batch": self.serving.max_batch, "batch_wait_ms": self.serving.batch_wait_s * 1000}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_UPLOADS_IN_FLIGHT)
@serve.ingress()
class LineIngress:
    """The HTTP API of the lines in ``models`` (line name -> its :class:`LineModel`), built when the replica starts
    (each line's route takes the parts its Handler names)."""

    def __init__(self, models: dict[str, DeploymentHandle]):
        self.models = models
        self.payloads: dict[str, list[str]] = {}

    async def __serve_build_asgi_app__(self) -> FastAPI:
        self.payloads = {line: (await handle.describe.remote())["payloads"] for line, handle in self.models.items()}
        return http_api(self.payloads, self.decide, self.lines, self.healthz)

    async def decide(self, line: str, request: Request) -> DecisionOut | JSONResponse:
        """One uploaded item through the line's model: its decision, or a 422 :class:`Refusal`."""
        received = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fusionline-upload-") as spool:
            try:
                sample = await self._sample(line, request, Path(spool))
            except InputError as exc:
                return _refused(line, Quarantined(exc.item_id, 0, exc.reason, "upload"))
            outcome = await self.models[line].decide.remote(sample)
        if isinstance(outcome, Quarantined):
            return _refused(line, outcome)
        decision = to_decision(outcome, (time.perf_counter() - received) * 1000, line, SOURCE_ID)
        fields = {name: getattr(decision, name) for name in DecisionOut.model_fields if name != "cached"}
        return DecisionOut(**fields, cached=outcome.cached)

    async def _sample(self, line: str, request: Request, spool: Path) -> Sample:
        """The upload as a :class:`Sample` (:func:`connectors.uploads.upload_sample`); :class:`InputError` naming the
        item for a part the line does not take, a part over its limit, a bad item id."""
        async with request.form(max_files=MAX_FILES) as form:
            item_id = form.get(ITEM_ID_FIELD) or f"http-{uuid.uuid4().hex[:16]}"
            if not isinstance(item_id, str):
                raise InputError("?", f"{ITEM_ID_FIELD} is a file; it must be a plain form field")
            parts: dict[str, list[File | str]] = {}
            for name in form:
                if name == ITEM_ID_FIELD:
                    continue
                if name not in self.payloads[line]:
                    raise InputError(item_id, f"unexpected part {name!r}: the {line} line takes "
                                              f"{', '.join(self.payloads[line])}")
                parts[name] = await _read_part(item_id, name, form.getlist(name))
        return await asyncio.to_thread(upload_sample, item_id, parts, spool)

    async def lines(self) -> list[dict[str, Any]]:
        """Each served line: its route, the parts it takes, its model and replica counters."""
        out = []
        for line, handle in self.models.items():
            info = await handle.describe.remote()
            out.append({**info, "route": decide_route(line),
                        "payloads": {name: PARTS[name].description for name in info["payloads"]}})
        return out

    async def healthz(self) -> dict[str, Any]:
        """``ok`` once every line's model answers, with each line's model version."""
        versions = {line: (await handle.describe.remote())["model_version"] for line, handle in self.models.items()}
        return {"status": "ok", "model_versions": versions}


def decide_route(line: str) -> str:
    return f"/v1/{line}/decide"


def http_api(payloads: Mapping[str, list[str]], decide: Callable[[str, Request], Awaitable[Any]],
             lines: Callable[[], Awaitable[Any]], healthz: Callable[[], Awaitable[Any]]) -> FastAPI:
    """The FastAPI app: ``POST /v1/<line>/decide`` per line (multipart, the line's ``payloads``), ``GET /v1/lines``,
    ``GET /healthz``. The upload is read by ``decide`` itself (so a bad part is refused naming the item); its
    OpenAPI request body is written here from :data:`connectors.uploads.PARTS`."""
    app = FastAPI(title="fusionline", version="1",
                  description="Multimodal decisions on industrial and clinical lines: upload an item's payloads, "
                              "get the line's decision. Decision support, not a diagnosis, on the clinical lines.")
    for line, names in payloads.items():
        app.add_api_route(
            decide_route(line), _line_endpoint(decide, line), methods=["POST"], response_model=DecisionOut,
            summary=f"decide one item of the {line} line", name=f"decide_{line}",
            description=f"Multipart upload of one item: {', '.join(names)} (each optional; the line says which it "
                        "cannot do without), and an optional item_id.",
            responses={422: {"model": Refusal, "description": "the item cannot be decided: its id and the reason"}},
            openapi_extra={"requestBody": upload_schema(names)},
        )
    app.add_api_route("/v1/lines", lines, methods=["GET"], summary="the served lines, their parts and models")
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="ok once every line's model answers")
    return app


def _line_endpoint(decide: Callable[[str, Request], Awaitable[Any]], line: str) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        return await decide(line, request)

    return endpoint


def upload_schema(names: list[str]) -> dict[str, Any]:
    """The OpenAPI request body of an upload of parts ``names`` (:data:`connectors.uploads.PARTS`)."""
    binary = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        ITEM_ID_FIELD: {"type": "string", "maxLength": MAX_ITEM_ID_CHARS,
                        "description": "the caller's id for the item (default: a new http-<hex> id)"}}
    encoding = {}
    for name in names:
        part = PARTS[name]
        schema: dict[str, Any] = {"type": "string", "maxLength": part.max_bytes} if not part.is_file else (
            {"type": "array", "items": binary} if part.many else dict(binary))
        properties[name] = {**schema, "description": part.description}
        if part.is_file:
            encoding[name] = {"contentType": ", ".join(part.media_types)}
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties}, "encoding": encoding}}}


async def _read_part(item_id: str, name: str, values: list[UploadFile | str]) -> list[File | str]:
    """A form field's values, files read (each file's size checked first, from the parsed form)."""
    read: list[File | str] = []
    for value in values:
        if isinstance(value, UploadFile):
            if value.size is not None:
                check_size(item_id, name, value.size)
            read.append(File(value.filename or "", await value.read()))
        else:
            read.append(value)
    return read


def _refused(line: str, item: Quarantined) -> JSONResponse:
    log.warning("refused line=%s item=%s stage=%s reason=%r", line, item.item_id, item.stage, item.reason)
    return JSONResponse(status_code=422, content=Refusal(item_id=item.item_id, stage=item.stage,
                                                         reason=item.reason).model_dump())


def lines_app(models: Mapping[str, str | Path], serving: Serving = Serving()) -> Application:
    """The Serve application of the lines in ``models`` (line name -> model folder): one :class:`LineIngress` and
    per line ``serving.replicas`` :class:`LineModel` replicas. Needs a connected Ray (GPUs are counted)."""
    gpus = gpu_share(serving.replicas * len(models), serving.gpus_per_replica)
    handles = {
        line: LineModel.options(
            name=model_deployment(line), num_replicas=serving.replicas, max_ongoing_requests=MAX_UPLOADS_IN_FLIGHT,
            ray_actor_options={"num_cpus": 0 if gpus else 1, "num_gpus": gpus},
        ).bind(str(model_dir), line, serving)
        for line, model_dir in models.items()
    }
    return LineIngress.bind(handles)


def model_deployment(line: str) -> str:
    """The name of ``line``'s :class:`LineModel` deployment in the application."""
    return f"{line}-model"


def start_http(host: str, port: int) -> None:
    """Start Serve's HTTP proxy on ``host:port`` (before the first :func:`ray.serve.run`; Ray connected)."""
    serve.start(http_options={"host": host, "port": port})


def serve_line(line: str, model_dir: str | Path, host: str, port: int, serving: Serving,
               address: str | None = None) -> None:
    """``fusionline serve``: the line's application on ``host:port`` until Ctrl-C or SIGTERM, on the Ray cluster at
    ``address`` (None: a local one); then the application is deleted and Ray let go."""
    import signal

    import ray

    from pipelines.runtime import connect_ray

    connect_ray(address)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: as Ctrl-C
    try:
        start_http(host, port)
        serve.run(lines_app({line: model_dir}, serving), name=APP_NAME, route_prefix="/")
        print(f"{line} line on http://{host}:{port}{decide_route(line)} ({serving.replicas} {serving.runtime} "
              f"replicas, batches of up to {serving.max_batch}, {serving.batch_wait_s * 1000:g} ms wait); "
              f"API at http://{host}:{port}/docs  (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        ray.shutdown()
