"""The sync worker refuses at start, with one line naming the stream, the table and the
setting, an exactly-once stream on a replicated table without an insert quorum of two, and
one on a cluster of several shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from chute import IngestPipeline, Key, OlapConfig, StreamConfig
from pydantic import BaseModel
from sync_worker.__main__ import main
from sync_worker.cluster_checks import exactly_once_refusals, sharded_refusals


class Row(BaseModel):
    id: Key[str]
    value: int


Delivery = Literal["at_least_once", "exactly_once"]


def streams(delivery: Delivery = "exactly_once", cluster: str | None = None) -> list[Any]:
    pipeline = IngestPipeline[Row]("orders", {
        "stream": StreamConfig(delivery=delivery),
        "table": OlapConfig(cluster=cluster)})
    assert pipeline.stream is not None
    return [pipeline.stream]


def test_exactly_once_on_a_replicated_table_needs_a_quorum_of_two() -> None:
    [line] = exactly_once_refusals(streams(), "chute", 0)
    assert line.startswith("stream orders: delivery='exactly_once' on table orders")
    assert "cluster chute" in line and "CHUTE_CLICKHOUSE_INSERT_QUORUM of 2 or more (it is 0)" \
        in line
    assert "\n" not in line
    assert exactly_once_refusals(streams(), "chute", 1)
    assert exactly_once_refusals(streams(), "chute", 2) == []
    assert exactly_once_refusals(streams(), "chute", 3) == []


def test_the_table_s_own_cluster_counts_and_an_empty_one_means_plain() -> None:
    assert exactly_once_refusals(streams(cluster="other"), None, 0)
    assert exactly_once_refusals(streams(cluster=""), "chute", 0) == []  # a plain table
    assert exactly_once_refusals(streams(), None, 0) == []  # no cluster at all


def test_at_least_once_on_a_replicated_table_needs_no_quorum() -> None:
    assert exactly_once_refusals(streams("at_least_once"), "chute", 0) == []


def test_exactly_once_on_several_shards_is_refused() -> None:
    [line] = sharded_refusals(streams(), "chute", {"chute": 2})
    assert line.startswith("stream orders: delivery='exactly_once' on table orders is refused: "
                           "cluster chute has 2 shards")
    assert "\n" not in line
    assert sharded_refusals(streams(), "chute", {"chute": 1}) == []
    assert sharded_refusals(streams(), "chute", {"other": 3}) == []
    assert sharded_refusals(streams(cluster=""), "chute", {"chute": 2}) == []
    assert sharded_refusals(streams("at_least_once"), "chute", {"chute": 2}) == []


SCHEMA = '''
from chute import IngestPipeline, Key
from pydantic import BaseModel

class Row(BaseModel):
    id: Key[str]

pipeline = IngestPipeline[Row]("orders", {"stream": {"delivery": "exactly_once"}})
'''


def test_the_worker_exits_at_start_with_that_line(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipeline.py").write_text(SCHEMA)
    monkeypatch.setenv("CHUTE_SCHEMAS", str(tmp_path))
    monkeypatch.setenv("CHUTE_CLICKHOUSE_CLUSTER", "chute")
    monkeypatch.setenv("CHUTE_CLICKHOUSE_INSERT_QUORUM", "0")
    # Unreachable servers: the refusal comes before any connection.
    monkeypatch.setenv("CHUTE_CLICKHOUSE_PORT", "1")
    monkeypatch.setenv("CHUTE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    with pytest.raises(SystemExit) as exited:
        main()
    message = str(exited.value.code)
    assert message.startswith("sync-worker: stream orders: delivery='exactly_once' on table "
                              "orders")
    assert "CHUTE_CLICKHOUSE_INSERT_QUORUM" in message and "\n" not in message
