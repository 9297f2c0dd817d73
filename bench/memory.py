"""Memory per buffered row of the sync worker, measured with tracemalloc on the worker's own
code: the same decoder (sync_worker.rows.RowDecoder) and column builder filling the same
columnar buffer (sync_worker.buffer.TableBuffer) with one full batch of Event records, in runs
of one poll's size as the worker takes them; then what the insert adds on top (the columns
with the exactly-once positions, ColumnBuilder.with_positions), which exists next to the buffer
until the insert returns."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from chute.kafka import ConsumerOptions, TopicPartition
from chute.pipeline import StreamConfig
from chute.server import OLD_SERVER, ServerProfile
from chute.typemap import columns_for
from sync_worker.buffer import TableBuffer
from sync_worker.policy import BatchLimits
from sync_worker.rows import ColumnBuilder, RowDecoder

from bench.records import keyed_records
from schemas.events import Event

# Kafka's id of the topic the rows came from: one string shared by every row of a batch.
_TOPIC_ID = "00000000-0000-0000-0000-000000000001"


def buffered_row_bytes(rows: int, server: ServerProfile | None = None) -> dict[str, Any]:
    values = [v.encode() for _k, v in keyed_records(rows, "m")]
    cfg = StreamConfig()
    limits = BatchLimits(max(rows, cfg.max_batch_rows), 1 << 40, cfg.max_batch_wait)
    decoder = RowDecoder(Event)
    profile = server or OLD_SERVER
    builder = ColumnBuilder(columns_for(Event, profile), exactly_once=True)
    run = ConsumerOptions("bench").max_poll_records
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        buffer = TableBuffer("bench", "bench", limits, width=len(builder.columns))
        tp = TopicPartition("bench", 0)
        for start in range(0, rows, run):
            chunk = values[start:start + run]
            decoded = decoder.decode_all(chunk)
            assert decoded is not None
            offsets = list(range(start, start + len(chunk)))
            buffer.extend(builder.columns_of(decoded), chunk, 0, offsets,
                          [1_714_564_800_000 + o for o in offsets], 0.0)
            buffer.note_offset(tp, offsets[-1], 0.0)
            del chunk, decoded, offsets
        buffered, _ = tracemalloc.get_traced_memory()
        columns = builder.with_positions(buffer.columns, buffer.partitions, buffer.offsets,
                                         _TOPIC_ID)
        built, _ = tracemalloc.get_traced_memory()
        del columns
    finally:
        tracemalloc.stop()
    payload = sum(len(v) for v in values) / rows
    return {
        "rows": rows,
        "payload_bytes_per_row": round(payload, 1),
        "buffer_bytes_per_row": round((buffered - before) / rows, 1),
        "columns_bytes_per_row": round((built - buffered) / rows, 1),
        "batch_rows": cfg.max_batch_rows,
        "batch_buffer_mib": round((buffered - before) / rows * cfg.max_batch_rows / 2**20, 1),
        "method": "tracemalloc around RowDecoder.decode_all + ColumnBuilder.columns_of + "
                  "TableBuffer.extend, then ColumnBuilder.with_positions (Python heap only)",
    }
