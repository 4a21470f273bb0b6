"""Storage layer: failures counted per key in sliding windows, shared by every process and host on the database.

The login throttle and the follow-up throttle count here. A row is one counted
failure of one key, alive until its window has passed; keys are stored only as
their SHA-256 (a login id may be a password typed in the wrong field, a key may
hold a caller's number). ``attempt`` checks and counts in one transaction, the
keys locked (PostgreSQL: an advisory lock per key; SQLite: the database's write
lock), so attempts on any host see each other: no more get past a limit than it
allows, however many run at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from storage.engines import Executor

# Expired rows removed by each write: more than any write adds, so the table holds what its windows need.
PURGE_BATCH = 100


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class WindowCounters:
    """Counted failures by key; ``now`` is wall time (every host's clock), ``window_s`` each count's life."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def counts(self, keys: Sequence[str], now: float) -> dict[str, int]:
        """How many failures of each key are still within their window."""
        return await _counts(self._db, keys, now)

    async def attempt(self, keys: Sequence[str], *, now: float, window_s: float,
                      refuse: Callable[[Mapping[str, int]], bool]) -> tuple[int, ...] | None:
        """Count one failure of each key, unless ``refuse`` says no given the counts before it: None then.
        Else the counted rows' ids (for ``forget``). The check and the count are one step on every host."""
        async with self._db.transaction() as tx:
            for key in sorted(set(keys)):  # one order everywhere: no deadlock between two attempts
                await tx.lock(f"throttle {key_hash(key)}")
            if refuse(await _counts(tx, keys, now)):
                return None
            ids = tuple([await tx.insert("INSERT INTO throttle_hits (key_hash, expires_at) VALUES (?, ?)",
                                         (key_hash(key), now + window_s)) for key in keys])
            await _purge(tx, now)
            return ids

    async def forget(self, ids: Sequence[int]) -> None:
        """Take back failures counted by ``attempt`` (the attempt succeeded)."""
        for row_id in ids:
            await self._db.execute("DELETE FROM throttle_hits WHERE id = ?", (row_id,))

    async def clear(self, key: str) -> None:
        """Forget every failure of a key."""
        await self._db.execute("DELETE FROM throttle_hits WHERE key_hash = ?", (key_hash(key),))

    async def purge(self, now: float) -> int:
        """Remove up to PURGE_BATCH rows whose window has passed; how many went."""
        return await _purge(self._db, now)


async def _counts(db: Executor, keys: Sequence[str], now: float) -> dict[str, int]:
    hashes = {key_hash(key): key for key in keys}
    if not hashes:
        return {}
    marks = ", ".join("?" * len(hashes))
    rows = await db.fetchall(f"SELECT key_hash, count(*) FROM throttle_hits WHERE key_hash IN ({marks})"
                             " AND expires_at > ? GROUP BY key_hash", (*hashes, now))
    found = {hashes[row[0]]: int(row[1]) for row in rows}
    return {key: found.get(key, 0) for key in keys}


async def _purge(db: Executor, now: float) -> int:
    return await db.execute(
        "DELETE FROM throttle_hits WHERE id IN"
        " (SELECT id FROM throttle_hits WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)", (now, PURGE_BATCH))
