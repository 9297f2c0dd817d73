"""chute's native runner: Kafka, ClickHouse and chute's services as local processes.

`scripts/dev` installs what is missing and runs `python -m dev_runner` with the project's
virtualenv:

    scripts/dev up [--workers N] [--prometheus] [--kafka-brokers N] [--clickhouse-replicas M]
                   [--clickhouse-shards S]
                                      start everything that is not already running and healthy
                                      (brokers or ClickHouse servers > 1: the cluster mode, see
                                      `cluster`)
    scripts/dev down                  stop everything, newest tier first
    scripts/dev status                one line per expected service; non-zero exit if one is down
    scripts/dev start|stop|restart <svc>   one service (stop --kill sends SIGKILL at once)
    scripts/dev logs <svc>            log paths and their last lines

Services: kafka, clickhouse, control-plane, ingest-api, sync-worker-N, and the optional
prometheus (Debian's /usr/bin/prometheus scraping the services; started by `up --prometheus` or
`start prometheus`, stopped by `down`). Everything the runner writes lives under the state
folder (env CHUTE_STATE, default <repo>/.chute):

    run/<svc>.pid     pid of the service; it leads its own session, so its process group is it
    run/workers       how many sync workers the last `up` started
    log/<svc>.log     the service's stdout and stderr (Kafka and ClickHouse keep more logs there)
    etc/              rendered Kafka, ClickHouse and Prometheus configuration
    data/kafka        Kafka's cluster id (cluster.id) and log.dirs (logs/)
    data/clickhouse   ClickHouse's data
    data/prometheus   Prometheus's time series

In the cluster mode Kafka is kafka-1..N, ClickHouse is zookeeper and clickhouse-1..S*M (each with
its own etc/, data/ and log/ folder; M replicas per shard, shard by shard); run/cluster records
the layout.

Modules: `settings` (ports and paths, from the environment), `services` (the service table),
`cluster` (the cluster mode's layout, ports and configuration),
`configs` (rendering the servers' configuration), `processes` (launching, pid files, /proc,
stopping process groups), `health` (readiness probes), `supervise` (the API below), `cli`.
Tests import this package and call `up`, `down`, `start_service`, `stop_service`,
`is_running`, `is_healthy` and `status`.
"""

from dev_runner.configs import render_prometheus_config
from dev_runner.settings import PORTS, ROOT, RunnerError, Settings
from dev_runner.supervise import (
    ServiceStatus,
    down,
    expected_services,
    is_healthy,
    is_running,
    log_paths,
    restart_service,
    start_service,
    status,
    stop_service,
    up,
)

__all__ = [
    "PORTS",
    "ROOT",
    "RunnerError",
    "ServiceStatus",
    "Settings",
    "down",
    "expected_services",
    "is_healthy",
    "is_running",
    "log_paths",
    "render_prometheus_config",
    "restart_service",
    "start_service",
    "status",
    "stop_service",
    "up",
]
