"""The column gate: a pipeline's records are refused until its table has every column."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from chute import IngestPipeline, Key
from chute.registry import Definitions
from chute.server import OLD_SERVER
from fastapi.testclient import TestClient
from ingest_api.app import create_app
from ingest_api.gate import ColumnGate, GateRefresher, TableNeeds, table_needs
from pydantic import BaseModel

from tests.unit.test_ingest_app import FakeProducer, make_settings


class Visit(BaseModel):
    id: Key[str]
    page: str
    duration_ms: int = 0


NEEDS = {"visits": TableNeeds("visits", ("id", "page", "duration_ms"))}


def test_needs_are_the_columns_of_the_pipeline_table() -> None:
    defs = Definitions.from_resources([IngestPipeline[Visit]("visits", {})])
    assert table_needs(defs, OLD_SERVER) == NEEDS


def test_a_missing_column_is_named_with_what_creates_it() -> None:
    gate = ColumnGate(NEEDS)
    gate.update({"visits": {"id": "String", "page": "String"}})
    refusal = gate.refusal("visits")
    assert refusal is not None
    assert "duration_ms" in refusal and "`chute apply`" in refusal
    gate.update({"visits": {"id": "String", "page": "String", "duration_ms": "Int64"}})
    assert gate.refusal("visits") is None


def test_a_missing_table_and_an_unchecked_gate_refuse() -> None:
    gate = ColumnGate(NEEDS)
    assert gate.refusal("visits") is not None  # never checked: not known good
    gate.update({})
    refusal = gate.refusal("visits")
    assert refusal is not None and "does not exist" in refusal
    assert gate.refusal("no-table-pipeline") is None  # a pipeline without a table


def test_an_outage_keeps_the_last_answer() -> None:
    answers: list[Mapping[str, Mapping[str, str]] | Exception] = [
        {"visits": {"id": "String", "page": "String", "duration_ms": "Int64"}},
        ConnectionRefusedError("ClickHouse down"),
        {"visits": {"id": "String", "page": "String"}},
    ]

    def read() -> Mapping[str, Mapping[str, str]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    gate = ColumnGate(NEEDS)
    refresher = GateRefresher(gate, read, interval=60)
    assert refresher.refresh()
    assert gate.refusal("visits") is None
    assert not refresher.refresh()  # outage: still known good
    assert gate.refusal("visits") is None
    assert refresher.refresh()  # the column was dropped
    assert gate.refusal("visits") is not None


def test_the_api_answers_503_with_retry_after_and_produces_nothing() -> None:
    defs = Definitions.from_resources([IngestPipeline[Visit]("visits", {})])
    gate = ColumnGate(table_needs(defs, OLD_SERVER))
    gate.update({"visits": {"id": "String", "page": "String"}})
    producer = FakeProducer()
    body = orjson.dumps({"id": "v1", "page": "/", "duration_ms": 7})
    with TestClient(create_app(make_settings(), defs, producer, gate=gate)) as client:
        refused = client.post("/ingest/visits", content=body)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "duration_ms" in refused.json()["error"]
        assert producer.sent == []
        gate.update({"visits": {"id": "String", "page": "String", "duration_ms": "Int64"}})
        accepted = client.post("/ingest/visits", content=body)
        assert accepted.status_code == 200, accepted.text
        assert len(producer.sent) == 1
