"""structlog set-up: JSON lines in containers, readable console output locally.

Lines of libraries that log through the standard library (uvicorn's among them) are rendered
by the same processors, so a service writes one format only."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "console", level: str = "info", service: str = "",
                      **static: str) -> None:
    """`service` and `static` fields go on every line, from every thread (context variables
    would not reach kafka-python's IO thread or the insert thread)."""
    fields = {"service": service, **static} if service else dict(static)
    level_no = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    def add_static(_logger: object, _name: str,
                   event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_static,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Standard-library records: the same fields, plus the logger's name.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries' noise stays at warning; uvicorn's own lines (start, stop) at the service's
    # level.
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level_no)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # we log failures ourselves
