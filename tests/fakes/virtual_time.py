"""An asyncio event loop on virtual time: a wait of 30 s takes no time at all.

Timers (``asyncio.sleep``, ``wait_for`` timeouts, ``call_later``) run in the
order and at the virtual times they would in real life; whenever the loop has
nothing ready, its clock jumps to the next timer instead of sleeping. Only for
code that does no real I/O and uses no threads: there, nothing outside the loop
could happen while the clock jumps. ``run_virtual`` fails if the loop would
block with no timer left (a coroutine waiting for something nobody will do).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Stuck(AssertionError):
    """The code under test waits for an event no timer and no script will ever bring."""


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)  # the loop's own wake-up pipe only
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stuck("nothing left to run and no timer pending")
        assert self.loop is not None
        self.loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run_virtual(coro: Coroutine[Any, Any, T], limit_s: float = 24 * 3600) -> T:
    """Run coro to its end on a fresh virtual-time loop; Stuck past limit_s of virtual time."""
    loop = VirtualTimeLoop()
    try:
        async def bounded() -> T:
            try:
                return await asyncio.wait_for(coro, limit_s)
            except asyncio.TimeoutError:
                raise Stuck(f"still running after {limit_s} virtual seconds") from None
        return loop.run_until_complete(bounded())
    finally:
        loop.close()
