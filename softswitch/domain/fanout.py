"""Events to many listeners, none of whom can hold up the others: one bounded queue each.

The ACD's events go to the console's supervisor views and the desk; the desk's
go to each agent's open consoles. When a listener's queue is full its oldest
event is dropped and the event put in its place carries ``missed``: how many
that listener has lost so far (it should then read a fresh snapshot).
"""

from __future__ import annotations

import asyncio
from typing import Any

Event = dict[str, Any]


class Fanout:
    """Single-threaded: publish from the event loop only."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._listeners: dict[asyncio.Queue[Event], int] = {}  # queue -> events dropped

    def subscribe(self) -> asyncio.Queue[Event]:
        events: asyncio.Queue[Event] = asyncio.Queue(self.queue_size)
        self._listeners[events] = 0
        return events

    def unsubscribe(self, events: asyncio.Queue[Event]) -> None:
        self._listeners.pop(events, None)

    def publish(self, event: Event) -> None:
        for events, missed in self._listeners.items():
            if events.full():
                events.get_nowait()
                missed += 1
                self._listeners[events] = missed
                events.put_nowait({**event, "missed": missed})
            else:
                events.put_nowait(event)

    def __len__(self) -> int:
        return len(self._listeners)
