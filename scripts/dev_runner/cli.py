"""`scripts/dev`'s command line (`python -m dev_runner`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dev_runner import supervise
from dev_runner.health import tail
from dev_runner.processes import say
from dev_runner.settings import RunnerError
from dev_runner.supervise import ServiceStatus


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def status_table(rows: Sequence[ServiceStatus]) -> str:
    notes = any(r.note for r in rows)
    headers = ["SERVICE", "PID", "STATE", "HEALTH", "PORT", *(["NOTE"] if notes else [])]
    body = [
        [
            r.name,
            str(r.pid) if r.pid is not None else "-",
            "running" if r.running else "stopped",
            "healthy" if r.healthy else "unhealthy",
            str(r.port),
            *([r.note] if notes else []),
        ]
        for r in rows
    ]
    return format_table(headers, body)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/dev", description="Run chute and its servers as local processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd_up = commands.add_parser("up", help="start everything that is not running")
    cmd_up.add_argument("--workers", type=int, default=1, help="sync workers (default 1)")
    cmd_up.add_argument(
        "--prometheus", action="store_true",
        help="also run Prometheus on 127.0.0.1:9090 (CHUTE_PROMETHEUS_PORT) scraping the services",
    )
    cmd_up.add_argument(
        "--secure", action="store_true",
        help="Kafka on SASL_SSL (SCRAM-SHA-512, OAUTHBEARER), on TLS with a required "
             "client certificate (CHUTE_KAFKA_MTLS_PORT) and on SASL_PLAINTEXT (PLAIN, "
             "SCRAM-SHA-256; CHUTE_KAFKA_SASL_PLAINTEXT_PORT), ClickHouse with a TLS native port "
             "(CHUTE_CLICKHOUSE_SECURE_PORT), certificates under the state folder; stays on; "
             "single broker and server only",
    )
    cmd_up.add_argument(
        "--kafka-brokers", type=int, default=None, metavar="N",
        help="N KRaft nodes kafka-1..N (default: as the last `up`; at first 1, the single "
             "node `kafka`)",
    )
    cmd_up.add_argument(
        "--clickhouse-replicas", type=int, default=None, metavar="M",
        help="M replicated ClickHouse servers clickhouse-1..M and ZooKeeper (default: as "
             "the last `up`; at first 1); with --clickhouse-shards, M per shard",
    )
    cmd_up.add_argument(
        "--clickhouse-shards", type=int, default=None, metavar="S",
        help="S shards of --clickhouse-replicas servers each; tables get a Distributed table "
             "in front (default: as the last `up`; at first 1)",
    )
    commands.add_parser("down", help="stop everything")
    commands.add_parser("status", help="show services; exit 1 if one is down or unhealthy")
    cmd_start = commands.add_parser("start", help="start one service")
    cmd_start.add_argument("service")
    cmd_stop = commands.add_parser("stop", help="stop one service")
    cmd_stop.add_argument("service")
    cmd_stop.add_argument("--kill", action="store_true", help="SIGKILL at once")
    cmd_restart = commands.add_parser("restart", help="stop then start one service")
    cmd_restart.add_argument("service")
    cmd_logs = commands.add_parser("logs", help="log paths and their last lines")
    cmd_logs.add_argument("service")
    cmd_logs.add_argument("-n", "--lines", type=int, default=40)
    cmd_logs.add_argument("--path", action="store_true", help="only print the log paths")
    return parser


def _cmd_up(args: argparse.Namespace) -> int:
    print(status_table(supervise.up(args.workers, prometheus=args.prometheus,
                                    secure_mode=args.secure,
                                    kafka_brokers=args.kafka_brokers,
                                    clickhouse_replicas=args.clickhouse_replicas,
                                    clickhouse_shards=args.clickhouse_shards)))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    supervise.down()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = supervise.status()
    print(status_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _cmd_start(args: argparse.Namespace) -> int:
    supervise.start_service(args.service)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    if not supervise.stop_service(args.service, kill=args.kill):
        say(f"{args.service}: not running")
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    supervise.restart_service(args.service)
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    for path in supervise.log_paths(args.service):
        if args.path:
            print(path)
            continue
        print(f"==> {path} <==")
        if not path.exists():
            print("(not written yet)")
        else:
            print(tail(path, args.lines) or "(empty)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "restart": _cmd_restart,
    "logs": _cmd_logs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RunnerError as exc:
        print(f"[chute] error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

