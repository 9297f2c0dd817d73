"""The ingest API's FastAPI app: `create_app` puts the ingest service (`ingest_api.service`,
which also states the request contract) behind its routes, with /health, /metrics and the
OpenAPI description (`ingest_api.openapi`). POST /ingest/<name> skips FastAPI's own request
handling (`IngestApp`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from chute.registry import Definitions
from chute.server import OLD_SERVER, ServerProfile
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ingest_api.gate import ColumnGate
from ingest_api.openapi import RESPONSES, model_schemas, request_body
from ingest_api.produce import LoopReporting, Producer
from ingest_api.replica_metrics import metrics_text
from ingest_api.service import IngestService, json_response
from ingest_api.settings import IngestSettings

INGEST_PREFIX = "/ingest/"


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


class IngestApp(FastAPI):
    """FastAPI, except that POST /ingest/<name> (and /ingest/<name>/) goes straight to the
    service: FastAPI's middlewares, routing and dependency solving cost more CPU than the
    rest of a 1-record request. The service answers every outcome of it itself, errors
    included. Everything else (health, metrics, docs, other methods, lifespan) is FastAPI's;
    the ingest routes stay declared there for the OpenAPI schema."""

    service: IngestService  # set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(INGEST_PREFIX):
                name = path[len(INGEST_PREFIX):]
                if name.endswith("/"):
                    name = name[:-1]
                if name and "/" not in name:
                    response = await self.service.handle(Request(scope, receive), name)
                    await response(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app(settings: IngestSettings, definitions: Definitions, producer: Producer,
               on_shutdown: Callable[[], None] | None = None,
               profile: ServerProfile = OLD_SERVER, gate: ColumnGate | None = None,
               limit_of: Callable[[str], int | None] | None = None) -> FastAPI:
    """The ingest API over `producer`. `on_shutdown` runs (in a thread) when the server stops,
    after the last request was answered: e.g. closing the producer it owns. `profile` is the
    ClickHouse server the tables live on: its column types decide which values are accepted.
    `gate`, when given, refuses a pipeline's records until its table has its columns.
    `limit_of`: a topic's max.message.bytes (see IngestService)."""
    service = IngestService(settings, definitions, producer, profile, gate, limit_of)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        detach = (producer.report_on(asyncio.get_running_loop())
                  if isinstance(producer, LoopReporting) else None)
        yield
        if detach is not None:
            detach()
        service.executor.shutdown(wait=False, cancel_futures=True)
        service.metadata_executor.shutdown(wait=False, cancel_futures=True)
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    # Docs and schema only where settings.docs_public says so (not by default when API keys
    # are configured: they list every pipeline and its fields). No redirects: POST
    # /ingest/<name>/ is served like /ingest/<name> instead of a 307 that drops the body.
    public = settings.docs_public
    app = IngestApp(title="chute ingest API", version="0.1.0", lifespan=lifespan,
                  openapi_url="/openapi.json" if public else None,
                  docs_url="/docs" if public else None,
                  redoc_url="/redoc" if public else None,
                  redirect_slashes=False)
    app.state.service = service
    app.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return json_response(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    components, schemas = model_schemas(
        {name: definitions.ingest_apis[name].model for name in service.pipelines})

    def endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def ingest(request: Request) -> Response:
            return await service.handle(request, name)
        return ingest

    for name in service.pipelines:
        app.add_api_route(
            f"/ingest/{name}", endpoint(name), methods=["POST"], name=f"ingest_{name}",
            summary=f"Ingest records into pipeline {name}", tags=["ingest"],
            description="Body: JSON or NDJSON, as it is or with Content-Encoding gzip or "
                        "zstd. See the README's request contract for limits and timeouts.",
            openapi_extra={"requestBody": request_body(components[name])},
            responses=RESPONSES)

    @app.post("/ingest/{name}", include_in_schema=False)
    @app.post("/ingest/{name}/", include_in_schema=False)
    async def ingest_by_name(request: Request, name: str) -> Response:
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
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description="POST records to /ingest/<pipeline>.")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
