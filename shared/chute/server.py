"""What the connected ClickHouse server can do, derived from its version.

Debian ships ClickHouse 18.16; the compose file runs a current release. Type mapping and DDL
ask a `ServerProfile` rather than checking versions all over the code.
"""

from __future__ import annotations

from dataclasses import dataclass


def parse_version(text: str) -> tuple[int, ...]:
    """'18.16.1' or '25.8.2.29' -> (18, 16, 1) / (25, 8, 2, 29)."""
    parts = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"cannot parse ClickHouse version {text!r}")
    return tuple(parts)


@dataclass(frozen=True)
class ServerProfile:
    version: tuple[int, ...]

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)

    @property
    def has_datetime64(self) -> bool:
        return self.version >= (20, 1)

    @property
    def has_bool(self) -> bool:
        return self.version >= (21, 12)

    @property
    def has_ip_types(self) -> bool:
        return self.version >= (19, 3)

    @property
    def has_date32(self) -> bool:
        return self.version >= (21, 9)

    @property
    def has_wide_numbers(self) -> bool:
        # Int128/Int256/UInt128/UInt256 and Decimal256 (precision > 38): experimental behind a
        # setting when they appeared; chute uses them from 21.9 on, where Date32 came too.
        return self.version >= (21, 9)

    @property
    def low_cardinality_needs_setting(self) -> bool:
        # Experimental (behind allow_experimental_low_cardinality_type) until 19.x.
        return self.version < (19, 1)

    @property
    def has_insert_deduplication_token(self) -> bool:
        return self.version >= (22, 2)

    def session_settings(self) -> dict[str, int]:
        """Settings every chute connection sends so that the rendered DDL is accepted."""
        if self.low_cardinality_needs_setting:
            return {"allow_experimental_low_cardinality_type": 1}
        return {}


OLD_SERVER = ServerProfile((18, 16, 1))
CURRENT_SERVER = ServerProfile((25, 8))
