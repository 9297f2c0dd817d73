"""chute's benchmark (`scripts/bench`): the yardsticks of DESIGN.md section 8, measured side by
side on one machine and printed as one table (and written as JSON).

    sync      rows/s from a pre-filled topic into ClickHouse: chute's sync worker (1 and 2
              processes) versus ClickHouse's own Kafka table engine + materialized view
    ingest    records/s acknowledged by the ingest API for 1- and 1,000-record requests, next
              to producing the same records straight to Kafka (kcat/librdkafka, and chute's own
              producer in-process)
    latency   POST acknowledged -> row visible, p50/p99, at a steady offered rate
    memory    peak RSS of the services during the above; bytes per buffered row of the worker

Everything runs against the Kafka and ClickHouse named by the usual CHUTE_* variables, on
loopback only, with uniquely named topics, tables and consumer groups that are dropped at the
end. Modules: `cli` (flags, orchestration), `context` (what the sections share), `infra`
(admin access to the servers, clean-up, py-spy, kcat), `records`, one module per section,
`report` (table and JSON), `progress`. Service processes, RSS sampling, offsets, percentiles and
the HTTP load client come from the test kit (testkit/), the same the tests use.
"""
