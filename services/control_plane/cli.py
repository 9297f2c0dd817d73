"""`chute` console command: plan, apply, serve, status, keys."""

from __future__ import annotations

import argparse
import sys
import threading

from chute.logging import configure_logging
from chute.registry import DefinitionError, Definitions, load_definitions
from chute.settings import load_settings
from chute.startup_checks import check_servers

from control_plane.settings import ControlPlaneSettings
from control_plane.status import StatusSettings, StatusSource, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chute", description="chute control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "show what apply would change (exit 1 on conflicts)"),
                       ("apply", "create or update topics and tables")):
        command = sub.add_parser(name, help=text)
        command.add_argument(
            "--allow-destructive", action="store_true",
            help="drop the columns of fields removed from a model, with their data "
                 "(fully_managed tables only)")
    sub.add_parser("serve", help="apply, then serve /health, /pipelines and /metrics")
    status = sub.add_parser(
        "status", help="per pipeline: partitions, consumer lag, rows/s in and out, rows, "
                       "dead letters")
    status.add_argument(
        "--watch", nargs="?", type=_positive_seconds, const=2.0, default=None, metavar="SECONDS",
        help="clear the screen and redraw every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--partitions", action="store_true",
                        help="also show each partition's end offset, committed offset and lag")
    status.add_argument("--group", help="the sync workers' consumer group "
                                        "(default: CHUTE_SYNC_GROUP or chute-sync)")
    keys = sub.add_parser("keys", help="make API keys for the ingest API")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("new", help="print a fresh random key and the digest to configure")
    keys_sub.add_parser("digest", help="print the digest of a key read from standard input")
    args = parser.parse_args(argv)
    if args.command == "keys":  # needs no settings, no servers
        return _keys(args.keys_command)

    settings_type = StatusSettings if args.command == "status" else ControlPlaneSettings
    settings = load_settings(settings_type)
    configure_logging(settings.log_format, settings.log_level, service="control-plane")
    try:
        defs = load_definitions(settings.schemas)
    except DefinitionError as exc:
        print(f"chute: {exc}", file=sys.stderr)
        return 2

    # A server that refuses these settings ends the command at once, with one line.
    check_servers(settings, "chute" if args.command != "serve" else "control-plane")
    if args.command == "serve":
        return _serve(settings, defs)
    if args.command == "status":
        assert isinstance(settings, StatusSettings)
        return _status(settings, defs, args)

    from control_plane.apply import Connections, apply_plan, compute_plan

    conn = Connections.open(settings)
    try:
        plan = compute_plan(conn, defs, settings.clickhouse_database, args.allow_destructive)
        print(f"ClickHouse {conn.profile.version_text}, database {settings.clickhouse_database}, "
              f"Kafka {settings.kafka_bootstrap}")
        print(plan.describe())
        if plan.conflicts:
            print("Nothing applied: resolve the conflicts (x) first." if args.command == "apply"
                  else "apply would change nothing until the conflicts (x) are resolved.")
            return 1
        if args.command == "apply" and not plan.empty:
            apply_plan(conn, plan, args.allow_destructive)
            print("Applied.")
    finally:
        conn.close()
    return 0


def _keys(command: str) -> int:
    from ingest_api.keys import digest, new_key

    if command == "new":
        key = new_key()
        print(f"key:    {key}\n"
              f"digest: {digest(key)}\n"
              "Give the key to the client (header 'Authorization: Bearer <key>'); it is shown "
              "only here.\nAdd the digest to CHUTE_INGEST_API_KEYS (comma-separated; append "
              "':<requests per second>' for a rate limit).")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("chute keys digest: no key on standard input", file=sys.stderr)
        return 2
    print(digest(key))
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the refresh interval must be more than 0 seconds")
    return value


def _status(settings: StatusSettings, defs: Definitions, args: argparse.Namespace) -> int:
    if args.group:
        settings = settings.model_copy(update={"sync_group": args.group})
    return run(StatusSource(settings, defs), sys.stdout, watch=args.watch,
               partitions=args.partitions)


def _serve(settings: ControlPlaneSettings, defs: object) -> int:
    import uvicorn
    from chute.registry import Definitions

    from control_plane.app import ControlState, apply_with_retry, create_app

    assert isinstance(defs, Definitions)
    state = ControlState()
    threading.Thread(target=apply_with_retry, args=(settings, defs, state), daemon=True).start()
    app = create_app(settings, defs, state)
    # log_config=None: uvicorn's lines go through chute's logging set-up, in its format.
    server = uvicorn.Server(uvicorn.Config(app, host=settings.control_host,
                                           port=settings.control_port, log_level="warning",
                                           access_log=False, log_config=None))
    reload = threading.Event()
    if settings.reload_definitions:
        from chute.reload import DefinitionsWatcher

        def restart(_old: dict[str, str], _new: dict[str, str]) -> None:
            # Stop serving, then re-execute: the new process plans and applies the changed
            # definitions at start, and /health reports a refused plan as it does at start.
            reload.set()
            server.should_exit = True
        DefinitionsWatcher(settings.schemas, defs, restart, settings.reload_interval_seconds,
                           service="control-plane").start()
    server.run()
    if reload.is_set():
        from chute.reload import reexec
        reexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
