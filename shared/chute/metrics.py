"""Every Prometheus metric chute exports, in one place, each with what it means."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)
_ROWS_BUCKETS = (1, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 1_000_000)

# --- ingest-api -----------------------------------------------------------------------------
# HTTP requests to /ingest/<pipeline>, by pipeline and HTTP status code.
INGEST_REQUESTS = Counter(
    "chute_ingest_requests_total", "Ingest requests by pipeline and status code",
    ["pipeline", "code"])
# Records seen by the ingest API: result=accepted (acknowledged by Kafka), rejected (invalid),
# failed (Kafka did not acknowledge).
INGEST_RECORDS = Counter(
    "chute_ingest_records_total", "Records by pipeline and result", ["pipeline", "result"])
# Wall time of an ingest request, from body received to answer.
INGEST_REQUEST_SECONDS = Histogram(
    "chute_ingest_request_seconds", "Ingest request duration", ["pipeline"],
    buckets=_LATENCY_BUCKETS)
# Ingest requests being processed right now (bounded by the in-flight limit).
# Both gauges are summed over the processes of an ingest API that runs several.
INGEST_IN_FLIGHT = Gauge("chute_ingest_in_flight_requests", "Ingest requests in progress",
                         multiprocess_mode="livesum")
# Requests whose body is still arriving and holds a receiving slot (bounded by
# ingest_max_receiving_requests; bodies that arrive with their headers never take one).
INGEST_RECEIVING = Gauge(
    "chute_ingest_receiving_requests", "Ingest requests whose body is still arriving",
    multiprocess_mode="livesum")
# Clients the API gave up on or that gave up, by kind: disconnected (went away before its
# body arrived), body_too_slow (408), header_timeout (408), header_too_large (431).
INGEST_CLIENT_FAULTS = Counter(
    "chute_ingest_client_faults_total", "Client faults by kind", ["kind"])

# --- sync-worker ----------------------------------------------------------------------------
# Rows ClickHouse acknowledged, per table. Rows, not messages received.
SYNC_ROWS_INSERTED = Counter(
    "chute_sync_rows_inserted_total", "Rows inserted into ClickHouse", ["table"])
# Rows per insert.
SYNC_BATCH_ROWS = Histogram(
    "chute_sync_batch_rows", "Rows per batch insert", ["table"], buckets=_ROWS_BUCKETS)
# Approximate encoded bytes per insert (the size of the Kafka payloads in the batch).
SYNC_BATCH_BYTES = Histogram(
    "chute_sync_batch_bytes", "Payload bytes per batch insert", ["table"],
    buckets=(1e3, 1e4, 1e5, 1e6, 4e6, 16e6, 64e6, 256e6))
# Duration of the insert attempt that succeeded (bisection of rejected rows included; failed
# transient attempts, backoff, dead-letter produce and commit not included).
SYNC_INSERT_SECONDS = Histogram(
    "chute_sync_insert_seconds", "Batch insert duration", ["table"], buckets=_LATENCY_BUCKETS)
# Errors by table and kind: transient (retried), data (rows dead-lettered), decode (bad record).
SYNC_ERRORS = Counter("chute_sync_errors_total", "Sync errors by kind", ["table", "kind"])
# Records sent to the dead-letter queue, by table they were meant for.
SYNC_DLQ_RECORDS = Counter(
    "chute_sync_dlq_records_total", "Records sent to the dead-letter queue", ["table"])
# Lag per topic-partition owned by this worker: end offset - committed offset, i.e. records in
# Kafka not yet acknowledged by ClickHouse. Refreshed every 5 s by the owning worker; a revoked
# partition's series is removed. `chute status` reads the same figure from Kafka itself.
SYNC_CONSUMER_LAG = Gauge(
    "chute_sync_consumer_lag", "Messages not yet inserted", ["topic", "partition"])
# Kafka record timestamp -> row acknowledged by ClickHouse; up to 500 rows sampled per insert,
# so its _count is not a row count (use chute_sync_rows_inserted_total for that).
SYNC_END_TO_END_SECONDS = Histogram(
    "chute_sync_end_to_end_seconds", "Kafka timestamp to inserted", ["table"],
    buckets=_E2E_BUCKETS)
# Records held in memory waiting for a flush.
SYNC_BUFFERED_ROWS = Gauge("chute_sync_buffered_rows", "Rows buffered", ["table"])
# 1 while any pipeline is not flowing (its partitions paused: retrying, paused or failed).
SYNC_PAUSED = Gauge("chute_sync_paused", "1 while any pipeline is not flowing")
# Each pipeline's state in this worker: 1 for the state it is in, 0 for the others
# (flowing, retrying, paused, failed; see sync_worker.pipeline_state).
SYNC_PIPELINE_STATE = Gauge(
    "chute_sync_pipeline_state", "1 for the state a pipeline is in", ["pipeline", "state"])
# Offsets committed to Kafka, per topic.
SYNC_COMMITS = Counter("chute_sync_commits_total", "Offset commits", ["topic"])

# --- control-plane --------------------------------------------------------------------------
# Topic/table changes made by apply, by kind of action.
CONTROL_ACTIONS = Counter(
    "chute_control_actions_total", "Changes applied by the control plane", ["action"])
# Rows in each pipeline table (count()), refreshed on every scrape of the control plane.
CONTROL_TABLE_ROWS = Gauge("chute_table_rows", "Rows in a pipeline table", ["table"])


# Label values known in advance.
INGEST_RESULTS = ("accepted", "rejected", "failed")
INGEST_CLIENT_FAULT_KINDS = ("disconnected", "body_too_slow", "header_timeout",
                             "header_too_large")
SYNC_ERROR_KINDS = ("transient", "data", "decode", "schema", "unknown")


def init_ingest_pipeline(pipeline: str) -> None:
    """Creates a pipeline's ingest series at 0 when the service starts. A labelled series that
    first appears already holding its first increments hides them from rate() and increase()."""
    for result in INGEST_RESULTS:
        INGEST_RECORDS.labels(pipeline, result)
    INGEST_REQUEST_SECONDS.labels(pipeline)


def init_ingest_client_faults() -> None:
    """Creates the client-fault series at 0 (see init_ingest_pipeline)."""
    for kind in INGEST_CLIENT_FAULT_KINDS:
        INGEST_CLIENT_FAULTS.labels(kind)


def init_sync_table(table: str) -> None:
    """Creates a table's sync series at 0 when a worker starts (see init_ingest_pipeline)."""
    for metric in (SYNC_ROWS_INSERTED, SYNC_BATCH_ROWS, SYNC_BATCH_BYTES, SYNC_INSERT_SECONDS,
                   SYNC_DLQ_RECORDS, SYNC_END_TO_END_SECONDS, SYNC_BUFFERED_ROWS):
        metric.labels(table)
    for kind in SYNC_ERROR_KINDS:
        SYNC_ERRORS.labels(table, kind)


# --- not defined here -------------------------------------------------------------------------
# Series a dashboard may use besides chute's own: `up` is written by Prometheus for every
# target; the process_* series come from prometheus_client's default process collector, which
# every chute service exports on /metrics (Linux).
STANDARD_SERIES = (
    "up",  # 1 when the last scrape of the target succeeded
    "process_resident_memory_bytes",  # resident memory of the service process
    "process_cpu_seconds_total",  # CPU time of the service process
)
