"""The control-plane service: applies definitions at start, then serves health and status."""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from chute import clickhouse
from chute.metrics import CONTROL_TABLE_ROWS
from chute.registry import Definitions
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane.apply import Connections, PlanRefused, apply_plan, compute_plan
from control_plane.settings import ControlPlaneSettings

log = structlog.get_logger()


class ControlState:
    def __init__(self) -> None:
        self.applied = threading.Event()
        self.failed: str | None = None


def apply_with_retry(settings: ControlPlaneSettings, defs: Definitions,
                     state: ControlState) -> None:
    deadline = time.monotonic() + settings.apply_deadline_seconds
    delay = 0.5
    while True:
        try:
            conn = Connections.open(settings)
            try:
                plan = compute_plan(conn, defs, settings.clickhouse_database)
                log.info("plan", changes=len(plan.actions), summary=plan.describe())
                apply_plan(conn, plan)
            finally:
                conn.close()
            state.applied.set()
            log.info("definitions applied", streams=len(defs.streams), tables=len(defs.tables))
            return
        except PlanRefused as exc:  # a person must decide: retrying would not help
            state.failed = str(exc)
            log.error("plan not applied", error=state.failed)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                state.failed = f"{type(exc).__name__}: {exc}"
                log.error("apply failed, giving up", error=state.failed)
                return
            log.warning("apply failed, retrying", error=str(exc), delay=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def pipeline_status(settings: ControlPlaneSettings, defs: Definitions) -> list[dict[str, Any]]:
    conn = Connections.open(settings)
    try:
        partitions = conn.admin.topic_partitions()
        result = []
        for stream in defs.streams.values():
            entry: dict[str, Any] = {
                "name": stream.name,
                "topic": stream.topic,
                "partitions": partitions.get(stream.topic),
                "delivery": stream.config.delivery,
                "ingest": stream.name in defs.ingest_apis,
                "table": None,
                "rows": None,
                "dead_letter_topic": stream.dead_letter.topic if stream.dead_letter else None,
            }
            if stream.destination is not None:
                rows = clickhouse.row_count(conn.ch, settings.clickhouse_database,
                                            stream.destination.name)
                CONTROL_TABLE_ROWS.labels(stream.destination.name).set(rows)
                entry["table"] = stream.destination.name
                entry["rows"] = rows
            result.append(entry)
        return result
    finally:
        conn.close()


def create_app(settings: ControlPlaneSettings, defs: Definitions,
               state: ControlState) -> FastAPI:
    app = FastAPI(title="chute control plane")

    @app.get("/health")
    def health() -> JSONResponse:
        if state.applied.is_set():
            return JSONResponse({"status": "ok"})
        status = "failed" if state.failed else "applying"
        return JSONResponse({"status": status, "error": state.failed}, status_code=503)

    @app.get("/pipelines")
    def pipelines() -> JSONResponse:
        return JSONResponse(pipeline_status(settings, defs))

    @app.get("/metrics")
    def metrics() -> Response:
        if state.applied.is_set():
            try:
                pipeline_status(settings, defs)  # refreshes chute_table_rows
            except Exception as exc:  # servers down: still serve the other metrics
                log.warning("table row counts unavailable", error=str(exc))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
