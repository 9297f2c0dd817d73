"""The whole loop, `SyncWorker.run`, on the in-memory backend with a manual clock: subscribe,
assignment inside poll, batches by rows and by age, the SIGTERM path (flush, commit, leave)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import orjson
import pytest
from chute import IngestPipeline, Key
from chute.kafka import Record, TopicPartition
from chute.registry import Definitions
from chute.server import OLD_SERVER
from pydantic import BaseModel
from sync_worker.routes import build_routes
from sync_worker.settings import SyncSettings
from sync_worker.worker import SyncWorker

from testkit.memory import ManualClock, MemoryConsumer, MemoryProducer, MemoryWriter


class Click(BaseModel):
    id: Key[str]
    at: datetime


def record(offset: int) -> Record:
    return Record("clicks", 0, offset, 1_714_564_800_000, None,
                  orjson.dumps({"id": f"c{offset}", "at": "2024-05-01T12:00:00Z"}), ())


@pytest.mark.parametrize("thread", ["main", "other"])
def test_run_batches_by_rows_and_by_age_and_flushes_on_stop(thread: str) -> None:
    """Also when the loop runs on another thread than the interpreter's main one: the worker
    commits from whichever thread polls (the seam runs the callbacks there)."""
    settings = SyncSettings()
    pipeline = IngestPipeline[Click]("clicks", {"stream": {"max_batch_rows": 4,
                                                           "max_batch_wait": 1.0}})
    routes = build_routes(Definitions.from_resources([pipeline]), OLD_SERVER, settings)
    tp = TopicPartition("clicks", 0)
    consumer = MemoryConsumer([tp], committed={tp: 0})
    writer = MemoryWriter()
    producer = MemoryProducer(writer.log)
    clock = ManualClock()
    worker = SyncWorker(settings, consumer, producer, writer, routes,  # type: ignore[arg-type]
                        clock=clock, sleep=clock.sleep)
    script: list[Any] = [
        lambda: consumer.feed(tp, [record(o) for o in range(6)]),  # 4 by rows, 2 wait
        lambda: None,
        lambda: setattr(clock, "now", clock.now + 1.0),  # the 2 are 1 s old now
        lambda: consumer.feed(tp, [record(6)]),
        worker.request_stop,  # SIGTERM: the last record is flushed on the way out
    ]

    def poll(timeout: float, max_records: int | None = None) -> Any:
        if not script:
            raise AssertionError("the loop went on polling after the stop")
        script.pop(0)()
        return MemoryConsumer.poll(consumer, timeout)

    consumer.poll = poll  # type: ignore[method-assign]
    if thread == "main":
        worker.run()
    else:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                errors.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        runner.join(10)
        assert not runner.is_alive() and not errors, errors
    assert consumer.seeks == [(tp, 0)]  # assigned inside the first poll, at its commit
    assert [row["id"] for row in writer.tables["clicks"]] == [f"c{o}" for o in range(7)]
    assert writer.log == ["insert clicks 4", "insert clicks 2", "insert clicks 1"]
    assert consumer.commit_calls == [{tp: 4}, {tp: 6}, {tp: 7}]
    assert consumer.closed and producer.flushes == 1  # left the group, dead letters flushed
    assert clock.slept == []  # nothing waited: no retry was needed
