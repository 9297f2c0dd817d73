"""Current-server types (DateTime64, Date32, Bool, IPv4/IPv6, wide integers, Decimal256) on a
real current ClickHouse, in-process through chdb-core: the DDL chute renders executes, and the
boundary values chute accepts are stored and read back as the boundary. chdb cannot listen on
a port, so the rows go in as the JSON the ingest API puts on Kafka (JSONEachRow), not over the
native protocol (that path is tested on 18.16)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

import orjson
import pytest
from chute import ClickHouseDecimal, ClickHouseType, Key, OlapTable
from chute.ddl import render_create_table
from chute.server import ServerProfile, parse_version
from chute.validation import RecordValidator
from pydantic import BaseModel, ValidationError

chdb_session = pytest.importorskip("chdb.session", reason="chdb-core is not installed")


class Wide(BaseModel):
    id: Key[str]
    at: datetime  # DateTime64(3, 'UTC')
    day: date  # Date
    day32: Annotated[date, ClickHouseType("Date32")]
    seconds: Annotated[datetime, ClickHouseType("DateTime('UTC')")]
    flag: bool  # Bool
    ip4: IPv4Address
    ip6: IPv6Address
    i128: Annotated[int, ClickHouseType("Int128")]
    u256: Annotated[int, ClickHouseType("UInt256")]
    money: Annotated[Decimal, ClickHouseDecimal(76, 10)]


# Each row: the record as sent, and toString() of every column as ClickHouse must show it.
LOW = ({"id": "low", "at": "1900-01-01T00:00:00Z", "day": "1970-01-01", "day32": "1900-01-01",
        "seconds": "1970-01-01T00:00:00Z", "flag": False, "ip4": "0.0.0.0", "ip6": "::",
        "i128": -2**127, "u256": 0, "money": "-" + "9" * 66 + "." + "9" * 10},
       {"at": "1900-01-01 00:00:00.000", "day": "1970-01-01", "day32": "1900-01-01",
        "seconds": "1970-01-01 00:00:00", "flag": "false", "ip4": "0.0.0.0", "ip6": "::",
        "i128": str(-2**127), "u256": "0", "money": "-" + "9" * 66 + "." + "9" * 10})
HIGH = ({"id": "high", "at": "2299-12-31T23:59:59.999999Z", "day": "2149-06-06",
         "day32": "2299-12-31", "seconds": "2106-02-07T06:28:15Z", "flag": True,
         "ip4": "255.255.255.255", "ip6": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
         "i128": 2**127 - 1, "u256": 2**256 - 1, "money": "9" * 66 + "." + "9" * 10},
        {"at": "2299-12-31 23:59:59.999", "day": "2149-06-06", "day32": "2299-12-31",
         "seconds": "2106-02-07 06:28:15", "flag": "true", "ip4": "255.255.255.255",
         "ip6": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "i128": str(2**127 - 1),
         "u256": str(2**256 - 1), "money": "9" * 66 + "." + "9" * 10})
# One step beyond each boundary: chute refuses every one.
BEYOND = {"at": "1899-12-31T23:59:59.999Z", "day": "2149-06-07", "day32": "2300-01-01",
          "seconds": "2106-02-07T06:28:16Z", "ip4": "256.0.0.0", "i128": 2**127,
          "u256": -1, "money": "1" + "0" * 66}


def _json(value: dict[str, Any]) -> bytes:
    # orjson stops at 64-bit integers: the wide ones are written as JSON numbers by hand.
    parts = [f'"{k}":{v}' if type(v) is int else f'"{k}":{orjson.dumps(v).decode()}'
             for k, v in value.items()]
    return ("{" + ",".join(parts) + "}").encode()


@pytest.fixture
def session() -> Iterator[Any]:
    s = chdb_session.Session()
    yield s
    s.close()


def test_current_server_boundaries_are_stored_as_chute_accepts_them(session: Any) -> None:
    profile = ServerProfile(parse_version(session.query("SELECT version()", "CSV").data()
                                          .strip().strip('"')))
    assert profile.has_datetime64 and profile.has_date32 and profile.has_wide_numbers
    validator = RecordValidator(Wide, profile)
    session.query("CREATE DATABASE IF NOT EXISTS chute_types")
    session.query(render_create_table(OlapTable[Wide]("wide").definition(profile),
                                      "chute_types"))
    kafka_values = [validator.serializer()(validator.validate_json(_json(row)))
                    for row, _ in (LOW, HIGH)]
    session.query("INSERT INTO chute_types.wide SETTINGS date_time_input_format = 'best_effort' "
                  "FORMAT JSONEachRow " + b"\n".join(kafka_values).decode())
    columns = list(LOW[1])
    shown = session.query(
        f"SELECT id, {', '.join(f'toString({c})' for c in columns)} FROM chute_types.wide "
        "ORDER BY id DESC", "JSONCompact").data()
    rows = orjson.loads(shown)["data"]
    assert rows == [["low", *LOW[1].values()], ["high", *HIGH[1].values()]]
    for field, value in BEYOND.items():
        with pytest.raises(ValidationError) as info:
            validator.validate_json(_json({**LOW[0], field: value}))
        assert info.value.errors()[0]["loc"][0] == field
