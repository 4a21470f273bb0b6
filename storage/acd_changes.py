"""Storage layer: the one order of every host's ACD changes, and snapshots of the state they made.

A replicated ACD (``softswitch.control.shared_acd``) appends each change here and applies the changes in
the order of their ids; a host starting takes the latest snapshot and the changes after it. Appends take
one advisory lock, so ids are committed in the order they were given: a reader that has seen change n has
seen every change before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from storage.engines import Engine

CHANNEL = "acd_changes"
_ORDER_LOCK = "softswitch-111 acd changes"


@dataclass(frozen=True, slots=True)
class AcdChange:
    id: int
    at: float  # the database's clock when it was ordered
    host: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AcdSnapshot:
    change_id: int  # the last change it includes
    state: dict[str, Any]


class AcdChanges:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def append(self, host: str, name: str, args: dict[str, Any]) -> AcdChange:
        async with self._db.transaction() as tx:
            await tx.lock(_ORDER_LOCK)
            row = await tx.fetchone(
                f"INSERT INTO acd_changes (at, host, name, args) VALUES ({tx.clock}, ?, ?, ?) RETURNING id, at",
                (host, name, json.dumps(args)))
            assert row is not None
            await tx.notify(CHANNEL)
        return AcdChange(int(row["id"]), float(row["at"]), host, name, args)

    async def after(self, change_id: int, limit: int = 1000) -> list[AcdChange]:
        rows = await self._db.fetchall(
            "SELECT id, at, host, name, args FROM acd_changes WHERE id > ? ORDER BY id LIMIT ?", (change_id, limit))
        return [AcdChange(int(r["id"]), float(r["at"]), r["host"], r["name"], json.loads(r["args"])) for r in rows]

    async def last_id(self) -> int:
        row = await self._db.fetchone("SELECT MAX(id) FROM acd_changes")
        return 0 if row is None or row[0] is None else int(row[0])

    async def save_snapshot(self, change_id: int, state: dict[str, Any], keep_changes: int) -> None:
        """Keep the state as of ``change_id``; drop older snapshots and the changes more than
        ``keep_changes`` before it (a host that lags further starts again from this snapshot)."""
        async with self._db.transaction() as tx:
            await tx.insert(f"INSERT INTO acd_snapshots (change_id, at, state) VALUES (?, {tx.clock}, ?)",
                            (change_id, json.dumps(state)))
            await tx.execute("DELETE FROM acd_snapshots WHERE change_id < ?", (change_id,))
            await tx.execute("DELETE FROM acd_changes WHERE id <= ?", (change_id - keep_changes,))

    async def latest_snapshot(self) -> AcdSnapshot | None:
        row = await self._db.fetchone("SELECT change_id, state FROM acd_snapshots ORDER BY change_id DESC LIMIT 1")
        return None if row is None else AcdSnapshot(int(row["change_id"]), json.loads(row["state"]))

    def listen(self, callback: Callable[[], None]) -> AbstractAsyncContextManager[bool]:
        return self._db.listen(CHANNEL, callback)

