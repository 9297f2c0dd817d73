"""Receiving bodies: minimum rate, receiving slots, bytes charged as they arrive, draining;
and how the app answers each case (through the ASGI interface, fake producer)."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from chute.logging import configure_logging
from fastapi.testclient import TestClient
from ingest_api.keys import digest
from ingest_api.receive import (
    BodyReceiver,
    BodyTooLargeError,
    BodyTooSlowError,
    BytesOverloadedError,
    ClientDisconnectedError,
    ReceiveLimits,
    Reservation,
    TooManyReceivingError,
    behind,
)

from tests.unit.test_ingest_app import (
    URL,
    FakeProducer,
    asgi_scope,
    event,
    make_app,
    metric,
    run_asgi,
)

LIMITS = ReceiveLimits(max_body_bytes=1000, max_drain_bytes=3000, grace_seconds=5,
                       min_rate_bytes=100, max_receiving=2, max_in_flight_bytes=1500)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A body as chunks; after the last one given, the client goes quiet (never sends)."""

    def __init__(self, chunks: list[bytes], more_after: bool = False) -> None:
        self.chunks = list(chunks)
        self.more_after = more_after
        self.pulled = 0

    async def receive(self) -> MutableMapping[str, Any]:
        if not self.chunks:
            await asyncio.Event().wait()  # quiet for ever
        self.pulled += 1
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk,
                "more_body": bool(self.chunks) or self.more_after}


def test_behind_the_minimum_rate() -> None:
    assert not behind(4.9, 0, grace=5, min_rate=100)  # within the grace period
    assert behind(5.1, 0, grace=5, min_rate=100)
    assert not behind(7.0, 200, grace=5, min_rate=100)  # 2 s past the grace: 200 needed
    assert behind(7.0, 199, grace=5, min_rate=100)


def test_a_complete_body_takes_no_slot_and_is_charged_what_it_holds() -> None:
    async def run() -> None:
        receiver = BodyReceiver(LIMITS)
        reservation = Reservation()
        body = await receiver.read(Client([b"x" * 400]).receive, None, reservation)
        assert body == b"x" * 400
        assert reservation.size == 400 and receiver.in_flight_bytes == 400
        assert receiver.receiving == 0
        receiver.release(reservation)
        assert receiver.in_flight_bytes == 0
    asyncio.run(run())


def test_a_body_falling_behind_is_cut_off_and_frees_its_slot() -> None:
    async def run() -> None:
        clock = Clock()
        receiver = BodyReceiver(LIMITS, clock)
        reservation = Reservation()
        read = asyncio.create_task(receiver.read(Client([b"x" * 50], more_after=True).receive,
                                                 None, reservation))
        await asyncio.sleep(0)
        assert receiver.receiving == 1 and reservation.size == 50  # charged as it arrived
        clock.now = 5.4  # 0.4 s past the grace: 40 bytes needed, 50 came
        receiver.sweep()
        await asyncio.sleep(0)
        assert not read.done()
        clock.now = 5.6  # 60 needed
        receiver.sweep()
        with pytest.raises(BodyTooSlowError, match="100 bytes/s"):
            await read
        assert receiver.receiving == 0
        assert asyncio.current_task() is not None
    asyncio.run(run())


def test_receiving_slots_are_limited() -> None:
    async def run() -> None:
        receiver = BodyReceiver(LIMITS)
        slow = [asyncio.create_task(receiver.read(
            Client([b"x"], more_after=True).receive, None, Reservation())) for _ in range(2)]
        await asyncio.sleep(0)
        assert receiver.receiving == 2
        with pytest.raises(TooManyReceivingError):
            await receiver.read(Client([b"x"], more_after=True).receive, None, Reservation())
        # a body that arrives whole still gets through
        assert await receiver.read(Client([b"ok"]).receive, None, Reservation()) == b"ok"
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        assert receiver.receiving == 0
    asyncio.run(run())


def test_over_the_limit_is_drained_up_to_the_bound() -> None:
    async def run() -> None:
        receiver = BodyReceiver(LIMITS)
        within = Client([b"x" * 600] * 4)  # 2400 bytes: over the limit, within the bound
        with pytest.raises(BodyTooLargeError) as info:
            await receiver.read(within.receive, None, Reservation())
        assert info.value.complete and within.pulled == 4
        beyond = Client([b"x" * 600] * 10)
        reservation = Reservation()
        with pytest.raises(BodyTooLargeError) as info:
            await receiver.read(beyond.receive, None, reservation)
        assert not info.value.complete and beyond.pulled == 6  # 3600 > 3000: stop
        assert reservation.size <= LIMITS.max_body_bytes  # nothing of the excess was kept
        assert not (await receiver.refuse(Client([]).receive, 3001)).complete
    asyncio.run(run())


def test_decoded_bytes_count_against_the_limit_and_budget() -> None:
    async def run() -> None:
        receiver = BodyReceiver(LIMITS)
        reservation = Reservation()
        packed = gzip.compress(b"y" * 900)
        assert await receiver.read(Client([packed]).receive, "gzip", reservation) == b"y" * 900
        assert reservation.size == 900
        with pytest.raises(BytesOverloadedError) as info:  # 900 + 900 > 1500 in flight
            await receiver.read(Client([packed]).receive, "gzip", Reservation())
        assert info.value.complete
        with pytest.raises(BodyTooLargeError):
            await receiver.read(Client([gzip.compress(b"y" * 1001)]).receive, "gzip",
                                Reservation())
    asyncio.run(run())


def test_a_client_going_away_is_its_own_error() -> None:
    async def run() -> None:
        async def gone() -> MutableMapping[str, Any]:
            return {"type": "http.disconnect"}
        with pytest.raises(ClientDisconnectedError):
            await BodyReceiver(LIMITS).read(gone, None, Reservation())
    asyncio.run(run())


# --- the app's answers ---------------------------------------------------------------------

def test_compressed_bodies_and_unsupported_encodings() -> None:
    producer = FakeProducer()
    with TestClient(make_app(producer)) as client:
        body = orjson.dumps([event(i) for i in range(3)])
        ok = client.post(URL, content=gzip.compress(body), headers={"content-encoding": "gzip"})
        assert ok.json() == {"accepted": 3}
        refused = client.post(URL, content=body, headers={"content-encoding": "br"})
        assert refused.status_code == 415
        bomb = client.post(URL, content=gzip.compress(b" " * 100_000),
                           headers={"content-encoding": "gzip"})
        assert bomb.status_code == 413  # decoded size over the 4 KiB limit
    assert len(producer.sent) == 3


def test_invalid_utf8_is_reported_where_it_is() -> None:
    with TestClient(make_app(FakeProducer())) as client:
        body = b'[{"id": "a", "user_id": "ok"},\n {"id": "b", "user_id": "\xff"}]'
        detail = client.post(URL, content=body).json()
    assert (detail["line"], detail["column"]) == (2, 26)
    assert detail["position"] == body.index(b"\xff")  # all ASCII before it: chars == bytes
    assert "UTF-8" in detail["error"]


def test_slash_docs_and_rate_limits() -> None:
    producer = FakeProducer()
    with TestClient(make_app(producer)) as client:
        response = client.post(URL + "/", content=orjson.dumps(event(1)))
        assert response.status_code == 200  # the same endpoint, not a bare 307
        assert client.get("/openapi.json").status_code == 200
    app = make_app(producer, ingest_api_keys=f"{digest('a')},{digest('b')}:1")
    with TestClient(app) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404
        body = orjson.dumps(event(2))
        assert client.post(URL, content=body).status_code == 401
        assert client.post(URL, content=body,
                           headers={"authorization": "Bearer a"}).status_code == 200
        codes = [client.post(URL, content=body, headers={"authorization": "Bearer b"})
                 for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 429, 429]
        assert codes[1].headers["retry-after"] == "1"
        assert metric(client, 'chute_ingest_requests_total{code="429",pipeline="events"}') >= 2
    public = make_app(producer, ingest_api_keys=digest("a"), ingest_public_docs=True)
    with TestClient(public) as client:
        assert client.get("/openapi.json").status_code == 200


def test_in_flight_slots_are_taken_only_by_complete_bodies() -> None:
    app = make_app(FakeProducer("hang"), ingest_max_in_flight_requests=1)
    service = app.state.service

    async def run() -> None:
        started = asyncio.Event()
        messages: list[dict[str, Any]] = []

        async def trickle() -> MutableMapping[str, Any]:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            messages.append(dict(message))

        scope = asgi_scope([(b"content-length", b"1000")])
        holder = asyncio.create_task(app(scope, trickle, send))
        await started.wait()
        assert service.in_flight == 0 and service.in_flight_bytes == 0
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    asyncio.run(run())


def test_disconnect_is_counted_as_499_not_500() -> None:
    app = make_app(FakeProducer())
    messages: list[dict[str, Any]] = []
    pending: list[MutableMapping[str, Any]] = [
        {"type": "http.request", "body": b'{"id"', "more_body": True},
        {"type": "http.disconnect"}]

    async def receive() -> MutableMapping[str, Any]:
        message: MutableMapping[str, Any] = pending.pop(0)
        return message

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(dict(message))

    scope = asgi_scope([(b"content-length", b"100")])
    before = _faults(app)
    codes = _codes()
    asyncio.run(app(scope, receive, send))
    assert _faults(app) == before + 1
    assert _codes()["499"] == codes["499"] + 1 and _codes()["500"] == codes["500"]


def _codes() -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {code: float(REGISTRY.get_sample_value(
        "chute_ingest_requests_total", {"pipeline": "events", "code": code}) or 0)
        for code in ("499", "500")}


def _faults(app: Any) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("chute_ingest_client_faults_total",
                                      {"kind": "disconnected"})
    return float(value or 0)


def test_library_lines_have_the_services_format(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    import structlog

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("uvicorn.error").level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure_logging("json", "info", service="ingest-api")
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("some.library").info("below warning: not shown")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("uvicorn.error").setLevel(saved[2])
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["event"] == "Started server process [42]"
    assert entry["service"] == "ingest-api" and entry["level"] == "info"
    assert entry["logger"] == "uvicorn.error" and "timestamp" in entry


def test_a_refusal_stays_the_answer_when_draining_fails() -> None:
    app = make_app(FakeProducer(), ingest_max_receiving_requests=1)
    service = app.state.service
    service.receiver.receiving = 1  # every receiving slot taken
    messages, pulled = run_asgi(app, [b"x" * 100] * 50, [(b"content-length", b"5000"),
                                                        (b"authorization", b"Bearer k")])
    assert messages[0]["status"] == 413  # over the 4 KiB limit, not a 500 or a 503
    assert (b"connection", b"close") in messages[0]["headers"] and pulled == 1
    # a refused body that came whole needs no slot to be drained
    messages, pulled = run_asgi(app, [b"x" * 5000], [(b"content-length", b"5000")])
    assert messages[0]["status"] == 413 and pulled == 1
    assert (b"connection", b"close") not in messages[0]["headers"]


def test_refusals_of_clients_without_a_key_hold_at_most_half_the_slots() -> None:
    app = make_app(FakeProducer(), ingest_max_receiving_requests=4,
                   ingest_api_keys=digest("k"))
    receiver = app.state.service.receiver
    receiver.receiving = 2  # half taken
    headers = [(b"content-length", b"200")]
    messages, _ = run_asgi(app, [b"x" * 100] * 2, headers)  # no key: 401, not drained
    assert messages[0]["status"] == 401
    assert (b"connection", b"close") in messages[0]["headers"]
    receiver.receiving = 1
    messages, _ = run_asgi(app, [b"x" * 100] * 2, headers)  # a slot is left for it
    assert messages[0]["status"] == 401
    assert (b"connection", b"close") not in messages[0]["headers"]
