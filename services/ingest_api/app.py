"""The ingest API: POST /ingest/<name> -> validate -> Kafka (acks=all) -> 200 {"accepted": n}.

A request is answered 200 only after Kafka acknowledged every one of its records. Everything
else is a JSON error `{"error": "...", ...}`:

    400 malformed JSON (line, column, position) or an empty body
    401 API keys are configured and `Authorization: Bearer <key>` is missing or wrong
    404 unknown pipeline (lists the known ones)
    413 body over ingest_max_body_bytes (from Content-Length, or while reading the stream), or a
        record Kafka refuses as too large
    422 schema violations: {index, path, message} for each; nothing is produced
    503 + Retry-After: Kafka did not acknowledge within ingest_ack_timeout_seconds or the
        producer failed; or too many requests/bytes in flight (overload, never queued)

The body is read and decoded by this module, not by FastAPI: a thread pool decodes, validates
and hands the records to the producer (which may block for metadata or buffer space); the event
loop only waits for the acknowledgements, collectively, through producer callbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from chute.kafka import RecordTooLarge
from chute.metrics import (
    INGEST_IN_FLIGHT,
    INGEST_RECORDS,
    INGEST_REQUEST_SECONDS,
    INGEST_REQUESTS,
    init_ingest_pipeline,
)
from chute.registry import Definitions
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest_api.body import BodyError, EncodedBatch, RecordCodec, SchemaError
from ingest_api.produce import AckWaiter, KafkaSink, Producer
from ingest_api.settings import IngestSettings

log = structlog.get_logger()

UNKNOWN_PIPELINE = "_unknown"  # metric label for requests to names that are not pipelines


def json_response(status: int, body: dict[str, Any],
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


@dataclass(frozen=True)
class Pipeline:
    name: str
    topic: str
    codec: RecordCodec


class Rejected(Exception):
    """Ends a request with an error answer; `records` and `result` feed the records metric."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                 records: int = 0, result: str = "rejected") -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers
        self.records = records
        self.result = result

    def response(self) -> Response:
        return json_response(self.status, self.body, self.headers)


class _Reservation:
    """Bytes of one request counted against the in-flight byte budget."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0


class IngestService:
    """State shared by all requests: pipelines, producer, in-flight accounting, API keys."""

    def __init__(self, settings: IngestSettings, definitions: Definitions,
                 producer: Producer) -> None:
        self.settings = settings
        self.pipelines = {
            name: Pipeline(name, api.destination.topic, RecordCodec(api.model))
            for name, api in sorted(definitions.ingest_apis.items())
        }
        for name in self.pipelines:
            init_ingest_pipeline(name)
        self.sink = KafkaSink(producer, {p.topic: p.codec.model for p in self.pipelines.values()})
        # Decoding and send() are CPU-bound under the GIL: one thread does it best (more
        # threads contend for the GIL and the accumulator locks). The first send to a topic
        # waits for its metadata; that wait happens in a separate pool so that it never
        # holds up the pipelines whose topics are known.
        self.executor = ThreadPoolExecutor(settings.ingest_worker_threads,
                                           thread_name_prefix="ingest")
        self.metadata_executor = ThreadPoolExecutor(4, thread_name_prefix="ingest-metadata")
        self._digests = settings.api_key_digests
        self._retry_after = {"Retry-After": str(settings.ingest_retry_after_seconds)}
        # Mutated on the event loop only: no locks.
        self.in_flight = 0
        self.in_flight_bytes = 0

    # --- checks ------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if not self._digests:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.encode()).digest()
        match = False
        for expected in self._digests:  # compare with every digest: no early exit
            match |= hmac.compare_digest(digest, expected)
        return match

    def _overloaded(self, what: str) -> Rejected:
        return Rejected(503, {"error": f"overloaded: too many {what} in flight, retry later"},
                        self._retry_after)

    def _unavailable(self, message: str, records: int) -> Rejected:
        return Rejected(503, {"error": message}, self._retry_after, records, "failed")

    # --- the request -------------------------------------------------------------------------

    async def handle(self, request: Request, name: str) -> Response:
        pipeline = self.pipelines.get(name)
        label = name if pipeline is not None else UNKNOWN_PIPELINE
        started = time.perf_counter()
        status = 500
        try:
            accepted = await self._ingest(request, pipeline, name)
            status = 200
            if accepted:
                INGEST_RECORDS.labels(label, "accepted").inc(accepted)
            return json_response(200, {"accepted": accepted})
        except Rejected as rejected:
            status = rejected.status
            if rejected.records:
                INGEST_RECORDS.labels(label, rejected.result).inc(rejected.records)
            return rejected.response()
        except Exception:
            log.exception("ingest request failed", pipeline=label)
            return json_response(500, {"error": "internal error"})
        finally:
            INGEST_REQUESTS.labels(label, str(status)).inc()
            INGEST_REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)

    async def _ingest(self, request: Request, pipeline: Pipeline | None, name: str) -> int:
        if not self.authorized(request):
            raise Rejected(401, {"error": "missing or invalid API key: send "
                                          "'Authorization: Bearer <key>'"},
                           {"WWW-Authenticate": 'Bearer realm="chute"'})
        if pipeline is None:
            raise Rejected(404, {"error": f"unknown pipeline {name!r}",
                                 "pipelines": list(self.pipelines)})
        if self.in_flight >= self.settings.ingest_max_in_flight_requests:
            raise self._overloaded("requests")
        declared = self._declared_length(request)
        self.in_flight += 1
        INGEST_IN_FLIGHT.inc()
        reservation = _Reservation()
        try:
            if declared is not None:
                self._reserve(reservation, declared)
            body = await self._read_body(request, reservation)
            return await self._produce(pipeline, body, request.headers.get("content-type"))
        finally:
            self.in_flight -= 1
            self.in_flight_bytes -= reservation.size
            INGEST_IN_FLIGHT.dec()

    def _declared_length(self, request: Request) -> int | None:
        header = request.headers.get("content-length")
        if header is None:
            return None
        try:
            length = int(header)
        except ValueError:
            raise Rejected(400, {"error": f"invalid Content-Length {header!r}"}) from None
        if length > self.settings.ingest_max_body_bytes:
            raise self._too_large()
        return length

    def _too_large(self) -> Rejected:
        limit = self.settings.ingest_max_body_bytes
        return Rejected(413, {"error": f"body larger than {limit} bytes; split it into "
                                       "several requests", "max_body_bytes": limit})

    def _reserve(self, reservation: _Reservation, size: int) -> None:
        """Count size more bytes of this request against the in-flight byte budget."""
        if self.in_flight_bytes + size > self.settings.ingest_max_in_flight_bytes:
            raise self._overloaded("bytes")
        self.in_flight_bytes += size
        reservation.size += size

    async def _read_body(self, request: Request, reservation: _Reservation) -> bytes:
        """The whole body, refused with 413 as soon as it grows past the limit (a chunked
        body without Content-Length is never buffered beyond it)."""
        limit = self.settings.ingest_max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            if size > reservation.size:
                self._reserve(reservation, size - reservation.size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _produce(self, pipeline: Pipeline, body: bytes, content_type: str | None) -> int:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.ingest_ack_timeout_seconds
        waiter = AckWaiter(loop)

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.001)

        try:
            if self.sink.knows(pipeline.topic):  # the common case: one hop to the pool
                batch = await asyncio.wait_for(loop.run_in_executor(
                    self.executor, self._decode_and_send, pipeline, body, content_type,
                    waiter, deadline), remaining())
            else:
                # First request to this topic: decode (bad input is answered as such even
                # when Kafka is down), then wait for the topic's metadata in the other pool.
                batch = await asyncio.wait_for(loop.run_in_executor(
                    self.executor, pipeline.codec.decode, body, content_type), remaining())
                if len(batch):
                    await asyncio.wait_for(loop.run_in_executor(
                        self.metadata_executor, self.sink.partitions, pipeline.topic),
                        remaining())
                await asyncio.wait_for(loop.run_in_executor(
                    self.executor, self._send, pipeline, batch, waiter, deadline),
                    remaining())
        except BodyError as exc:
            records = exc.records if isinstance(exc, SchemaError) and exc.records else 0
            raise Rejected(exc.status, exc.detail(), records=records) from None
        except TimeoutError:
            raise self._timed_out(pipeline, None) from None
        except Exception as exc:
            raise self._kafka_failed(pipeline, exc, None) from None
        count = len(batch)
        if count == 0:
            return 0
        try:
            await asyncio.wait_for(waiter.future, remaining())
        except TimeoutError:
            raise self._timed_out(pipeline, count) from None
        except Exception as exc:
            raise self._kafka_failed(pipeline, exc, count) from None
        return count

    def _decode_and_send(self, pipeline: Pipeline, body: bytes, content_type: str | None,
                         waiter: AckWaiter, deadline: float) -> EncodedBatch:
        """Runs in the pool: decode, validate, encode, hand every record to the producer."""
        batch = pipeline.codec.decode(body, content_type)
        self._send(pipeline, batch, waiter, deadline)
        return batch

    def _send(self, pipeline: Pipeline, batch: EncodedBatch, waiter: AckWaiter,
              deadline: float) -> None:
        if len(batch) and time.monotonic() >= deadline:
            raise TimeoutError  # the request was already answered 503: send nothing
        self.sink.send(pipeline.topic, batch, waiter)

    def _timed_out(self, pipeline: Pipeline, count: int | None) -> Rejected:
        timeout = self.settings.ingest_ack_timeout_seconds
        log.warning("kafka did not acknowledge in time", pipeline=pipeline.name,
                    topic=pipeline.topic, records=count, timeout_seconds=timeout)
        return self._unavailable(
            f"Kafka did not acknowledge the records within {timeout:g} s; retry later "
            "(records of this request may have been stored: retrying is at-least-once)",
            count or 0)

    def _kafka_failed(self, pipeline: Pipeline, exc: BaseException,
                      count: int | None) -> Rejected:
        kind = type(exc).__name__
        log.warning("kafka produce failed", pipeline=pipeline.name, topic=pipeline.topic,
                    records=count, error=f"{kind}: {exc}")
        if isinstance(exc, RecordTooLarge):
            return Rejected(413, {"error": f"a record is too large for Kafka ({kind}); send "
                                           "smaller records"}, records=count or 0)
        return self._unavailable(f"Kafka did not accept the records ({kind}: {exc}); "
                                 "retry later", count or 0)


async def _probe(address: str, timeout: float) -> bool:
    """True when a TCP connection to host:port opens within timeout."""
    address = address.strip()
    if "://" in address:
        address = address.split("://", 1)[1]
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), timeout)
    except (OSError, ValueError, TimeoutError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


def _openapi_schemas(models: dict[str, type[BaseModel]]) -> tuple[dict[str, str],
                                                                  dict[str, Any]]:
    """Component schemas of the pipelines' models: ({pipeline: component name}, components)."""
    components: dict[str, Any] = {}
    names: dict[str, str] = {}
    for pipeline, model in models.items():
        for prefix in ("", f"{pipeline}__"):
            schema = model.model_json_schema(
                ref_template=f"#/components/schemas/{prefix}{{model}}")
            defs = {f"{prefix}{k}": v for k, v in schema.pop("$defs", {}).items()}
            defs[f"{prefix}{model.__name__}"] = schema
            if all(components.get(k, v) == v for k, v in defs.items()):
                components.update(defs)
                names[pipeline] = f"{prefix}{model.__name__}"
                break
    return names, components


def _request_body(component: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{component}"}
    return {
        "required": True,
        "description": "One record (a JSON object), an array of records, or NDJSON "
                       "(one record per line, Content-Type application/x-ndjson).",
        "content": {
            "application/json": {"schema": {"oneOf": [ref, {"type": "array", "items": ref}]}},
            "application/x-ndjson": {"schema": ref},
        },
    }


_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every record acknowledged by Kafka",
          "content": {"application/json": {"schema": {
              "type": "object", "properties": {"accepted": {"type": "integer"}}}}}},
    400: {"description": "Malformed JSON (with line, column, position) or empty body", **_ERROR},
    401: {"description": "Missing or invalid API key", **_ERROR},
    413: {"description": "Body or record too large", **_ERROR},
    422: {"description": "Schema violations: errors[] of {index, path, message}", **_ERROR},
    503: {"description": "Kafka unavailable or overloaded; see Retry-After", **_ERROR},
}


def create_app(settings: IngestSettings, definitions: Definitions, producer: Producer,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The ingest API over `producer`. `on_shutdown` runs (in a thread) when the server stops,
    after the last request was answered: e.g. closing the producer it owns."""
    service = IngestService(settings, definitions, producer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.executor.shutdown(wait=False, cancel_futures=True)
        service.metadata_executor.shutdown(wait=False, cancel_futures=True)
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="chute ingest API", version="0.1.0", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return json_response(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    components, schemas = _openapi_schemas(
        {name: definitions.ingest_apis[name].model for name in service.pipelines})

    def endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def ingest(request: Request) -> Response:
            return await service.handle(request, name)
        return ingest

    for name in service.pipelines:
        app.add_api_route(
            f"/ingest/{name}", endpoint(name), methods=["POST"], name=f"ingest_{name}",
            summary=f"Ingest records into pipeline {name}", tags=["ingest"],
            openapi_extra={"requestBody": _request_body(components[name])},
            responses=_RESPONSES)

    @app.post("/ingest/{name}", include_in_schema=False)
    async def ingest_unknown(request: Request, name: str) -> Response:
        return await service.handle(request, name)

    @app.get("/health")
    async def health() -> Response:
        addresses = [a for a in settings.kafka_bootstrap.split(",") if a.strip()]
        for address in addresses:
            if await _probe(address, 1.0):
                return json_response(200, {"status": "ok", "kafka": address.strip(),
                                           "pipelines": list(service.pipelines)})
        return json_response(503, {"error": "Kafka bootstrap unreachable",
                                   "kafka": settings.kafka_bootstrap})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description="POST records to /ingest/<pipeline>.")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
