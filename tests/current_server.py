"""Current ClickHouse in-process (PyPI `chdb-core`, ClickHouse 26.x): runs the DDL and queries
chute renders for current servers. It cannot listen on a port, so inserts over the native
protocol stay tested on the 18.16 server only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chdb import session as chdb_session
from chute.server import ServerProfile, parse_version


@dataclass
class CurrentServer:
    session: Any
    profile: ServerProfile

    @classmethod
    def open(cls, path: Path) -> CurrentServer:
        session = chdb_session.Session(str(path))
        text = session.query("SELECT version() AS v", "JSONEachRow").data()
        return cls(session, ServerProfile(parse_version(json.loads(text)["v"])))

    def execute(self, sql: str) -> None:
        self.session.query(sql)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        text = self.session.query(sql, "JSONEachRow").data().strip()
        return [json.loads(line) for line in text.splitlines()]

    def column_types(self, database: str, table: str) -> dict[str, str]:
        return {r["name"]: r["type"] for r in self.rows(
            f"SELECT name, type FROM system.columns WHERE database = '{database}' "
            f"AND table = '{table}' ORDER BY position")}

    def close(self) -> None:
        self.session.close()
