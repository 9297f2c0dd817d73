"""Entry point: `python -m sync_worker`."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import structlog
from chute import clickhouse, kafka
from chute.logging import configure_logging
from chute.registry import DefinitionError, load_definitions
from chute.reload import DefinitionsWatcher, models_changed, reexec
from chute.runtime import tune_garbage_collector
from chute.settings import load_settings
from chute.startup_checks import check_servers, refused
from chute.typemap import UnsupportedTypeError

from sync_worker.cluster_checks import exactly_once_refusals, sharded_refusals
from sync_worker.http import serve
from sync_worker.pipeline_state import health as pipelines_health
from sync_worker.routes import MODEL_MISMATCH, build_routes
from sync_worker.settings import SyncSettings
from sync_worker.status_report import StatusReporter
from sync_worker.worker import SyncWorker
from sync_worker.writer import ClickHouseWriter

log = structlog.get_logger()


def _connect_clickhouse(settings: SyncSettings, deadline: float) -> Any:
    delay = 0.5
    while True:
        try:
            return clickhouse.connect_with_profile(settings)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("ClickHouse not reachable yet", error=str(exc), delay_s=delay)
            time.sleep(delay)
            delay = min(delay * 2, 5)


def main() -> int:
    settings = load_settings(SyncSettings)
    configure_logging(settings.log_format, settings.log_level, service="sync-worker",
                      worker=settings.sync_worker_id)
    try:
        defs = load_definitions(settings.schemas)
    except DefinitionError as exc:
        log.error("cannot load definitions", error=str(exc))
        return 2
    for problem in exactly_once_refusals(defs.synced_streams(), settings.clickhouse_cluster,
                                         settings.clickhouse_insert_quorum):
        refused("sync-worker", problem)  # exits with that one line
    check_servers(settings, "sync-worker")  # exits when a server refuses these settings
    deadline = time.monotonic() + 120
    client, profile = _connect_clickhouse(settings, deadline)
    for problem in sharded_refusals(defs.synced_streams(), settings.clickhouse_cluster,
                                    clickhouse.cluster_shards(client)):
        refused("sync-worker", problem)
    try:
        routes = build_routes(defs, profile, settings)
    except UnsupportedTypeError as exc:
        log.error("a model cannot be stored on this ClickHouse", error=str(exc),
                  clickhouse=profile.version_text)
        return 2
    tune_garbage_collector()
    if not routes:
        log.error("no stream has a destination table; nothing to sync", schemas=settings.schemas)
        return 2
    consumer = kafka.consumer(settings.kafka_bootstrap, kafka.ConsumerOptions(
        group_id=settings.sync_group, client_id=settings.sync_worker_id,
        session_timeout_ms=settings.sync_session_timeout_ms,
        heartbeat_interval_ms=settings.sync_session_timeout_ms // 4,
        max_poll_interval_ms=settings.sync_max_poll_interval_ms,
        # Prefetched records cost the client several times their bytes in bookkeeping (small
        # records: ~400 B each): the prefetch is bounded (sync_prefetch_bytes).
        fetch_max_bytes=settings.sync_prefetch_bytes,
        max_partition_fetch_bytes=settings.sync_prefetch_bytes),
        security=settings.kafka_security())
    producer = kafka.producer(settings.kafka_bootstrap, kafka.ProducerOptions(
        client_id=f"{settings.sync_worker_id}-dlq", linger_ms=20),
        security=settings.kafka_security())
    # topic ids for exactly-once watermarks
    admin = kafka.admin(settings.kafka_bootstrap, security=settings.kafka_security())
    worker = SyncWorker(settings, consumer, producer,
                        ClickHouseWriter(client, settings.clickhouse_database), routes,
                        topic_ids=admin.topic_ids)

    def health() -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        alive = now - worker.last_loop < 60
        flowing, details = pipelines_health(worker.pipeline_states(), worker.clock(),
                                            settings.sync_health_paused_seconds)
        if not alive:
            details["problems"].insert(0, "the sync loop has not run for 60 s")
        ok = alive and flowing
        return ok, {
            "status": "ok" if ok else ("stuck" if not alive else "degraded"),
            "worker": settings.sync_worker_id,
            "paused": worker.paused,
            **details,
            # The worker's own record (a copy, atomic): consumer calls from this thread would
            # wait for the poll in progress on the main thread.
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in frozenset(worker.assigned)),
            "clickhouse": profile.version_text,
        }

    serve(settings.sync_host, settings.sync_port, health)
    StatusReporter(lambda: clickhouse.connect(settings, profile), settings.clickhouse_database,
                   settings.sync_worker_id, worker.pipeline_states, worker.clock,
                   settings.sync_status_interval_seconds, settings.clickhouse_cluster).start()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received", signal=signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("sync worker started", tables=sorted(r.table for r in routes.values()),
             clickhouse=profile.version_text, port=settings.sync_port,
             kafka_client=settings.kafka_client)
    reload = threading.Event()
    if settings.reload_definitions:
        def restart() -> None:  # the SIGTERM path: flush, commit, leave the group; re-exec
            reload.set()
            worker.request_stop()

        def held_for_a_model() -> bool:
            return any(s.reason == MODEL_MISMATCH for s in worker.pipeline_states().values())

        def on_change(old: dict[str, str], new: dict[str, str]) -> None:
            if not models_changed(old, new):
                restart()  # pipelines added or removed, or no model changed
                return
            # A model changed. Records of the old one may still come (from an ingest API not
            # yet on the new definitions); a worker with the new model would hold on them. So
            # keep this one until records of the new model arrive: they hold its pipeline.
            log.info("definitions changed: restarting once records of the new model arrive")
            while not worker.stopping:
                if held_for_a_model():
                    restart()
                    return
                time.sleep(settings.reload_interval_seconds)

        DefinitionsWatcher(settings.schemas, defs, on_change, settings.reload_interval_seconds,
                           service="sync-worker").start()
    worker.run()
    if reload.is_set():
        reexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
