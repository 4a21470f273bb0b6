"""Fixtures for browser tests: headless Chromium, and a console served on 127.0.0.1 around a FakeDesk.

Selenium is synchronous, so the console runs on its own event loop in a
thread; ``ConsoleServer.run`` hands work to that loop (the FakeDesk's
queues belong to it) and waits for the result with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from selenium.webdriver.remote.webdriver import WebDriver

from softswitch.web.console import add_console_routes
from softswitch.web.sessions import install_sessions
from storage.store import open_store
from tests.conftest import fixed_protector
from tests.browser.driver import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.fakes.desk import FakeDesk, fake_account

T = TypeVar("T")

AGENT = ("maryam", "مریم احمدی", "agent-pass")
SUPERVISOR = ("narges", "نرگس موسوی", "supervisor-pass")
RUN_TIMEOUT_S = 10.0


class ConsoleServer:
    """The console routes over a FakeDesk, on an ephemeral port of 127.0.0.1, in a thread of its own."""

    def __init__(self, desk: FakeDesk) -> None:
        self.desk = desk
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-server", daemon=True)
        self.runner: web.AppRunner | None = None
        self.base_url = ""
        self.sessions_dir = tempfile.TemporaryDirectory(prefix="console-sessions-")
        self.sessions_exit = contextlib.AsyncExitStack()

    def start(self) -> ConsoleServer:
        self.thread.start()
        self.run(self._start)
        return self

    async def _start(self) -> None:
        app = web.Application()
        # The sessions in a real store of their own.
        store = await self.sessions_exit.enter_async_context(
            open_store(Path(self.sessions_dir.name) / "store.db", fixed_protector()))
        install_sessions(app, store)
        add_console_routes(app, self.desk, heartbeat_s=2.0)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def run(self, work: Callable[[], Awaitable[T]], timeout: float = RUN_TIMEOUT_S) -> T:
        """Await ``work()`` on the server's loop."""
        async def call() -> T:
            return await work()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the server's loop (the desk is not thread-safe)."""
        async def call() -> T:
            return function(*args)
        return self.run(call)

    def stop(self) -> None:
        async def stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
            await self.desk.close()
            await self.sessions_exit.aclose()
        try:
            self.run(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            self.sessions_dir.cleanup()


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the session; ``driver.login`` drops its cookies before each login."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (scripts/setup.sh --test installs them)")
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def make_desk(**options: Any) -> FakeDesk:
    return FakeDesk([(fake_account(AGENT[0], AGENT[1]), AGENT[2]),
                     (fake_account(SUPERVISOR[0], SUPERVISOR[1], supervisor=True), SUPERVISOR[2])], **options)


@pytest.fixture
def console_server() -> Iterator[Callable[[FakeDesk], ConsoleServer]]:
    """A factory: ``console_server(desk)`` serves the console around that desk until the test ends."""
    servers: list[ConsoleServer] = []

    def serve(desk: FakeDesk) -> ConsoleServer:
        server = ConsoleServer(desk)
        servers.append(server)
        return server.start()

    yield serve
    for server in servers:
        server.stop()
