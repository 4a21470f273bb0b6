"""A test fake of the store's failure counts (storage.counters.WindowCounters), in memory.

For the dialogue tests only: they run on virtual time, where the store's
threads (aiosqlite) and sockets (asyncpg) cannot run. The real counts are
tested on both engines in tests/unit/test_shared_state.py and through the
follow-up throttle in tests/unit/test_follow_up_throttle.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence


class FakeCounts:
    """Implements ivr.follow_up.FailureCounts: (row id, key, expires at) in a list."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []
        self._ids = itertools.count(1)

    async def counts(self, keys: Sequence[str], now: float) -> dict[str, int]:
        return {key: sum(1 for _, k, end in self.rows if k == key and end > now) for key in keys}

    async def attempt(self, keys: Sequence[str], *, now: float, window_s: float,
                      refuse: Callable[[Mapping[str, int]], bool]) -> tuple[int, ...] | None:
        if refuse(await self.counts(keys, now)):
            return None
        added = [(next(self._ids), key, now + window_s) for key in keys]
        self.rows += added
        return tuple(row_id for row_id, _, _ in added)

    async def forget(self, ids: Sequence[int]) -> None:
        self.rows = [row for row in self.rows if row[0] not in ids]
