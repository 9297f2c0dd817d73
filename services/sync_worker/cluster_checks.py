"""Combinations of delivery and ClickHouse cluster the sync worker refuses at start (pure):
one line each, naming the stream, the table and what to change."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from chute.pipeline import OlapTable, Stream


def exactly_once_refusals(streams: Iterable[Stream[Any]], default_cluster: str | None,
                          insert_quorum: int) -> list[str]:
    """Exactly-once keeps its offset watermark in the table and reads it back on whichever
    replica the worker is connected to. On a replicated table that is safe only when an
    insert is acknowledged by at least two replicas and read with sequential consistency
    (CHUTE_CLICKHOUSE_INSERT_QUORUM >= 2, see chute.clickhouse.quorum_settings): else the
    replica a worker fails over to may lack the last acknowledged part, the watermark is read
    too low, and those rows are inserted again."""
    problems = []
    for stream, table, cluster in _exactly_once_tables(streams, default_cluster):
        if cluster is not None and insert_quorum < 2:
            problems.append(
                f"stream {stream.name}: delivery='exactly_once' on table {table.name}, which is "
                f"replicated on cluster {cluster}, needs CHUTE_CLICKHOUSE_INSERT_QUORUM of 2 or "
                f"more (it is {insert_quorum}): without a quorum the replica the worker fails "
                "over to may lack the last acknowledged insert and rows would be inserted "
                "twice. Set it to the number of replicas, or use at_least_once")
    return problems


def sharded_refusals(streams: Iterable[Stream[Any]], default_cluster: str | None,
                     shards: Mapping[str, int]) -> list[str]:
    """On a cluster of several shards a table is written through its Distributed table, and
    one insert spanning shards is not atomic: after a crash some shards may hold their rows
    of the batch and others not, so the offset watermark (the highest offset in the table)
    would skip rows. Exactly-once is refused there. `shards`: per cluster, as the server has
    them (chute.clickhouse.cluster_shards)."""
    problems = []
    for stream, table, cluster in _exactly_once_tables(streams, default_cluster):
        count = shards.get(cluster, 1) if cluster is not None else 1
        if count > 1:
            problems.append(
                f"stream {stream.name}: delivery='exactly_once' on table {table.name} is "
                f"refused: cluster {cluster} has {count} shards, and an insert spanning shards "
                "is not atomic, so the offset watermark could skip rows after a crash. Use "
                "at_least_once, or a cluster with one shard (CHUTE_CLICKHOUSE_CLUSTER or the "
                "table's OlapConfig(cluster=...))")
    return problems


def _exactly_once_tables(streams: Iterable[Stream[Any]], default_cluster: str | None
                         ) -> Iterator[tuple[Stream[Any], OlapTable[Any], str | None]]:
    """Each exactly-once stream with its table and the table's cluster (None: one server)."""
    for stream in streams:
        table = stream.destination
        if table is not None and stream.exactly_once:
            yield stream, table, table.cluster(default_cluster)
