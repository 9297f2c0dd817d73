"""A field added to a model while records keep arriving: the services are brought to the new
definition in each order, by restarting them or by their own reload, and every acknowledged
record arrives with every value its model held (the new field's values, not defaults).

The accounting reads the topic back: each record's `chute-model` header says which model
validated it and its value what that model kept. A record of the new model inserted by a worker
with the old one would store the column's default instead of the value in Kafka.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
from chute.fingerprint import FINGERPRINT_HEADER

from tests.e2e.stack import EVENT_SCHEMA, Stack, event
from tests.support import KAFKA, ServiceProcess, free_port, wait_for

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]
FAST = {"max_batch_wait": 0.3, "partitions": 2}
NEW_FIELD = "    duration_ms: int = 0"
OFF = {"CHUTE_RELOAD_DEFINITIONS": "false"}
# Reload quickly: the definitions are polled and the columns re-checked twice a second.
ON = {"CHUTE_RELOAD_DEFINITIONS": "true", "CHUTE_RELOAD_INTERVAL_SECONDS": "0.5",
      "CHUTE_INGEST_COLUMN_CHECK_SECONDS": "0.5"}


@dataclass
class Sender:
    """Posts batches of records, each with a `duration_ms` of its own, until stopped; a batch
    answered anything but 200 (503 while the gate is closed, no connection while the API
    restarts) is sent again. Records a model without the field validated drop it (extra
    fields are ignored)."""

    url: str
    acked: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    sent: int = 0

    def batch(self, size: int = 10) -> list[dict[str, Any]]:
        first = self.sent
        self.sent += size
        return [event(i, duration_ms=i + 1) for i in range(first, first + size)]

    def post(self, records: list[dict[str, Any]]) -> None:
        body = orjson.dumps(records)
        while True:
            try:
                answer = httpx.post(self.url, content=body, timeout=30,
                                    headers={"Content-Type": "application/json"})
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                self.acked.extend(r["id"] for r in records)
                return
            code = answer.status_code if answer is not None else 0
            if code not in (0, 503):
                self.unexpected.append(f"{code}: {answer.text if answer else ''}")
            self.refused[code] = self.refused.get(code, 0) + 1
            self.stop.wait(0.1)  # the client's back-off (Retry-After is 1 s)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.post(self.batch())

    def start(self) -> Sender:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        self.stop.clear()

    def wait_acked(self, more: int, timeout: float = 60) -> None:
        goal = len(self.acked) + more
        wait_for(lambda: len(self.acked) >= goal, timeout, f"{goal} records acknowledged "
                 f"(have {len(self.acked)}, refused {self.refused}, {self.unexpected[:3]})")


def topic_records(topic: str) -> dict[str, tuple[bytes | None, dict[str, Any]]]:
    """{id: (model header, value)} of every record in `topic`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        found: dict[str, tuple[bytes | None, dict[str, Any]]] = {}
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    model = dict(record.headers or []).get(FINGERPRINT_HEADER)
                    value = orjson.loads(record.value)
                    found[value["id"]] = (model, value)
        return found
    finally:
        consumer.close()


class Rollout:
    """The stack of one test: its ingest API, sync worker and (with reload) control plane."""

    def __init__(self, stack: Stack, env: dict[str, str]) -> None:
        self.stack = stack
        self.env = env
        self.ingest = stack.start_ingest(**env)
        self.worker = stack.start_worker(True, **env)
        self.sender = Sender(stack.url)
        self.old_model: bytes | None = None

    def change_model(self) -> None:
        (self.stack.schema_dir / "pipeline.py").write_text(EVENT_SCHEMA.format(
            name=self.stack.name, stream=self.stack.stream, extra_fields=NEW_FIELD))

    def restart(self, service: ServiceProcess) -> None:
        # 0, or SIGTERM's own code: uvicorn re-raises the signal once it shut down cleanly
        assert service.terminate(60) in (0, -15), service.log_tail()
        service.start()

    def check(self) -> None:
        """Every acknowledged record is in the table once or more, each row with the value of
        the field the validating model kept; the new model's records hold their own values."""
        sender, stack = self.sender, self.stack
        sender.finish()
        final = sender.batch(20)  # every service has the new definition by now
        sender.post(final)
        acked = set(sender.acked)
        assert len(acked) == len(sender.acked)
        wait_for(lambda: len(self.stored()) >= len(acked), 90,
                 f"{len(acked)} ids in {stack.name} (have {len(self.stored())}); worker:\n"
                 f"{self.worker.log_tail()}")
        stored = self.stored()
        assert set(stored) == acked, sorted(set(stored) ^ acked)[:10]
        in_kafka = topic_records(stack.name)
        assert acked <= set(in_kafka)
        models = {model for model, _ in in_kafka.values()}
        assert len(models) == 2, models  # records of both models went through
        new_records = 0
        for record_id in acked:
            model, value = in_kafka[record_id]
            values = stored[record_id]
            assert values == {value.get("duration_ms", 0)}, (record_id, model, value, values)
            if "duration_ms" in value:
                new_records += 1
                assert value["duration_ms"] == int(record_id[1:]) + 1
        assert new_records > 0
        for record in final:
            assert stored[record["id"]] == {record["duration_ms"]}
        assert stack.count(table=f"{stack.name}_dlq") == 0
        assert sender.unexpected == []

    def stored(self) -> dict[str, set[int]]:
        """{id: the duration_ms values of its rows} (a set: at-least-once may repeat a row)."""
        try:
            rows = self.stack.ch.execute(f"SELECT id, duration_ms FROM `{self.stack.name}`")
        except Exception:  # the column is not there yet
            rows = [(i, 0) for (i,) in self.stack.ch.execute(
                f"SELECT id FROM `{self.stack.name}`")]
        result: dict[str, set[int]] = {}
        for record_id, value in rows:
            result.setdefault(record_id, set()).add(int(value))
        return result


def refusals_seen(sender: Sender) -> Callable[[], bool]:
    before = sender.refused.get(503, 0)
    return lambda: sender.refused.get(503, 0) > before


@pytest.mark.parametrize("order", ["apply-ingest-worker", "ingest-apply-worker",
                                   "worker-apply-ingest"])
def test_restarts_in_an_order_lose_no_value(make_stack: MakeStack, order: str) -> None:
    rollout = Rollout(make_stack(FAST), OFF)
    stack, sender = rollout.stack, rollout.sender
    sender.start()
    sender.wait_acked(50)
    rollout.change_model()
    applied = False
    try:
        for step in order.split("-"):
            if step == "apply":
                stack.apply()
                applied = True
            elif step == "ingest":
                rollout.restart(rollout.ingest)
                if not applied:  # the table lacks the column: 503 until `chute apply`
                    wait_for(refusals_seen(sender), 30, "503 from the new ingest API")
                    assert "duration_ms" in rollout.ingest.log_text()
                    continue
            else:
                rollout.restart(rollout.worker)
            sender.wait_acked(30)
        rollout.check()
    finally:
        sender.stop.set()


def restarted(service: ServiceProcess) -> bool:
    return "restarting with the new definitions" in service.log_text()


def start_control_plane(stack: Stack, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    return ServiceProcess("control_plane", stack.env(CHUTE_CONTROL_PORT=str(port), **env),
                          port, stack.log_dir / "control.log", extra_args=["serve"]).start()


def test_every_service_reloads_by_itself(make_stack: MakeStack) -> None:
    stack = make_stack(FAST)
    control = start_control_plane(stack, ON)
    rollout = Rollout(stack, ON)
    sender = rollout.sender.start()
    try:
        sender.wait_acked(50)
        rollout.change_model()
        # Whichever notices first: the API stays shut until the column exists, the worker
        # waits for records of the new model.
        wait_for(lambda: any("duration_ms" in value for _, value in topic_records(
            stack.name).values()), 60, "records of the new model in Kafka")
        sender.wait_acked(30)
        for service in (control, rollout.ingest, rollout.worker):
            # The worker restarts once it has met a record of the new model (the next poll
            # of its watcher): wait for it, do not assume it already happened.
            wait_for(partial(restarted, service), 30,
                     f"{service.module} to restart with the new definitions")
        assert "old_fingerprints" in rollout.worker.log_text()
        rollout.check()
    finally:
        sender.stop.set()
        control.kill()


def test_ingest_reloads_first_and_waits_for_apply(make_stack: MakeStack) -> None:
    """The control plane is not running: the API reloads and answers 503 until `chute apply`;
    the worker reloads once records of the new model reach it."""
    rollout = Rollout(make_stack(FAST), ON)
    stack, sender = rollout.stack, rollout.sender
    sender.start()
    try:
        sender.wait_acked(50)
        rollout.change_model()
        wait_for(refusals_seen(sender), 30, "503 from the reloaded ingest API")
        assert "restarting with the new definitions" not in rollout.worker.log_text()
        stack.apply()
        sender.wait_acked(30)
        wait_for(lambda: "restarting with the new definitions" in rollout.worker.log_text(),
                 30, "the worker to reload")
        rollout.check()
    finally:
        sender.stop.set()


def test_with_reload_off_the_api_keeps_its_definitions(make_stack: MakeStack) -> None:
    """CHUTE_RELOAD_DEFINITIONS=false: a changed model is not picked up. Beside it, an API
    with reload on (same poll interval) shows the change was there to see: once that one
    restarted, the other has not noticed anything and still serves the old model."""
    stack = make_stack(FAST)
    quick = {"CHUTE_RELOAD_INTERVAL_SECONDS": "0.5"}
    kept = stack.start_ingest(**OFF, **quick)
    port = free_port()
    witness = ServiceProcess("ingest_api", stack.env(CHUTE_INGEST_PORT=str(port), **ON),
                             port, stack.log_dir / "ingest-witness.log").start()
    try:
        (stack.schema_dir / "pipeline.py").write_text(EVENT_SCHEMA.format(
            name=stack.name, stream=stack.stream, extra_fields=NEW_FIELD))
        wait_for(partial(restarted, witness), 30, "the API with reload on to restart")
        assert "definitions changed" not in kept.log_text()
        assert kept.proc is not None and kept.proc.poll() is None
        # Still the old model: the new field is dropped as unknown, not stored.
        answer = httpx.post(stack.url, content=orjson.dumps(event(1, duration_ms=7)),
                            timeout=30)
        assert answer.status_code == 200, answer.text
        [(_, value)] = [v for k, v in topic_records(stack.name).items() if k == "e1"]
        assert "duration_ms" not in value
    finally:
        witness.kill()
