"""Supervision rules of the agents' desk (softswitch/control/desk.py): listen, whisper, barge.

The desk is the real one, on a real SQLite store; the media worker is the
scripted fake (tests/fakes/scripted_worker.py): the caller's call and the legs
dialled from it are real ``ControlCall`` objects, every command goes through
the protocol's line, and phones answer as their ``AgentPhone`` says. The HTTP
API (softswitch/web/console.py) is tested over the fake desk (tests/fakes/desk.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ivr.call_flow import Session
from softswitch import protocol
from softswitch.config import AgentsConfig, Config
from softswitch.control.calls import ControlCall
from softswitch.control.desk import ControlDesk
from softswitch.domain.acd import Acd
from softswitch.web.console import ERRORS, add_console_routes
from softswitch.web.sessions import install_sessions
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.store import Store, open_store
from tests.browser.demo import CALL_KEY, screen_pop
from tests.fakes.desk import FakeDesk, fake_account
from tests.fakes.scripted_worker import AgentPhone, Script, ScriptedWorker
from tests.unit.test_console import _api, _login, _next_data, _second_client

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

AGENT, OTHER, SUPERVISOR, DEPUTY = "1001", "1002", "9001", "9002"
NATIONAL_ID = "0499370899"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.db", IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as opened:
        yield opened


@pytest.fixture
async def desk(store: Store) -> AsyncIterator[ControlDesk]:
    accounts = (fake_account(AGENT, "مریم احمدی"), fake_account(OTHER, "علی رضایی"),
                fake_account(SUPERVISOR, "زهرا کریمی", supervisor=True),
                fake_account(DEPUTY, "سارا نوری", supervisor=True))
    config = Config(agents=AgentsConfig(accounts=accounts, ring_timeout_s=0.5))
    acd = Acd(config.agents, config.queue)
    opened = ControlDesk(config, store, acd, prompts=None)
    yield opened
    await opened.close()
    acd.close()


async def connected_call(desk: ControlDesk, store: Store, key: str, agent_id: str,
                         supervisor: AgentPhone | None = None) -> tuple[ScriptedWorker, ControlCall, ControlCall]:
    """A caller on a scripted worker, connected to ``agent_id``; supervisors' phones answer as ``supervisor``."""
    phones = {agent_id: AgentPhone(answer_after_s=0.01)}
    phones |= {s: supervisor or AgentPhone(answer_after_s=0.01) for s in (SUPERVISOR, DEPUTY)}
    worker = ScriptedWorker(Script(), agents=phones)
    caller = worker.answer()
    call_id = await store.add_call(f"{key}@trunk", "sip:09121234567@trunk", "sip:111@sw", "127.0.0.1", 0, 1.0)
    desk.track(key, call_id, "09121234567", Session(caller=PersonId(NATIONAL_ID, "keypad", "verified")))
    await desk.offer(key, agent_id, 2.0)
    agent_leg = caller.dial(desk.agent_uri(agent_id))
    assert await agent_leg.wait_answered(1.0)
    desk.connected(key, agent_id, caller, agent_leg, lambda to_agent: None)
    return worker, caller, agent_leg


def monitor_commands(worker: ScriptedWorker) -> list[tuple[str, str, str]]:
    return [(m.caller, m.agent, m.mode) for m in worker.monitored]


async def test_a_supervisor_joins_switches_and_leaves_and_the_case_keeps_each_step(
        desk: ControlDesk, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    worker, caller, agent_leg = await connected_call(desk, store, "call-1", AGENT)
    caplog.set_level(logging.INFO, "softswitch.desk")
    joined = await desk.monitor(SUPERVISOR, "call-1", "listen")
    assert joined == {"call_key": "call-1", "agent_id": AGENT, "mode": "listen", "state": "joined"}
    assert worker.dialled[-1] == f"sip:{SUPERVISOR}@front"
    assert monitor_commands(worker) == [(caller.handle, agent_leg.handle, "listen")]
    supervisor_leg = worker.monitored[0].call
    assert supervisor_leg not in (caller.handle, agent_leg.handle)
    # Switching sends the command again; the same mode again sends nothing.
    assert (await desk.monitor(SUPERVISOR, "call-1", "whisper"))["mode"] == "whisper"
    await desk.monitor(SUPERVISOR, "call-1", "whisper")
    assert (await desk.monitor(SUPERVISOR, "call-1", "barge"))["mode"] == "barge"
    assert [mode for _, _, mode in monitor_commands(worker)] == ["listen", "whisper", "barge"]
    assert desk.monitoring(SUPERVISOR) == {"call_key": "call-1", "agent_id": AGENT, "mode": "barge",
                                           "state": "joined"}
    await desk.stop_monitor(SUPERVISOR)
    assert protocol.HangupCall(supervisor_leg) in worker.commands
    assert desk.monitoring(SUPERVISOR) is None
    with pytest.raises(LookupError):
        await desk.stop_monitor(SUPERVISOR)
    # The conversation went on without the supervisor; its case has every step.
    assert protocol.HangupCall(caller.handle) not in worker.commands
    code = await desk.finished("call-1", AGENT, None)
    assert code is not None
    case = await store.get_case(code)
    notes = [(e.actor, e.detail["action"], e.detail["mode"]) for e in await store.case_events(case.id)
             if e.kind == "monitored"]
    actor = f"supervisor:{SUPERVISOR}"
    assert notes == [(actor, "start", "listen"), (actor, "switch", "whisper"), (actor, "switch", "barge"),
                     (actor, "stop", "barge")]
    lines = [r for r in caplog.records if getattr(r, "event", None) == "monitor"]
    assert [(r.action, r.mode) for r in lines] == [  # type: ignore[attr-defined]
        ("start", "listen"), ("switch", "whisper"), ("switch", "barge"), ("stop", "barge")]
    assert all(NATIONAL_ID not in r.getMessage() for r in caplog.records)


async def test_who_may_monitor_what(desk: ControlDesk, store: Store) -> None:
    await connected_call(desk, store, "call-1", AGENT)
    await connected_call(desk, store, "own", SUPERVISOR)  # a supervisor taking calls as an agent
    with pytest.raises(PermissionError):
        await desk.monitor(OTHER, "call-1", "listen")  # an agent, not a supervisor
    with pytest.raises(LookupError):
        await desk.monitor(DEPUTY, "no-such-call", "listen")
    with pytest.raises(ValueError, match="حالت"):
        await desk.monitor(DEPUTY, "call-1", "spy")
    with pytest.raises(ValueError, match="تماس خودتان"):
        await desk.monitor(SUPERVISOR, "own", "listen")
    with pytest.raises(ValueError, match="خودتان در تماس"):
        await desk.monitor(SUPERVISOR, "call-1", "listen")  # on a call of their own
    desk.acd.login(DEPUTY)  # ready for queue calls: the queue would ring the listening phone
    with pytest.raises(ValueError, match="مکث کنید"):
        await desk.monitor(DEPUTY, "call-1", "listen")
    desk.acd.pause(DEPUTY, "break")
    await desk.monitor(DEPUTY, "call-1", "listen")
    with pytest.raises(ValueError, match="تماس دیگر"):
        await desk.monitor(DEPUTY, "own", "listen")  # one call at a time
    await desk.stop_monitor(DEPUTY)
    await desk.finished("own", SUPERVISOR, None)
    await desk.monitor(SUPERVISOR, "call-1", "listen")  # their own call is over: in wrap-up they may listen in


async def test_the_calls_end_ends_the_supervisors_leg(desk: ControlDesk, store: Store) -> None:
    worker, caller, _ = await connected_call(desk, store, "call-1", AGENT)
    await desk.monitor(SUPERVISOR, "call-1", "whisper")
    supervisor_leg = worker.monitored[0].call
    code = await desk.finished("call-1", AGENT, None)
    assert protocol.HangupCall(supervisor_leg) in worker.commands
    assert desk.monitoring(SUPERVISOR) is None
    assert code is not None
    events = await store.case_events((await store.get_case(code)).id)
    assert [(e.detail["action"], e.detail.get("reason")) for e in events if e.kind == "monitored"] == [
        ("start", None), ("stop", "call_ended")]


async def test_a_supervisor_who_hangs_up_leaves_the_call(desk: ControlDesk, store: Store) -> None:
    await connected_call(desk, store, "call-1", AGENT, supervisor=AgentPhone(answer_after_s=0.01, talk_s=0.1))
    await desk.monitor(SUPERVISOR, "call-1", "barge")
    events = desk.subscribe(SUPERVISOR)
    assert await asyncio.wait_for(events.get(), 2.0) == {"type": "monitor", "monitor": None,
                                                          "reason": "supervisor_hung_up"}
    assert desk.monitoring(SUPERVISOR) is None
    await desk.monitor(SUPERVISOR, "call-1", "listen")  # and may join again


async def test_a_supervisor_phone_that_does_not_answer_is_hung_up(desk: ControlDesk, store: Store) -> None:
    worker, _, _ = await connected_call(desk, store, "call-1", AGENT, supervisor=AgentPhone(answer_after_s=None))
    with pytest.raises(ValueError, match="پاسخ نداد"):
        await desk.monitor(SUPERVISOR, "call-1", "listen")
    assert worker.monitored == []
    assert isinstance(worker.commands[-1], protocol.HangupCall)
    assert desk.monitoring(SUPERVISOR) is None


# -- the supervisor's HTTP API, over the fake desk ------------------------------------------------------


@pytest.fixture
async def console(web_store: Store) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], FakeDesk]]:
    fake = FakeDesk([(fake_account(AGENT, "مریم احمدی"), "agent-pass"),
                     (fake_account(SUPERVISOR, "زهرا کریمی", supervisor=True), "supervisor-pass")])
    app = web.Application()
    install_sessions(app, web_store)
    add_console_routes(app, fake, heartbeat_s=1.0)
    async with TestClient(TestServer(app)) as client:
        yield client, fake
    await fake.close()


async def test_the_monitor_api_checks_who_asks_and_answers_in_persian(
        console: tuple[TestClient[web.Request, web.Application], FakeDesk]) -> None:
    client, fake = console
    fake.acd.login(AGENT)
    await fake.ring(screen_pop())
    fake.answer(CALL_KEY)

    token = await _login(client, SUPERVISOR, "supervisor-pass")
    assert (await _api(client, "/supervisor/api/monitor", "", {"call_key": CALL_KEY, "mode": "listen"}))[0] == 403
    assert (await _api(client, "/supervisor/api/monitor", token, {"call_key": CALL_KEY, "mode": "spy"}))[0] == 400
    status, body = await _api(client, "/supervisor/api/monitor", token, {"call_key": "gone", "mode": "listen"})
    assert status == 404 and body["error"] == ERRORS["no_live_call"]
    fake.monitor_refusal = "تلفن شما پاسخ نداد."
    status, body = await _api(client, "/supervisor/api/monitor", token, {"call_key": CALL_KEY, "mode": "listen"})
    assert status == 400 and body["error"] == "تلفن شما پاسخ نداد."

    status, body = await _api(client, "/supervisor/api/monitor", token, {"call_key": CALL_KEY, "mode": "whisper"})
    assert status == 200 and body["monitor"] == {"call_key": CALL_KEY, "agent_id": AGENT, "mode": "whisper",
                                                 "state": "joined"}
    # While listening in, not ready for the queue: it would ring the phone on the monitored call.
    status, body = await _api(client, "/console/api/agent/ready", token)
    assert status == 409 and body["error"] == ERRORS["monitoring_not_ready"]
    assert fake.acd.agent(SUPERVISOR).state.value != "ready"
    async with client.get("/supervisor/events") as events:
        assert (await _next_data(events))["monitor"]["mode"] == "whisper"
        assert (await client.delete("/supervisor/api/monitor")).status == 403  # no CSRF token
        stopped = await client.delete("/supervisor/api/monitor", headers={"X-CSRF-Token": token})
        assert stopped.status == 200 and await stopped.json() == {"monitor": None}
        assert (await _next_data(events))["monitor"] is None  # the leg's end reaches the board at once
    again = await client.delete("/supervisor/api/monitor", headers={"X-CSRF-Token": token})
    assert again.status == 404 and (await again.json())["error"] == ERRORS["no_monitor"]
    assert ("stop_monitor", SUPERVISOR) in fake.calls
    # An agent who is not a supervisor (last: the second client closes the server as it goes).
    async with _second_client(client) as agent:
        agent_token = await _login(agent, AGENT, "agent-pass")
        status, body = await _api(agent, "/supervisor/api/monitor", agent_token, {"call_key": CALL_KEY,
                                                                                  "mode": "listen"})
        assert status == 403 and body["error"] == ERRORS["not_supervisor"]
