"""What the column-type checks cost: 100k records validated with the plain model versus the
RecordValidator both services use. Standalone, no servers:

    .venv/bin/python -m bench.validation_cost [--records N]
"""

from __future__ import annotations

import argparse
import math
import time
import timeit
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from chute import ClickHouseDecimal, ClickHouseType, Key
from chute.server import CURRENT_SERVER, OLD_SERVER, ServerProfile
from chute.validation import RecordValidator
from pydantic import BaseModel, TypeAdapter

from schemas.events import Event


class Order(BaseModel):
    id: Key[str]
    quantity: Annotated[int, ClickHouseType("UInt16")]
    price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
    placed_at: datetime


def _events(n: int) -> list[bytes]:
    return [orjson.dumps({"id": f"e{i}", "user_id": f"u{i % 9973}",
                          "timestamp": "2024-05-01T12:00:00Z", "event_type": "click"})
            for i in range(n)]


def _orders(n: int) -> list[bytes]:
    return [orjson.dumps({"id": f"o{i}", "quantity": i % 1000, "price": f"{i % 997}.25",
                          "placed_at": "2024-05-01T12:00:00Z"}) for i in range(n)]


def _seconds(validate: Callable[[bytes], Any], values: list[bytes]) -> float:
    # CPU time of this process: less disturbed than wall time by the other work on the machine.
    return timeit.timeit(lambda: [validate(v) for v in values], number=1,
                         timer=time.process_time)


def measure(model: type[BaseModel], values: list[bytes], profile: ServerProfile,
            rounds: int = 7) -> dict[str, float]:
    """Records per second, plain and checked, each the best of `rounds` interleaved runs (the
    machine is shared: interleaving exposes both to the same noise)."""
    plain = TypeAdapter(model).validate_json
    checked = RecordValidator(model, profile).validate_json
    best = {"plain": math.inf, "checked": math.inf}
    for _ in range(rounds):
        best["plain"] = min(best["plain"], _seconds(plain, values))
        best["checked"] = min(best["checked"], _seconds(checked, values))
    return {"plain_per_s": len(values) / best["plain"],
            "checked_per_s": len(values) / best["checked"],
            "extra_us_per_record": (best["checked"] - best["plain"]) / len(values) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    cases: list[tuple[str, type[BaseModel], list[bytes]]] = [
        ("Event", Event, _events(args.records)), ("Order", Order, _orders(args.records))]
    for name, model, values in cases:
        for profile in (OLD_SERVER, CURRENT_SERVER):
            r = measure(model, values, profile)
            print(f"{name:6} ClickHouse {profile.version_text:8} plain {r['plain_per_s']:>9,.0f}/s"
                  f"  checked {r['checked_per_s']:>9,.0f}/s"
                  f"  extra {r['extra_us_per_record']:5.2f} µs/record")


if __name__ == "__main__":
    main()
