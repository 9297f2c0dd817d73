"""Memory per buffered row of the sync worker, measured with tracemalloc on the worker's own
code: the same decoder (sync_worker.rows.RowDecoder) filling the same buffer
(sync_worker.buffer.TableBuffer) with one full batch of Event records, then the columns the
writer builds from it at flush time (ColumnBuilder.build), which exist next to the buffer
until the insert returns."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from chute.pipeline import StreamConfig
from chute.server import OLD_SERVER, ServerProfile
from chute.typemap import columns_for
from kafka import TopicPartition
from sync_worker.buffer import TableBuffer
from sync_worker.policy import BatchLimits
from sync_worker.rows import ColumnBuilder, RowDecoder

from bench.records import keyed_records
from schemas.events import Event


def buffered_row_bytes(rows: int, server: ServerProfile | None = None) -> dict[str, Any]:
    values = [v.encode() for _k, v in keyed_records(rows, "m")]
    cfg = StreamConfig()
    limits = BatchLimits(max(rows, cfg.max_batch_rows), 1 << 40, cfg.max_batch_wait)
    decoder = RowDecoder(Event)
    profile = server or OLD_SERVER
    builder = ColumnBuilder(columns_for(Event, profile), exactly_once=False)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        buffer = TableBuffer("bench", "bench", limits)
        tp = TopicPartition("bench", 0)
        for offset, value in enumerate(values):
            row = decoder.decode(value)
            buffer.note_offset(tp, offset, 0.0)
            buffer.add(row, value, 0, offset, 1_714_564_800_000 + offset, 0.0)  # type: ignore[arg-type]
        buffered, _ = tracemalloc.get_traced_memory()
        columns = builder.build(buffer.rows, buffer.partitions, buffer.offsets)
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
        "method": "tracemalloc around RowDecoder.decode + TableBuffer.add, then "
                  "ColumnBuilder.build (Python heap only)",
    }
