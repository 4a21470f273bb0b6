"""Storage layer: the facts each host's ACD counted today (softswitch.domain.acd.DayFact), replayed at its start."""

from __future__ import annotations

from softswitch.domain.acd import DayFact
from storage.engines import Executor

# Rows removed per statement when old days are purged, and the statements one purge may run.
PURGE_BATCH = 1000
PURGE_ROUNDS = 100


class AcdDayEvents:
    """One row per fact, by host: every host's ACD keeps its own queue and its own day."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def add(self, host: str, fact: DayFact) -> None:
        await self._db.insert(
            "INSERT INTO acd_day_events (host, at, kind, agent_id, seconds, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (host, fact.at, fact.kind, fact.agent_id, fact.seconds, fact.reason))

    async def since(self, host: str, start: float) -> list[DayFact]:
        """This host's facts from ``start`` on, in the order they were counted."""
        rows = await self._db.fetchall(
            "SELECT at, kind, agent_id, seconds, reason FROM acd_day_events WHERE host = ? AND at >= ?"
            " ORDER BY id", (host, start))
        return [DayFact(row["kind"], row["at"], row["agent_id"], row["seconds"], row["reason"]) for row in rows]

    async def purge(self, before: float) -> int:
        """Remove the facts (of every host) older than ``before``, in bounded batches; how many went."""
        removed = 0
        for _ in range(PURGE_ROUNDS):
            batch = await self._db.execute(
                "DELETE FROM acd_day_events WHERE id IN"
                " (SELECT id FROM acd_day_events WHERE at < ? ORDER BY id LIMIT ?)", (before, PURGE_BATCH))
            removed += batch
            if batch < PURGE_BATCH:
                break
        return removed
