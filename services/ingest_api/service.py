"""Answering POST /ingest/<name>: validate -> Kafka (acks=all) -> 200 {"accepted": n}.

A request is answered 200 only after Kafka acknowledged every one of its records. Everything
else is a JSON error `{"error": "...", ...}`:

    400 malformed JSON (line, column, position), an empty body, or a body that is not valid
        data of its Content-Encoding
    401 API keys are configured and `Authorization: Bearer <key>` is missing or wrong
    404 unknown pipeline (lists the known ones)
    408 the body arrived too slowly (see ingest_api.receive)
    413 body over ingest_max_body_bytes as sent or as decompressed, or a record Kafka refuses
        as too large
    415 a Content-Encoding other than gzip, zstd or identity
    422 schema violations: {index, path, message} for each; nothing is produced
    429 + Retry-After: the key's rate limit is used up
    503 + Retry-After: the pipeline's table lacks a column of its model (ingest_api.gate); or
        Kafka did not acknowledge within ingest_ack_timeout_seconds or the
        producer failed; or too many requests/bytes in flight or bodies arriving (overload,
        never queued)

A request refused before its body was read (401, 404, 413, 415, 429) has its body read and
thrown away first, up to ingest_max_drain_bytes, so that clients which write the whole body
before reading still read the answer; an answer sent with a body left unread closes the
connection. A client that goes away before its body arrived is logged at info level and
counted (chute_ingest_client_faults_total{kind="disconnected"}, code 499), not an error.

The body is read and decoded by this module, not by FastAPI: a thread pool decodes, validates
and hands the records to the producer (which may block for metadata or buffer space); the event
loop only waits for the acknowledgements, collectively, through producer callbacks. Small
bodies are decoded on the event loop itself when the producer can refuse instead of blocking
(confluent-kafka): the hop to the pool and back cost more than the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from chute.kafka import RecordTooLarge
from chute.metrics import (
    INGEST_CLIENT_FAULTS,
    INGEST_IN_FLIGHT,
    INGEST_RECEIVING,
    INGEST_RECORDS,
    INGEST_REQUEST_SECONDS,
    INGEST_REQUESTS,
    init_ingest_client_faults,
    init_ingest_pipeline,
)
from chute.registry import Definitions
from chute.server import OLD_SERVER, ServerProfile
from fastapi import Request, Response

from ingest_api.body import BodyError, EncodedBatch, RecordCodec, SchemaError
from ingest_api.decompress import CorruptBodyError, UnsupportedEncodingError, encoding_of
from ingest_api.gate import ColumnGate
from ingest_api.keys import UNKNOWN_KEY, KeyRing
from ingest_api.produce import AckWaiter, KafkaSink, Producer
from ingest_api.receive import (
    BodyReceiver,
    BodyTooLargeError,
    BodyTooSlowError,
    BytesOverloadedError,
    ClientDisconnectedError,
    Reservation,
    TooManyReceivingError,
)
from ingest_api.record_limits import RecordTooLargeForTopic
from ingest_api.settings import IngestSettings

log = structlog.get_logger()

UNKNOWN_PIPELINE = "_unknown"  # metric label for requests to names that are not pipelines
CLIENT_GONE = "499"  # code label of requests whose client went away before its body arrived
# Bodies up to this size are decoded and sent on the event loop (tens of microseconds for a
# few records); larger ones in the pool, so that the loop keeps serving other connections.
INLINE_BODY_BYTES = 8 * 1024


def json_response(status: int, body: dict[str, Any],
                  headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


@dataclass(frozen=True)
class Pipeline:
    name: str
    topic: str
    codec: RecordCodec


class SuccessMetrics:
    """The series every acknowledged request of one pipeline updates, looked up once
    (`labels()` costs several microseconds a call)."""

    def __init__(self, name: str) -> None:
        self.accepted = INGEST_RECORDS.labels(name, "accepted")
        self.requests = INGEST_REQUESTS.labels(name, "200")
        self.seconds = INGEST_REQUEST_SECONDS.labels(name)


class Rejected(Exception):
    """Ends a request with an error answer; `records` and `result` feed the records metric.
    `close`: part of the body is still unread, so the connection must close after the answer.
    """

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                 records: int = 0, result: str = "rejected", close: bool = False) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.headers = headers
        self.records = records
        self.result = result
        self.close = close

    def response(self) -> Response:
        headers = self.headers
        if self.close:
            headers = {**(headers or {}), "Connection": "close"}
        return json_response(self.status, self.body, headers)


class IngestService:
    """State shared by all requests: pipelines, producer, in-flight accounting, API keys."""

    def __init__(self, settings: IngestSettings, definitions: Definitions,
                 producer: Producer, profile: ServerProfile = OLD_SERVER,
                 gate: ColumnGate | None = None,
                 limit_of: Callable[[str], int | None] | None = None) -> None:
        """`limit_of`: a topic's max.message.bytes (Admin.max_message_bytes): a request with
        a record larger than that is refused whole; Kafka's default limit without it."""
        self.settings = settings
        self.gate = gate
        self.pipelines = {
            name: Pipeline(name, api.destination.topic, RecordCodec(
                api.model, profile, api.destination.config.extra))
            for name, api in sorted(definitions.ingest_apis.items())
        }
        for name in self.pipelines:
            init_ingest_pipeline(name)
        self._success = {name: SuccessMetrics(name) for name in self.pipelines}
        self.sink = KafkaSink(producer, {p.topic: p.codec.model for p in self.pipelines.values()},
                              limit_of=limit_of)
        # Decoding and send() are CPU-bound under the GIL: one thread does it best (more
        # threads contend for the GIL and the accumulator locks). The first send to a topic
        # waits for its metadata; that wait happens in a separate pool so that it never
        # holds up the pipelines whose topics are known.
        self.executor = ThreadPoolExecutor(settings.ingest_worker_threads,
                                           thread_name_prefix="ingest")
        self.metadata_executor = ThreadPoolExecutor(4, thread_name_prefix="ingest-metadata")
        self.keys = KeyRing.from_entries(settings.api_key_entries, time.monotonic)
        self._retry_after = {"Retry-After": str(settings.ingest_retry_after_seconds)}
        self.receiver = BodyReceiver(settings.receive_limits())
        self.receiver.on_too_slow = INGEST_CLIENT_FAULTS.labels("body_too_slow").inc
        self.receiver.on_receiving = INGEST_RECEIVING.set
        init_ingest_client_faults()
        # Mutated on the event loop only: no locks.
        self.in_flight = 0

    @property
    def in_flight_bytes(self) -> int:
        return self.receiver.in_flight_bytes

    # --- checks ------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> Rejected | None:
        verdict = self.keys.check(request.headers.get("authorization", ""))
        if verdict.allowed:
            return None
        if verdict is UNKNOWN_KEY:
            return Rejected(401, {"error": "missing or invalid API key: send "
                                           "'Authorization: Bearer <key>'"},
                            {"WWW-Authenticate": 'Bearer realm="chute"'})
        return Rejected(429, {"error": "rate limit of this API key exceeded, retry later"},
                        {"Retry-After": str(verdict.retry_after)})

    def _overloaded(self, what: str, close: bool = False) -> Rejected:
        return Rejected(503, {"error": f"overloaded: too many {what}, retry later"},
                        self._retry_after, close=close)

    def _unavailable(self, message: str, records: int) -> Rejected:
        return Rejected(503, {"error": message}, self._retry_after, records, "failed")

    # --- the request -------------------------------------------------------------------------

    async def handle(self, request: Request, name: str) -> Response:
        pipeline = self.pipelines.get(name)
        label = name if pipeline is not None else UNKNOWN_PIPELINE
        started = time.perf_counter()
        status = 500
        try:
            accepted = await self._ingest(request, pipeline, name)
        except Rejected as rejected:
            status = rejected.status
            if rejected.records:
                INGEST_RECORDS.labels(label, rejected.result).inc(rejected.records)
            return rejected.response()
        except ClientDisconnectedError:
            status = int(CLIENT_GONE)
            INGEST_CLIENT_FAULTS.labels("disconnected").inc()
            log.info("client disconnected before its body arrived", pipeline=label)
            return json_response(400, {"error": "client disconnected"})  # nobody reads it
        except Exception:
            log.exception("ingest request failed", pipeline=label)
            return json_response(500, {"error": "internal error"})
        else:
            status = 200
            success = self._success[name]
            if accepted:
                success.accepted.inc(accepted)
            success.requests.inc()
            success.seconds.observe(time.perf_counter() - started)
            return json_response(200, {"accepted": accepted})
        finally:
            if status != 200:
                INGEST_REQUESTS.labels(label, str(status)).inc()
                INGEST_REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)

    async def _ingest(self, request: Request, pipeline: Pipeline | None, name: str) -> int:
        refused = self._check_key(request) if self.keys else None
        if refused is None and pipeline is None:
            refused = Rejected(404, {"error": f"unknown pipeline {name!r}",
                                     "pipelines": list(self.pipelines)})
        if refused is None and self.gate is not None:
            missing = self.gate.refusal(name)
            if missing is not None:
                refused = Rejected(503, {"error": missing}, self._retry_after)
        headers = request.headers
        encoding = None
        if refused is None:
            try:
                encoding = encoding_of(headers.get("content-encoding"))
                declared = self._declared_length(headers.get("content-length"))
            except Rejected as exc:
                refused = exc
            except UnsupportedEncodingError as exc:
                refused = Rejected(415, {"error": str(exc)})
            else:
                if declared is not None and declared > self.settings.ingest_max_body_bytes:
                    refused = self._too_large()
        if refused is not None:
            raise await self._unread(request, refused)
        assert pipeline is not None
        reservation = Reservation()
        try:
            body = await self._read_body(request, encoding, reservation)
            if self.in_flight >= self.settings.ingest_max_in_flight_requests:
                raise self._overloaded("requests in flight")
            self.in_flight += 1
            INGEST_IN_FLIGHT.inc()
            try:
                return await self._produce(pipeline, body, headers.get("content-type"))
            finally:
                self.in_flight -= 1
                INGEST_IN_FLIGHT.dec()
        finally:
            self.receiver.release(reservation)

    async def _unread(self, request: Request, refused: Rejected) -> Rejected:
        """`refused`, after the body was read and thrown away (up to the drain bound), or
        marked to close the connection where it was not."""
        if request.headers.get("expect", "").lower() == "100-continue":
            refused.close = True  # the client waits for 100 Continue: it never sent the body
            return refused
        header = request.headers.get("content-length")
        declared = int(header) if header is not None and header.isdigit() else None
        if declared == 0:
            return refused
        if header is not None and declared is None:
            refused.close = True  # no way to tell where the body ends
            return refused
        # Clients without a valid key may hold at most half of the receiving slots while
        # their bodies are drained: they cannot crowd out the uploads of key holders.
        half = max(1, self.settings.ingest_max_receiving_requests // 2)
        slots = half if refused.status == 401 else None
        try:
            drained = await self.receiver.refuse(request.receive, declared, slots)
        except (BodyTooSlowError, TooManyReceivingError):
            refused.close = True  # the refusal still says best what is wrong
            return refused
        refused.close = not drained.complete
        return refused

    def _declared_length(self, header: str | None) -> int | None:
        if header is None:
            return None
        try:
            return int(header)
        except ValueError:
            raise Rejected(400, {"error": f"invalid Content-Length {header!r}"},
                           close=True) from None

    def _too_large(self, close: bool = False) -> Rejected:
        limit = self.settings.ingest_max_body_bytes
        return Rejected(413, {"error": f"body larger than {limit} bytes; split it into "
                                       "several requests", "max_body_bytes": limit},
                        close=close)

    async def _read_body(self, request: Request, encoding: str | None,
                         reservation: Reservation) -> bytes:
        try:
            return await self.receiver.read(request.receive, encoding, reservation)
        except BodyTooLargeError as exc:
            raise self._too_large(close=not exc.complete) from None
        except BodyTooSlowError as exc:
            log.info("client too slow, refused", reason="body_too_slow")
            raise Rejected(408, {"error": str(exc)}, close=True) from None
        except TooManyReceivingError:
            raise self._overloaded("request bodies still arriving", close=True) from None
        except BytesOverloadedError as exc:
            raise self._overloaded("bytes in flight", close=not exc.complete) from None
        except CorruptBodyError as exc:
            raise Rejected(400, {"error": str(exc)}, close=True) from None

    async def _produce(self, pipeline: Pipeline, body: bytes, content_type: str | None) -> int:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.ingest_ack_timeout_seconds
        waiter = AckWaiter(loop)

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.001)

        try:
            if (len(body) <= INLINE_BODY_BYTES and self.sink.sends_without_blocking
                    and self.sink.knows(pipeline.topic)):
                # A small body costs less to decode and send here than the hop to the pool
                # and back; a full producer queue is refused at once instead of waited on.
                batch = pipeline.codec.decode(body, content_type)
                self._send(pipeline, batch, waiter, deadline, block=False)
            elif self.sink.knows(pipeline.topic):  # a large body: one hop to the pool
                batch = await asyncio.wait_for(loop.run_in_executor(
                    self.executor, self._decode_and_send, pipeline, body, content_type,
                    waiter, deadline), remaining())
            else:
                # First request to this topic, or its partitions are due for a refresh:
                # decode (bad input is answered as such even when Kafka is down), then wait
                # for the topic's metadata in the other pool.
                batch = await asyncio.wait_for(loop.run_in_executor(
                    self.executor, pipeline.codec.decode, body, content_type), remaining())
                if len(batch):
                    await asyncio.wait_for(loop.run_in_executor(
                        self.metadata_executor, self.sink.partitions, pipeline.topic),
                        remaining())
                await asyncio.wait_for(loop.run_in_executor(
                    self.executor, self._send, pipeline, batch, waiter, deadline),
                    remaining())
        except BodyError as exc:
            records = exc.records if isinstance(exc, SchemaError) and exc.records else 0
            raise Rejected(exc.status, exc.detail(), records=records) from None
        except TimeoutError:
            raise self._timed_out(pipeline, None) from None
        except Exception as exc:
            raise self._kafka_failed(pipeline, exc, None) from None
        count = len(batch)
        if count == 0:
            return 0
        try:
            await asyncio.wait_for(waiter.future, remaining())
        except TimeoutError:
            raise self._timed_out(pipeline, count) from None
        except Exception as exc:
            raise self._kafka_failed(pipeline, exc, count) from None
        return count

    def _decode_and_send(self, pipeline: Pipeline, body: bytes, content_type: str | None,
                         waiter: AckWaiter, deadline: float) -> EncodedBatch:
        """Runs in the pool: decode, validate, encode, hand every record to the producer."""
        batch = pipeline.codec.decode(body, content_type)
        self._send(pipeline, batch, waiter, deadline)
        return batch

    def _send(self, pipeline: Pipeline, batch: EncodedBatch, waiter: AckWaiter,
              deadline: float, block: bool = True) -> None:
        if len(batch) and time.monotonic() >= deadline:
            raise TimeoutError  # the request was already answered 503: send nothing
        self.sink.send(pipeline.topic, batch, waiter, block)

    def _timed_out(self, pipeline: Pipeline, count: int | None) -> Rejected:
        timeout = self.settings.ingest_ack_timeout_seconds
        log.warning("kafka did not acknowledge in time", pipeline=pipeline.name,
                    topic=pipeline.topic, records=count, timeout_seconds=timeout)
        return self._unavailable(
            f"Kafka did not acknowledge the records within {timeout:g} s; retry later "
            "(records of this request may have been stored: retrying is at-least-once)",
            count or 0)

    def _kafka_failed(self, pipeline: Pipeline, exc: BaseException,
                      count: int | None) -> Rejected:
        kind = type(exc).__name__
        log.warning("kafka produce failed", pipeline=pipeline.name, topic=pipeline.topic,
                    records=count, error=f"{kind}: {exc}")
        if isinstance(exc, RecordTooLargeForTopic):
            return Rejected(413, {"error": f"{exc}; send smaller records", "index": exc.index,
                                  "max_message_bytes": exc.limit}, records=count or 0)
        if isinstance(exc, RecordTooLarge):  # the broker's answer: others may be stored
            return Rejected(413, {"error": f"a record is too large for Kafka ({exc}); send "
                                           "smaller records (records of this request may "
                                           "have been stored)"}, records=count or 0)
        return self._unavailable(f"Kafka did not accept the records ({kind}: {exc}); "
                                 "retry later", count or 0)
