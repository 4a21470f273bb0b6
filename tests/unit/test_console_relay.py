"""Unit tests for softswitch.web.relay through the console: an agent logged in at host b works a call whose
desk is at host a. Two real web servers on loopback share one store (the sessions); their desks are fakes
(tests/fakes/desk.py), the one at b told that the agent's call is at a."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from softswitch.web.console import add_console_routes
from softswitch.web.relay import UNREACHABLE, HostRelay
from softswitch.web.sessions import install_sessions
from storage.store import Store
from tests.fakes.desk import FakeDesk, fake_account

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

AGENT, PASSWORD = "maryam", "agent-pass"
SUPERVISOR = "zahra"
POP = {"call_key": "c1", "state": "connected", "caller_number": "0912***4567", "national_id": "0499370899",
       "id_status": "verified", "id_audio": [7], "subject_id": None, "subject_id_status": None,
       "subject_id_audio": [], "history": [], "subject_history": [], "queued_s": 3.0}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def hosts(web_store: Store) -> AsyncIterator[tuple[FakeDesk, FakeDesk, Client]]:
    """Desks a and b, and a browser at b's console."""
    urls: dict[str, str] = {}

    async def console_url(host: str) -> str | None:
        return urls.get(host)
    accounts = [(fake_account(AGENT, "مریم احمدی"), PASSWORD),
                (fake_account(SUPERVISOR, "زهرا کریمی", supervisor=True), PASSWORD)]
    desks = (FakeDesk(accounts), FakeDesk(accounts))
    servers = []
    for desk in desks:
        app = web.Application()
        install_sessions(app, web_store)
        relay = HostRelay(console_url, timeout_s=5)
        add_console_routes(app, desk, heartbeat_s=0.2, relay=relay)

        async def close(_: web.Application, relay: HostRelay = relay) -> None:
            await relay.close()
        app.on_cleanup.append(close)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
    urls.update(a=str(servers[0].make_url("")), b=str(servers[1].make_url("")))
    try:
        async with TestClient(servers[1]) as browser:
            yield desks[0], desks[1], browser
    finally:
        for server, desk in zip(servers, desks):
            await server.close()
            await desk.close()


async def _login(browser: Client, agent_id: str = AGENT) -> str:
    form = await (await browser.get("/console/login")).text()
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token
    response = await browser.post("/console/login", data={"agent_id": agent_id, "password": PASSWORD,
                                                          "csrf": token.group(1)})
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)"', await response.text())
    assert response.status == 200 and meta
    return meta.group(1)


async def _page_offer(browser: Client) -> Any:
    page = await browser.get("/console")
    data = re.search(r'<script type="application/json" id="console-data">(.*?)</script>', await page.text(),
                     re.DOTALL)
    assert page.status == 200 and data
    return json.loads(html.unescape(data.group(1)))["offer"]


async def _next_event(stream: Any, matches: Any) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            line = await stream.content.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: ") and matches(event := json.loads(line[6:])):
                return event  # type: ignore[no-any-return]


async def test_the_console_at_b_shows_and_files_the_call_whose_desk_is_at_a(
        hosts: tuple[FakeDesk, FakeDesk, Client], tmp_path: Path) -> None:
    a, b, browser = hosts
    token = await _login(browser)
    a.offer(AGENT, POP)
    tape = tmp_path / "id.wav"
    tape.write_bytes(b"RIFF-the-spoken-id")
    a.recordings[7] = tape
    b.desk_hosts[AGENT] = "a"
    a.desk_hosts[AGENT] = "b"  # wrong on purpose: a relayed request is answered where it arrives, never sent on

    stream = await browser.get("/console/events")
    first = await _next_event(stream, lambda e: True)
    assert first["type"] == "state" and first["offer"] is None  # b holds no call: a's offer follows
    offer = (await _next_event(stream, lambda e: e["type"] == "offer"))["offer"]
    assert (offer["call_key"], offer["national_id"]) == ("c1", "0499370899")
    assert (await _page_offer(browser))["national_id"] == "0499370899"

    filed = await browser.post("/console/api/cases", json={
        "call_key": "c1", "agency_id": "energy", "category": a.categories[0], "summary": "برق قطع است."},
        headers={"X-CSRF-Token": token})
    body = await filed.json()
    assert filed.status == 200, body
    assert [c[0] for c in a.calls].count("file_case") == 1 and "file_case" not in [c[0] for c in b.calls]
    event = await _next_event(stream, lambda e: e["type"] == "case_filed")
    assert event["tracking_code"] == body["tracking_code"]
    assert a.call_cases["c1"] == body["tracking_code"]

    audio = await browser.get("/console/recordings/7")
    assert audio.status == 200 and await audio.read() == b"RIFF-the-spoken-id"
    assert (await browser.get("/console/recordings/8")).status == 404  # not the call's: a refuses it

    # A CSRF token is checked where the request is answered too.
    forged = await browser.post("/console/api/cases", json={"call_key": "c1"}, headers={"X-CSRF-Token": "x"})
    assert forged.status == 403
    stream.close()


async def test_a_call_at_a_host_out_of_reach_gets_a_clear_error(hosts: tuple[FakeDesk, FakeDesk, Client]) -> None:
    _, b, browser = hosts
    token = await _login(browser)
    b.desk_hosts[AGENT] = "gone"  # no console URL known for it
    assert await _page_offer(browser) is None
    response = await browser.post("/console/api/tracking-code", json={"call_key": "c1"},
                                  headers={"X-CSRF-Token": token})
    assert response.status == 502
    assert (await response.json())["error"] == UNREACHABLE


async def test_a_supervisor_at_b_monitors_a_call_whose_media_is_at_a(hosts: tuple[FakeDesk, FakeDesk, Client]) -> None:
    a, b, browser = hosts
    token = await _login(browser, SUPERVISOR)
    a.offer(AGENT, POP)
    b.call_hosts["c1"] = "a"
    joined = await browser.post("/supervisor/api/monitor", json={"call_key": "c1", "mode": "listen"},
                                headers={"X-CSRF-Token": token})
    assert joined.status == 200 and (await joined.json())["monitor"]["mode"] == "listen"
    assert a.monitors[SUPERVISOR]["call_key"] == "c1" and not b.monitors
    # b's supervisor view shows the monitor as a has it, and a switch goes to a too.
    page = await (await browser.get("/supervisor")).text()
    assert '"mode": "listen"' in html.unescape(page)
    switched = await browser.post("/supervisor/api/monitor", json={"call_key": "c1", "mode": "whisper"},
                                  headers={"X-CSRF-Token": token})
    assert switched.status == 200 and a.monitors[SUPERVISOR]["mode"] == "whisper"
    left = await browser.delete("/supervisor/api/monitor", headers={"X-CSRF-Token": token})
    assert left.status == 200 and SUPERVISOR not in a.monitors
    assert ("stop_monitor", SUPERVISOR) not in b.calls
