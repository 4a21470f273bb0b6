"""Control process: the ACD's day figures kept across restarts: each fact stored as it is counted, replayed at start.

The ACD (``softswitch.domain.acd``) counts synchronously and does no I/O; it
hands each fact to ``DayJournal.record``, which queues it for one writer task
that stores the facts in order (``storage.acd_days``). At start,
``restore`` replays this host's facts of today into the new ACD, so the
supervisor view and ``/metrics`` show after a restart what they showed
before it. The in-memory figures stay the live ones: a fact the store could
not take is only missing after the next restart (and said so in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from softswitch.domain.acd import Acd, DayFact
from storage.acd_days import AcdDayEvents
from storage.errors import StoreError

log = logging.getLogger("softswitch.control")

# Facts waiting for the store at most (a store that is down for long): beyond it they are dropped, said so.
QUEUE_MAX = 10_000
# How long the store keeps the facts: today's are replayed, older ones go once a day.
KEEP_S = 2 * 86400.0
CLOSE_TIMEOUT_S = 5.0


class DayJournal:
    """Stores one host's ACD facts in order, off the ACD's path."""

    def __init__(self, events: AcdDayEvents, host: str) -> None:
        self.events = events
        self.host = host
        self._queue: asyncio.Queue[DayFact] = asyncio.Queue(QUEUE_MAX)
        self._writer: asyncio.Task[None] | None = None
        self._failing = False
        self._purged_at = 0.0

    def record(self, fact: DayFact) -> None:
        """The ACD's journal: queue the fact for the store; never blocks."""
        try:
            self._queue.put_nowait(fact)
        except asyncio.QueueFull:
            self._report_failure(f"{QUEUE_MAX} facts are waiting for it")

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def restore(self, acd: Acd, now: float | None = None) -> int:
        """Replay this host's facts of today into ``acd`` (before any call); how many there were."""
        now = time.time() if now is None else now
        await self._purge(now)
        replayed = acd.restore(await self.events.since(self.host, now - 86400.0))
        log.info("the ACD's figures of today rebuilt from %d stored facts", replayed)
        return replayed

    async def close(self) -> None:
        """Store what is queued (for CLOSE_TIMEOUT_S at most), then stop."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), CLOSE_TIMEOUT_S)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def _write(self) -> None:
        while True:
            fact = await self._queue.get()
            try:
                await self.events.add(self.host, fact)
                if self._failing:
                    log.warning("the ACD's day facts are stored again")
                    self._failing = False
                if fact.at - self._purged_at > KEEP_S / 2:
                    await self._purge(fact.at)
            except StoreError as exc:
                self._report_failure(str(exc))
            finally:
                self._queue.task_done()

    async def _purge(self, now: float) -> None:
        self._purged_at = now
        removed = await self.events.purge(before=now - KEEP_S)
        if removed:
            log.info("removed %d stored ACD facts of earlier days", removed)

    def _report_failure(self, why: str) -> None:
        if not self._failing:
            log.error("the ACD's day facts cannot be stored, a restart would not show them: %s", why)
        self._failing = True
