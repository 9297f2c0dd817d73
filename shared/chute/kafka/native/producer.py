"""The producer on chute's C extension (rdbatch.c): a batch of records goes to librdkafka in one
call and comes back as one report, without the interpreter lock per record.

Same configuration, same guarantees as chute.kafka.confluent's producer (acks=all,
idempotence, message.timeout.ms); only the path of records and reports differs. Finished
batches and librdkafka's log lines are handed on by a daemon thread, or by an asyncio event loop
(`report_on`) when it reads the producer's eventfd: then without a thread switch per report.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError

from chute.kafka.confluent.common import LOG, client_error
from chute.kafka.confluent.producer import librdkafka_producer_config
from chute.kafka.native import rdbatch
from chute.kafka.seam import (
    DeliveryCallback,
    Headers,
    KafkaClientError,
    KafkaTimeout,
    Producer,
    ProducerOptions,
)
from chute.kafka.security import PLAINTEXT, KafkaSecurity

# librdkafka logs with syslog levels
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
               4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
_UNKNOWN_TOPIC = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}
_SPACE_WAIT_SECONDS = 0.005  # a full queue is asked again this often while send() blocks
# librdkafka before 2.6.1 sends SCRAM's client nonce twice in its final message, which Kafka
# 4.x brokers refuse as invalid credentials (librdkafka #4895; Debian 12 ships 2.0.2).
SCRAM_FIXED_IN = (2, 6, 1)


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.0.2' -> (2, 0, 2); a suffix after the numbers ('2.6.1-RC1') is ignored."""
    numbers = []
    for part in version.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def unsupported(config: Mapping[str, Any], librdkafka_version: str) -> str | None:
    """Why the linked librdkafka should not serve `config`, or None."""
    mechanism = str(config.get("sasl.mechanism", "")).upper()
    if mechanism.startswith("SCRAM") and version_tuple(librdkafka_version) < SCRAM_FIXED_IN:
        return (f"librdkafka {librdkafka_version} cannot authenticate with {mechanism} to "
                "Kafka 4.x brokers (fixed in 2.6.1)")
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"a librdkafka setting that is not text: {value!r}")


def _error(args: tuple[Any, ...], context: str) -> KafkaClientError:
    code, _name, message = args
    return client_error(KafkaError(code, message), context)


class NativeProducer(Producer):
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        """ValueError/TypeError when librdkafka as linked cannot serve the configuration
        (a library built without a feature it asks for, or too old for it); KafkaClientError
        when no broker answers within bootstrap_timeout_ms."""
        config = librdkafka_producer_config(bootstrap, options, extra, security)
        reason = unsupported(config, rdbatch.librdkafka_version())
        if reason is not None:
            raise ValueError(reason)
        self._producer = rdbatch.Producer({k: _as_text(v) for k, v in config.items()})
        self._max_block = options.max_block_ms / 1000
        self._waiting: dict[int, tuple[DeliveryCallback, str]] = {}
        self._closed = threading.Event()
        self._reporter: threading.Thread | None = None
        self._reporter_stop = threading.Event()
        self._start_reporter()
        if options.bootstrap_timeout_ms > 0:
            try:
                self._producer.ping(options.bootstrap_timeout_ms / 1000)
            except rdbatch.Error as exc:
                self.close(0)
                raise _error(exc.args, f"connect to {bootstrap}") from None

    def _start_reporter(self) -> None:
        self._reporter_stop = stop = threading.Event()
        self._reporter = threading.Thread(target=self._report, args=(stop,),
                                          name="kafka-batch-reports", daemon=True)
        self._reporter.start()

    def _stop_reporter(self) -> None:
        self._reporter_stop.set()
        if self._reporter is not None:
            self._reporter.join(timeout=1)
            self._reporter = None

    def _report(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._hand_on(0.1)

    def report_on(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Hand reports on from `loop` (a reader on the producer's eventfd) instead of the
        report thread, so callbacks run on the loop's thread. Call on the loop's thread; the
        function returned (same thread) gives them back to a report thread."""
        self._stop_reporter()
        fd = self._producer.fileno()
        loop.add_reader(fd, self._hand_on, 0.0)

        def detach() -> None:
            loop.remove_reader(fd)
            if not self._closed.is_set():
                self._start_reporter()
        return detach

    def _hand_on(self, timeout: float) -> None:
        finished, logs = self._producer.wait(timeout)
        for batch_id, code, _name, message in finished:
            waiting = self._waiting.pop(batch_id, None)
            if waiting is None:  # sent without a callback, or given up (send raised)
                continue
            on_done, topic = waiting
            on_done(None if code == 0 else
                    client_error(KafkaError(code, message), f"produce to {topic}"))
        for level, facility, line in logs:
            LOG.log(_LOG_LEVELS.get(level, logging.INFO), "%s: %s", facility, line)

    def send_batch(self, topic: str, values: Sequence[bytes],
                   keys: Sequence[bytes | None], partitions: Sequence[int],
                   headers: Headers, on_done: DeliveryCallback,
                   block: bool = True) -> None:
        """Hands every record to librdkafka; `on_done` is called once, from the report thread:
        with None when every record is acknowledged, or with the first failure. At most one
        header; a partition of -1 lets librdkafka's partitioner choose.

        `block` False: a full local queue raises KafkaTimeout at once; True: waits up to
        max_block for space. Records handed over before an exception may still be delivered;
        `on_done` is then never called.
        """
        if len(headers) > 1:
            raise ValueError("the native producer sends at most one header per record")
        header_name, header_value = headers[0] if headers else (None, None)
        value_list = values if isinstance(values, list) else list(values)
        key_list = None if all(k is None for k in keys) else list(keys)
        partition_list = partitions if isinstance(partitions, list) else list(partitions)
        if len(value_list) == 0:
            on_done(None)
            return
        batch = self._producer.batch()
        self._waiting[batch.id] = (on_done, topic)
        try:
            self._hand_over(batch, topic, value_list, key_list, partition_list, header_name,
                            header_value, block)
        except BaseException:
            self._waiting.pop(batch.id, None)
            raise
        finally:
            batch.seal()

    def _hand_over(self, batch: rdbatch.Batch, topic: str, values: list[bytes],
                   keys: list[bytes | None] | None, partitions: list[int],
                   header_name: str | None, header_value: bytes | None, block: bool) -> None:
        deadline: float | None = None
        done = 0
        while True:
            try:
                done = self._producer.send(batch, topic, values, keys, partitions,
                                           header_name, header_value, done)
            except rdbatch.Error as exc:
                raise _error(exc.args, f"produce to {topic}") from None
            if done == len(values):
                return
            # librdkafka's queue is full: wait for deliveries to free space, up to max_block.
            if not block:
                raise KafkaTimeout(f"producer buffer full (topic {topic})")
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._max_block
            if now >= deadline:
                raise KafkaTimeout(
                    f"producer buffer full for {self._max_block:g} s (topic {topic})")
            time.sleep(_SPACE_WAIT_SECONDS)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        self.send_batch(topic, [value], [key], [-1 if partition is None else partition],
                        headers, on_delivery or _ignore)

    def partitions_for(self, topic: str) -> list[int]:
        try:
            found: list[int] = self._producer.partitions(topic, self._max_block)
        except rdbatch.Error as exc:
            if exc.args[0] in _UNKNOWN_TOPIC:
                raise LookupError(f"no partitions known for topic {topic!r}") from None
            raise _error(exc.args, f"metadata for {topic}") from None
        if not found:
            raise LookupError(f"no partitions known for topic {topic!r}")
        return sorted(found)

    def flush(self, timeout: float) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float) -> None:
        """Waits up to `timeout` for outstanding records; what is left fails (reported)."""
        if self._closed.is_set():
            return
        self._producer.flush(timeout)
        self._producer.close()
        self._closed.set()
        self._stop_reporter()
        self._hand_on(0)  # the failures of what close() purged


def _ignore(_error: KafkaClientError | None) -> None:
    pass
