"""Unit tests for the web console (softswitch.web.console) over aiohttp's test client and a FakeDesk,
and for the desk behind it (softswitch.control.desk.ControlDesk) over a real store."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from ivr.call_flow import Session
from ivr.live import Transfer
from softswitch.config import Agency, AgentsConfig, Config, SipConfig
from softswitch.control.desk import ControlDesk
from softswitch.domain.acd import Acd
from softswitch.domain.cases import FiledCase
from softswitch.domain.persian import jalali_datetime
from softswitch.domain.tracking_code import verhoeff_check_digit
from softswitch.web.console import ERRORS, ReasonRequired, add_console_routes
from softswitch.web.sessions import install_sessions
from softswitch.web.sessions import jalali_date_text
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.store import Store, open_store
from tests.browser.demo import CALL_KEY, NATIONAL_ID, SUBJECT_ID, add_history_cases, screen_pop, write_wav
from tests.fakes.desk import FakeDesk, fake_account

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

AGENT, AGENT_PASSWORD = "maryam", "agent-pass"
OTHER, OTHER_PASSWORD = "ali", "other-pass"
SUPERVISOR, SUPERVISOR_PASSWORD = "narges", "supervisor-pass"
WAIT_S = 5.0


@pytest.fixture
async def desk() -> AsyncIterator[FakeDesk]:
    fake = FakeDesk([(fake_account(AGENT, "مریم احمدی"), AGENT_PASSWORD),
                     (fake_account(OTHER, "علی رضایی"), OTHER_PASSWORD),
                     (fake_account(SUPERVISOR, "نرگس موسوی", supervisor=True), SUPERVISOR_PASSWORD)])
    yield fake
    await fake.close()


@pytest.fixture
async def client(desk: FakeDesk, web_store: Store) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    install_sessions(app, web_store)
    add_console_routes(app, desk, heartbeat_s=0.2)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _hidden_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no csrf field in the form"
    return match.group(1)


def _meta_csrf(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "no csrf meta"
    return match.group(1)


def _second_client(client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    """Another browser on the same server (its own cookies)."""
    return TestClient(client.server)


async def _post_login(client: TestClient[Any, Any], agent_id: str, password: str) -> ClientResponse:
    form = await client.get("/console/login")
    token = _hidden_csrf(await form.text())
    return await client.post("/console/login", data={"agent_id": agent_id, "password": password, "csrf": token},
                             allow_redirects=False)


async def _login(client: TestClient[Any, Any], agent_id: str = AGENT, password: str = AGENT_PASSWORD) -> str:
    """Log in and return the page's CSRF token for the JSON calls."""
    response = await _post_login(client, agent_id, password)
    assert response.status == 303, await response.text()
    page = await client.get(response.headers["Location"])
    assert page.status == 200
    return _meta_csrf(await page.text())


async def _api(client: TestClient[Any, Any], path: str, token: str, body: dict[str, Any] | None = None
               ) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, json=body or {}, headers={"X-CSRF-Token": token})
    return response.status, await response.json()


async def _next_data(response: ClientResponse) -> dict[str, Any]:
    """The next `data:` message of an event stream (comments skipped)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            line = (await response.content.readline()).decode()
            if line.startswith("data: "):
                result: dict[str, Any] = json.loads(line[len("data: "):])
                return result


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


# -- pages and login ---------------------------------------------------------------------------


async def test_login_page_is_persian_and_right_to_left(client: TestClient[Any, Any]) -> None:
    response = await client.get("/console/login")
    html = await response.text()
    assert response.status == 200
    assert '<html lang="fa" dir="rtl">' in html
    assert "ورود کارشناس" in html
    assert "Content-Security-Policy" in response.headers


async def test_login_sends_an_agent_to_the_desk_and_a_supervisor_to_the_board(client: TestClient[Any, Any]) -> None:
    response = await _post_login(client, AGENT, AGENT_PASSWORD)
    assert (response.status, response.headers["Location"]) == (303, "/console")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with _second_client(client) as other:
        response = await _post_login(other, SUPERVISOR, SUPERVISOR_PASSWORD)
        assert (response.status, response.headers["Location"]) == (303, "/supervisor")


async def test_wrong_password_and_unknown_agent_get_one_message(client: TestClient[Any, Any]) -> None:
    wrong = await _post_login(client, AGENT, "nope")
    unknown = await _post_login(client, "nobody", "nope")
    assert wrong.status == unknown.status == 401
    wrong_html, unknown_html = await wrong.text(), await unknown.text()
    assert ERRORS["login_failed"] in wrong_html and ERRORS["login_failed"] in unknown_html
    assert "/console" not in wrong.headers.get("Location", "")
    assert (await client.get("/console", allow_redirects=False)).status == 303  # still not logged in


async def test_failed_logins_are_throttled_per_agent_id(client: TestClient[Any, Any]) -> None:
    for _ in range(5):
        assert (await _post_login(client, AGENT, "guess")).status == 401
    throttled = await _post_login(client, AGENT, AGENT_PASSWORD)
    assert throttled.status == 429
    assert ERRORS["login_throttled"] in await throttled.text()
    assert (await _post_login(client, OTHER, OTHER_PASSWORD)).status == 303  # other ids are not affected


async def test_login_form_needs_its_token(client: TestClient[Any, Any]) -> None:
    response = await client.post("/console/login", data={"agent_id": AGENT, "password": AGENT_PASSWORD},
                                 allow_redirects=False)
    assert response.status == 400
    assert ERRORS["login_expired"] in await response.text()


async def test_pages_and_calls_need_a_login(client: TestClient[Any, Any]) -> None:
    for page in ("/console", "/supervisor"):
        response = await client.get(page, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/console/login")
    for path in ("/console/events", "/supervisor/events", "/supervisor/api/snapshot", "/console/recordings/41"):
        assert (await client.get(path)).status == 401, path
    for path in ("/console/api/agent/login", "/console/api/cases", "/console/api/cases/attach",
                 "/console/api/tracking-code", "/console/api/transfer"):
        response = await client.post(path, json={})
        assert response.status == 401, path
        assert (await response.json())["error"] == ERRORS["not_logged_in"]


async def test_supervisor_view_is_forbidden_to_an_agent(client: TestClient[Any, Any]) -> None:
    await _login(client)
    page = await client.get("/supervisor")
    assert page.status == 403
    html = await page.text()
    assert ERRORS["not_supervisor"] in html and 'dir="rtl"' in html
    assert (await client.get("/supervisor/api/snapshot")).status == 403
    assert (await client.get("/supervisor/events")).status == 403


async def test_logout_ends_the_session_and_leaves_the_queue(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    token = await _login(client)
    assert (await _api(client, "/console/api/agent/login", token))[0] == 200
    response = await client.post("/console/logout", data={"csrf": token}, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/console/login")
    assert desk.acd.agent(AGENT).state.value == "logged_out"
    assert (await client.get("/console", allow_redirects=False)).status == 303


async def test_a_cookie_saved_before_logout_opens_nothing_after_it(client: TestClient[Any, Any]) -> None:
    token = await _login(client)
    saved = {cookie.key: cookie.value for cookie in client.session.cookie_jar}
    async with _second_client(client) as other:  # the same agent in another browser
        other_token = await _login(other)
        assert (await client.post("/console/logout", data={"csrf": token}, allow_redirects=False)).status == 303
        # Logout ends the agent's sessions everywhere: the other browser is signed out too.
        assert (await other.get("/console", allow_redirects=False)).status == 303
        assert (await _api(other, "/console/api/agent/login", other_token))[0] == 401
        # Someone who copied the cookie before the logout replays it.
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies(saved)
        page = await client.get("/console", allow_redirects=False)
        assert (page.status, page.headers["Location"]) == (303, "/console/login")
        client.session.cookie_jar.update_cookies(saved)
        status, body = await _api(client, "/console/api/agent/login", token)
        assert (status, body["error"]) == (401, ERRORS["not_logged_in"])
        assert await _login(other)  # logging in again works


# -- the agent's desk ----------------------------------------------------------------------------


async def test_agent_page_is_persian_with_the_desks_agencies(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    await _login(client)
    response = await client.get("/console")
    html = await response.text()
    assert '<html lang="fa" dir="rtl">' in html
    assert "مریم احمدی" in html
    for agency in desk.agencies:
        assert f'<option value="{agency.id}">{agency.name}</option>' in html
    for category in desk.categories:
        assert category in html
    assert "ثبت پرونده" in html and "اعلام کد پیگیری به تماس‌گیرنده" in html
    assert response.headers["Cache-Control"] == "no-store"


async def test_page_data_cannot_break_out_of_its_script_block(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    pop = screen_pop()
    pop["history"][0]["summary"] = "</script><script>alert(1)</script>"
    desk.offers[AGENT] = pop
    await _login(client)
    html = await (await client.get("/console")).text()
    assert "<script>alert(1)" not in html
    assert "\\u003c/script\\u003e" in html


async def test_state_buttons_drive_the_acd(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    token = await _login(client)
    status, body = await _api(client, "/console/api/agent/ready", token)
    assert (status, body["error"]) == (409, ERRORS["transition"])  # logged out: join the queue first
    status, body = await _api(client, "/console/api/agent/login", token)
    assert (status, body["agent"]["state"]) == (200, "ready")
    status, body = await _api(client, "/console/api/agent/pause", token, {"reason": "prayer"})
    assert (status, body["agent"]["state"], body["agent"]["pause_reason"]) == (200, "paused", "prayer")
    assert desk.acd.agent(AGENT).pause_reason == "prayer"
    status, body = await _api(client, "/console/api/agent/pause", token, {"reason": "<b>"})
    assert (status, body["error"]) == (400, ERRORS["pause_reason"])
    status, body = await _api(client, "/console/api/agent/ready", token)
    assert body["agent"]["state"] == "ready"
    status, body = await _api(client, "/console/api/agent/logout", token)
    assert body["agent"]["state"] == "logged_out"


async def test_calls_need_the_sessions_csrf_token(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    await _login(client)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        response = await client.post("/console/api/agent/login", json={}, headers=headers)
        assert response.status == 403
        assert (await response.json())["error"] == ERRORS["csrf"]
    assert desk.acd.agent(AGENT).state.value == "logged_out"


async def test_events_bring_the_state_then_an_offer_with_the_full_id(client: TestClient[Any, Any],
                                                                    desk: FakeDesk) -> None:
    token = await _login(client)
    async with client.get("/console/events") as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        first = await _next_data(events)
        assert first["type"] == "state" and first["offer"] is None
        assert first["agent"]["state"] == "logged_out"

        await _api(client, "/console/api/agent/login", token)
        assert (await _next_data(events))["agent"]["state"] == "ready"

        agent_id = await desk.ring(screen_pop())
        assert agent_id == AGENT
        ringing = {message["type"]: message for message in [await _next_data(events), await _next_data(events)]}
        assert ringing["agent"]["agent"]["state"] == "ringing"
        pop = ringing["offer"]["offer"]
        assert pop["call_key"] == CALL_KEY and pop["state"] == "ringing"
        assert pop["national_id"] == NATIONAL_ID and pop["subject_id"] == SUBJECT_ID  # in full, to this agent
        assert re.fullmatch(r"[۰-۹]{4}/[۰-۹]{2}/[۰-۹]{2} [۰-۹]{2}:[۰-۹]{2}", pop["history"][0]["created_at_text"])

        desk.answer(CALL_KEY)
        kinds = {(await _next_data(events))["type"] for _ in range(2)}
        assert kinds == {"agent", "connected"}


async def test_a_reload_shows_the_current_call_again(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    desk.offer(AGENT, screen_pop())
    await _login(client)
    async with client.get("/console/events") as events:
        first = await _next_data(events)
    assert first["offer"]["call_key"] == CALL_KEY
    assert NATIONAL_ID in await (await client.get("/console")).text()


async def test_event_stream_beats_and_unsubscribes_on_disconnect(client: TestClient[Any, Any],
                                                                desk: FakeDesk) -> None:
    await _login(client)
    events = await client.get("/console/events")
    await _next_data(events)
    assert len(desk.subscribers[AGENT]) == 1
    async with asyncio.timeout(WAIT_S):
        while (line := await events.content.readline()) == b"\n":
            pass
    assert line == b": heartbeat\n"
    events.close()
    await _until(lambda: not desk.subscribers[AGENT])


async def test_shutdown_ends_open_event_streams(desk: FakeDesk, web_store: Store) -> None:
    app = web.Application()
    install_sessions(app, web_store)
    add_console_routes(app, desk, heartbeat_s=3600)  # only the shutdown can end these streams
    async with TestClient(TestServer(app)) as client:
        await _login(client, SUPERVISOR, SUPERVISOR_PASSWORD)
        agent_events = await client.get("/console/events")
        board_events = await client.get("/supervisor/events")
        await _next_data(agent_events)
        await _next_data(board_events)
        await asyncio.wait_for(client.server.close(), WAIT_S)
        assert not desk.subscribers[SUPERVISOR]


async def test_filing_a_case_goes_through_the_desk(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    desk.offer(AGENT, screen_pop())
    token = await _login(client)
    case = {"call_key": CALL_KEY, "agency_id": "municipality", "category": "شکایت",
            "summary": "  آب کوچه سه روز قطع است.  "}
    status, body = await _api(client, "/console/api/cases", token, case)
    assert status == 200
    assert desk.calls[-1] == ("file_case", AGENT, CALL_KEY, "municipality", "شکایت", "آب کوچه سه روز قطع است.")
    assert desk.call_cases[CALL_KEY] == body["tracking_code"]

    status, body = await _api(client, "/console/api/cases", token, {**case, "agency_id": "mars"})
    assert (status, body["error"]) == (400, "دستگاه انتخاب‌شده معتبر نیست.")  # the desk's own message
    status, body = await _api(client, "/console/api/cases", token, {**case, "summary": "   "})
    assert (status, body["error"]) == (400, ERRORS["empty_summary"])
    status, body = await _api(client, "/console/api/cases", token, {**case, "summary": 7})
    assert status == 400
    status, body = await _api(client, "/console/api/cases", token, {**case, "call_key": "someone-elses"})
    assert (status, body["error"]) == (403, ERRORS["not_your_call"])


async def test_attach_then_give_the_tracking_code(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    pop = screen_pop()
    add_history_cases(desk, pop)
    desk.offer(AGENT, pop)
    token = await _login(client)
    status, body = await _api(client, "/console/api/tracking-code", token, {"call_key": CALL_KEY})
    assert (status, body["error"]) == (409, ERRORS["no_case_yet"])

    known = pop["history"][0]["tracking_code"]
    typo = known[:-2] + known[-1] + known[-2]
    if typo != known:  # a swapped pair of digits fails the check digit before reaching the desk
        status, body = await _api(client, "/console/api/cases/attach", token,
                                  {"call_key": CALL_KEY, "tracking_code": typo})
        assert (status, body["error"]) == (400, ERRORS["bad_tracking_code"])
    status, body = await _api(client, "/console/api/cases/attach", token,
                              {"call_key": CALL_KEY, "tracking_code": "100000000"})
    assert (status, body["error"]) == (404, ERRORS["no_such_case"])

    persian = known.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))
    status, body = await _api(client, "/console/api/cases/attach", token,
                              {"call_key": CALL_KEY, "tracking_code": persian})
    assert (status, body["tracking_code"]) == (200, known)
    assert desk.calls[-1] == ("attach_case", AGENT, CALL_KEY, known)

    status, body = await _api(client, "/console/api/tracking-code", token, {"call_key": CALL_KEY})
    assert (status, body["tracking_code"]) == (200, known)
    assert desk.calls[-1] == ("give_tracking_code", AGENT, CALL_KEY)

    # Handing the call to a colleague: named on the page, asked by id; an unknown one, or another's call, refused.
    html = await (await client.get("/console")).text()
    assert 'id="transfer-form"' in html and f'<option value="{OTHER}">' in html and f'<option value="{AGENT}">' not in html
    assert '<option value="queue">' in html
    status, body = await _api(client, "/console/api/transfer", token, {"call_key": CALL_KEY, "agent_id": OTHER})
    assert (status, body) == (200, {"transferring_to": OTHER, "consult": False})
    assert desk.calls[-1] == ("transfer", AGENT, CALL_KEY, OTHER, False)
    for wrong in ({"agent_id": "queue", "consult": True}, {"agent_id": OTHER, "consult": "yes"}):
        status, _ = await _api(client, "/console/api/transfer", token, {"call_key": CALL_KEY, **wrong})
        assert status == 400
    status, body = await _api(client, "/console/api/transfer", token, {"call_key": CALL_KEY, "agency_id": "health"})
    assert (status, body["error"]) == (404, ERRORS["unknown_colleague"])  # no line of its own
    status, body = await _api(client, "/console/api/transfer/complete", token, {"call_key": CALL_KEY})
    assert (status, body) == (200, {"consultation": "completing"})
    assert desk.calls[-1] == ("end_consultation", AGENT, CALL_KEY, True)
    status, body = await _api(client, "/console/api/transfer", token, {"call_key": CALL_KEY, "agent_id": "nobody"})
    assert (status, body["error"]) == (404, ERRORS["unknown_colleague"])
    status, body = await _api(client, "/console/api/transfer", token, {"call_key": "not-mine", "agent_id": OTHER})
    assert status == 403


async def test_a_duplicate_gives_the_existing_code_and_may_be_filed_separately(client: TestClient[Any, Any],
                                                                            desk: FakeDesk) -> None:
    case = {"agency_id": "health", "category": "شکایت", "summary": "نوبت جراحی پدرم سه بار عقب افتاده است."}
    desk.offer(AGENT, screen_pop(call_key="first-call"))
    token = await _login(client)
    status, first = await _api(client, "/console/api/cases", token, {**case, "call_key": "first-call"})
    assert (status, first["duplicate"]) == (200, False)

    desk.offer(AGENT, screen_pop())  # the same subject calls again about the same matter
    status, body = await _api(client, "/console/api/cases", token, {**case, "call_key": CALL_KEY})
    assert (status, body) == (200, {"tracking_code": first["tracking_code"], "duplicate": True})
    assert (desk.current_offer(AGENT) or {})["case"] == {"tracking_code": first["tracking_code"], "duplicate": True}
    html = await (await client.get("/console")).text()
    assert "این درخواست قبلاً ثبت شده است" in html and "ثبت جداگانه" in html
    status, body = await _api(client, "/console/api/tracking-code", token, {"call_key": CALL_KEY})
    assert (status, body["tracking_code"]) == (200, first["tracking_code"])  # the existing code is read out

    status, body = await _api(client, "/console/api/cases", token,
                              {**case, "call_key": CALL_KEY, "override_reason": "   "})
    assert (status, body["error"]) == (400, ERRORS["empty_reason"])
    status, body = await _api(client, "/console/api/cases", token,
                              {**case, "call_key": CALL_KEY, "override_reason": "x" * 501})
    assert status == 400
    reason = "  موضوع تازه‌ای است: جراحی دوم، بیمارستان دیگر.  "
    status, body = await _api(client, "/console/api/cases", token,
                              {**case, "call_key": CALL_KEY, "override_reason": reason})
    assert status == 200 and body["duplicate"] is False and body["tracking_code"] != first["tracking_code"]
    assert desk.calls[-1] == ("file_case", AGENT, CALL_KEY, "health", "شکایت", case["summary"], reason.strip())


async def test_referring_again_a_case_the_agent_can_see(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    pop = screen_pop()
    add_history_cases(desk, pop)
    desk.offer(AGENT, pop)
    token = await _login(client)
    earlier = pop["subject_history"][0]["tracking_code"]
    persian = earlier.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))
    status, body = await _api(client, "/console/api/cases/refer", token,
                              {"tracking_code": persian, "agency_id": "social-security"})
    assert (status, body["tracking_code"]) == (200, earlier)
    assert desk.calls[-1] == ("refer_case", AGENT, earlier, "social-security")
    assert desk.cases[earlier]["agency_id"] == "social-security"

    status, body = await _api(client, "/console/api/cases/refer", token,
                              {"tracking_code": earlier, "agency_id": "mars"})
    assert (status, body["error"]) == (400, "دستگاه انتخاب‌شده معتبر نیست.")
    status, body = await _api(client, "/console/api/cases/refer", token,
                              {"tracking_code": "100000000", "agency_id": "health"})
    assert (status, body["error"]) == (403, ERRORS["not_your_case"])  # not in this agent's view
    status, body = await _api(client, "/console/api/cases/refer", token,
                              {"tracking_code": "12345", "agency_id": "health"})
    assert (status, body["error"]) == (400, ERRORS["bad_tracking_code"])
    response = await client.post("/console/api/cases/refer", json={"tracking_code": earlier, "agency_id": "health"})
    assert response.status == 403  # no CSRF token


async def test_recordings_only_of_the_agents_own_call(client: TestClient[Any, Any], desk: FakeDesk,
                                                      tmp_path: Path) -> None:
    desk.recordings[41] = write_wav(tmp_path / "41.wav", 0.2)
    desk.recordings[99] = write_wav(tmp_path / "99.wav", 0.2)  # exists, but not of this call
    desk.offer(AGENT, screen_pop())
    await _login(client)
    response = await client.get("/console/recordings/41")
    assert response.status == 200
    assert (await response.read())[:4] == b"RIFF"
    assert response.headers["Cache-Control"] == "no-store"
    assert (await client.get("/console/recordings/99")).status == 404
    assert (await client.get("/console/recordings/42")).status == 404  # of this call, but no file
    assert (await client.get("/console/recordings/x")).status == 404

    async with _second_client(client) as other:
        await _login(other, OTHER, OTHER_PASSWORD)
        assert (await other.get("/console/recordings/41")).status == 404


# -- the supervisor's board -------------------------------------------------------------------------


async def test_supervisor_board_and_snapshot(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    desk.acd.login(AGENT)
    await desk.ring(screen_pop())
    await _login(client, SUPERVISOR, SUPERVISOR_PASSWORD)
    page = await client.get("/supervisor")
    html = await page.text()
    assert page.status == 200 and '<html lang="fa" dir="rtl">' in html and "نمای سرپرست" in html
    assert NATIONAL_ID not in html and "09121234567" not in html
    snapshot = await (await client.get("/supervisor/api/snapshot")).json()
    assert snapshot["queue"][0]["caller"] == "*******4567"
    assert len(snapshot["today"]["per_hour"]) == 24 and 0 <= snapshot["local_hour"] <= 23
    assert {a["id"]: a["state"] for a in snapshot["agents"]}[AGENT] == "ringing"
    # A caller who chose a language is shown with it, by its name.
    desk.acd.join("k-en", "09120000000", skills=["lang:en"])
    snapshot = await (await client.get("/supervisor/api/snapshot")).json()
    assert [q["needs"] for q in snapshot["queue"]] == [[], ["انگلیسی"]]


async def test_supervisor_events_bring_fresh_snapshots(client: TestClient[Any, Any], desk: FakeDesk) -> None:
    await _login(client, SUPERVISOR, SUPERVISOR_PASSWORD)
    async with client.get("/supervisor/events") as events:
        first = await _next_data(events)
        assert first["type"] == "snapshot"
        assert {a["id"]: a["state"] for a in first["snapshot"]["agents"]}[OTHER] == "logged_out"
        desk.acd.login(OTHER)
        fresh = await _next_data(events)
        assert {a["id"]: a["state"] for a in fresh["snapshot"]["agents"]}[OTHER] == "ready"


# -- Persian dates ------------------------------------------------------------------------------------


def test_jalali_dates_with_persian_digits() -> None:
    from zoneinfo import ZoneInfo

    nowruz_1404 = 1742502600.0  # 2025-03-21 00:00 in Tehran (UTC+3:30)
    tehran = ZoneInfo("Asia/Tehran")
    assert jalali_datetime(nowruz_1404 + 9 * 3600 + 5 * 60, tehran) == "۱۴۰۴/۰۱/۰۱ ۰۹:۰۵"
    assert jalali_date_text(nowruz_1404, tehran) == "جمعه ۱ فروردین ۱۴۰۴"


# -- the desk behind the console, over a real store --------------------------------------------------


class SpokenCodes:
    """Prompts that are their own names, and a channel that keeps what it was told to play."""

    def __init__(self) -> None:
        self.played: list[list[Path]] = []
        self.transfers: list[Transfer] = []  # what the desk asked of the call

    def path(self, name: str) -> Path:
        return Path(name)

    def number(self, digits: str) -> list[Path]:
        return [Path(f"digit_{d}") for d in digits]

    async def play(self, files: list[Path], interrupt: str = "") -> None:
        self.played.append(files)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.db", IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as opened:
        yield opened


@pytest.fixture
def voice() -> SpokenCodes:
    return SpokenCodes()


@pytest.fixture
async def control_desk(store: Store, voice: SpokenCodes) -> AsyncIterator[ControlDesk]:
    config = Config(agents=AgentsConfig(accounts=(fake_account(AGENT, "مریم احمدی"),)))
    acd = Acd(config.agents, config.queue)
    desk = ControlDesk(config, store, acd, voice)
    yield desk
    await desk.close()
    acd.close()


async def _desk_call(desk: ControlDesk, store: Store, key: str, voice: SpokenCodes,
                     subject: PersonId | None = None) -> int:
    """A caller with a verified ID, connected to AGENT, with a message recording of its own."""
    call_id = await store.add_call(f"{key}@trunk", "sip:09121234567@trunk", "sip:111@sw", "127.0.0.1", 0, 1.0)
    await store.add_recording(call_id, None, "national_id_utterance", f"/{key}.wav", 2.0, "ab" * 32, True)
    desk.track(key, call_id, "09121234567", Session(caller=PersonId(NATIONAL_ID, "keypad", "verified"),
                                                   subject=subject))
    await desk.offer(key, AGENT, 3.0)
    desk.connected(key, AGENT, voice, voice,  # type: ignore[arg-type]  # (no agent leg: no supervisor joins)
                   voice.transfers.append)
    return call_id


async def test_control_desk_links_a_duplicate_and_files_separately_with_a_reason(
        store: Store, control_desk: ControlDesk, voice: SpokenCodes) -> None:
    desk = control_desk
    first_call = await _desk_call(desk, store, "first", voice)
    first = await desk.file_case(AGENT, "first", "health", "شکایت", "نوبت جراحی عقب افتاده است.")
    assert first == FiledCase(first.tracking_code, duplicate=False)
    await desk.finished("first", AGENT, None)
    first_case = await store.get_case(first.tracking_code)
    assert (first_case.status, first_case.agency, first_case.call_id) == ("referred", "health", first_call)

    second_call = await _desk_call(desk, store, "second", voice)
    with pytest.raises(PermissionError):
        await desk.file_case(OTHER, "second", "health", "شکایت", "x")
    again = await desk.file_case(AGENT, "second", "health", "شکایت", "باز هم درباره نوبت جراحی.")
    assert again == FiledCase(first.tracking_code, duplicate=True)
    assert (desk.current_offer(AGENT) or {})["case"] == {"tracking_code": first.tracking_code, "duplicate": True}
    contact = (await store.case_events(first_case.id))[-1]
    assert (contact.kind, contact.actor, contact.detail["call_id"]) == ("contact", f"agent:{AGENT}", second_call)
    assert await desk.give_tracking_code(AGENT, "second") == first.tracking_code
    await asyncio.sleep(0)
    assert voice.played[-1][1:10] == [Path(f"digit_{d}") for d in first.tracking_code]
    # Filed the same way again: still the same link, no second contact.
    assert (await desk.file_case(AGENT, "second", "health", "شکایت", "همان")).duplicate
    assert [e.kind for e in await store.case_events(first_case.id)].count("contact") == 1

    with pytest.raises(ValueError, match="دلیل"):
        await desk.file_case(AGENT, "second", "health", "شکایت", "x", override_reason="  ")
    reason = "جراحی دیگری است، در بیمارستان دیگر."
    separate = await desk.file_case(AGENT, "second", "health", "شکایت", "جراحی دوم.", override_reason=reason)
    assert not separate.duplicate and separate.tracking_code != first.tracking_code
    await desk.finished("second", AGENT, None)
    new_case = await store.get_case(separate.tracking_code)
    assert new_case.call_id == second_call
    for case, other in ((new_case, first.tracking_code), (first_case, separate.tracking_code)):
        notes = [e.detail for e in await store.case_events(case.id) if e.kind == "duplicate_override"]
        assert [(n["reason"], n.get("of") or n.get("case")) for n in notes] == [(reason, other)]
    # The second call's recordings went with its own case, not with the case it first looked like.
    assert [r.call_id for r in await store.recordings_for_case(new_case.id)] == [second_call]
    assert {r.call_id for r in await store.recordings_for_case(first_case.id)} == {first_call}


async def test_control_desk_refers_again_only_cases_the_agent_sees(store: Store, control_desk: ControlDesk,
                                                                    voice: SpokenCodes) -> None:
    desk = control_desk
    stranger = await store.create_case(None, "received", SUBJECT_ID, "keypad")
    earlier = await store.create_case(None, "received", NATIONAL_ID, "keypad")
    await _desk_call(desk, store, "call", voice)  # the screen-pop's history holds the earlier case
    case = await store.get_case(await desk.refer_case(AGENT, earlier.tracking_code, "roads"))
    assert (case.agency, case.status) == ("roads", "referred")
    event = (await store.case_events(case.id))[-1]
    assert (event.kind, event.actor, event.detail["to"]) == ("referred", f"agent:{AGENT}", "roads")
    with pytest.raises(ValueError, match="همین دستگاه"):
        await desk.refer_case(AGENT, earlier.tracking_code, "roads")
    with pytest.raises(ValueError):
        await desk.refer_case(AGENT, earlier.tracking_code, "mars")
    with pytest.raises(PermissionError):
        await desk.refer_case(AGENT, stranger.tracking_code, "roads")
    with pytest.raises(PermissionError):
        await desk.refer_case(OTHER, earlier.tracking_code, "roads")


# -- attaching a call to someone else's case needs a reason; typed text is cleaned ----------------

STRANGERS_CODE = "10000000" + verhoeff_check_digit("10000000")  # a case of neither the caller nor the subject

async def test_attaching_another_persons_case_asks_for_a_reason(client: TestClient[Any, Any],
                                                                 desk: FakeDesk) -> None:
    pop = screen_pop()
    add_history_cases(desk, pop)
    stranger = STRANGERS_CODE
    desk.cases[stranger] = {"tracking_code": stranger, "status": "referred", "subject": "0084575948"}
    desk.offer(AGENT, pop)
    token = await _login(client)
    for reason in (None, "", "   "):
        body = {"call_key": CALL_KEY, "tracking_code": stranger} | ({} if reason is None else {"reason": reason})
        status, answer = await _api(client, "/console/api/cases/attach", token, body)
        assert (status, answer["code"], answer["error"]) == (403, "attach_reason", ERRORS["attach_reason"])
    assert CALL_KEY not in desk.call_cases
    status, answer = await _api(client, "/console/api/cases/attach", token,
                                {"call_key": CALL_KEY, "tracking_code": stranger, "reason": 7})
    assert status == 400
    reason = "پدر تماس‌گیرنده است؛ کد ملی اشتباه ثبت شده بود."
    status, answer = await _api(client, "/console/api/cases/attach", token,
                                {"call_key": CALL_KEY, "tracking_code": stranger, "reason": f"  {reason} "})
    assert (status, answer["tracking_code"]) == (200, stranger)
    assert desk.calls[-1] == ("attach_case", AGENT, CALL_KEY, stranger, reason)
    assert desk.cases[stranger]["attach_reasons"] == [reason]



async def test_control_desk_attaches_only_the_callers_or_subjects_cases_without_a_reason(
        store: Store, control_desk: ControlDesk, voice: SpokenCodes) -> None:
    desk = control_desk
    own = await store.create_case(None, "received", NATIONAL_ID, "keypad")
    subjects = await store.create_case(None, "received", SUBJECT_ID, "keypad")
    stranger = await store.create_case(None, "referred", "0084575948", "keypad", agency="health")
    call_id = await _desk_call(desk, store, "mine", voice)
    assert await desk.attach_case(AGENT, "mine", own.tracking_code) == own.tracking_code
    assert [e.kind for e in await store.case_events(own.id)][-1] == "contact"

    await _desk_call(desk, store, "about-father", voice, subject=PersonId(SUBJECT_ID, "keypad", "verified"))
    assert await desk.attach_case(AGENT, "about-father", subjects.tracking_code) == subjects.tracking_code

    other_call = await _desk_call(desk, store, "other", voice)
    for reason in (None, "", " \u202e\u200f "):
        with pytest.raises(ReasonRequired):
            await desk.attach_case(AGENT, "other", stranger.tracking_code, reason)
    assert all(e.kind != "contact" for e in await store.case_events(stranger.id))
    assert await store.recordings_for_case(stranger.id) == []
    # With a reason: attached, and the reason (cleaned) is in the case's history.
    code = await desk.attach_case(AGENT, "other", stranger.tracking_code, "\u202eهمسر\u202c صاحب پرونده است\x07")
    assert code == stranger.tracking_code
    events = await store.case_events(stranger.id)
    assert [(e.kind, e.actor) for e in events[-2:]] == [("contact", f"agent:{AGENT}"),
                                                        ("attach_override", f"agent:{AGENT}")]
    assert events[-1].detail == {"call_id": other_call, "reason": "همسر صاحب پرونده است"}
    assert [r.call_id for r in await store.recordings_for_case(stranger.id)] == [other_call]
    assert call_id != other_call


async def test_control_desk_keeps_bidi_controls_out_of_summaries_and_reasons(
        store: Store, control_desk: ControlDesk, voice: SpokenCodes) -> None:
    desk = control_desk
    await _desk_call(desk, store, "first", voice)
    first = await desk.file_case(AGENT, "first", "health", "شکایت", "\u202eنوبت\u202c جراحی\u2067 عقب\u2069 افتاده\x1b")
    await desk.finished("first", AGENT, None)
    assert (await store.get_case(first.tracking_code)).summary == "نوبت جراحی عقب افتاده"
    with pytest.raises(ValueError, match="خلاصه"):
        await desk.file_case(AGENT, "first", "health", "شکایت", "\u202e\u200e\u061c")
    await _desk_call(desk, store, "second", voice)
    separate = await desk.file_case(AGENT, "second", "health", "شکایت", "جراحی دوم",
                                    override_reason="\u2066بیمارستان\u2069 دیگر\u200f")
    notes = [e.detail["reason"] for e in await store.case_events((await store.get_case(separate.tracking_code)).id)
             if e.kind == "duplicate_override"]
    assert notes == ["بیمارستان دیگر"]
    with pytest.raises(ValueError, match="دلیل"):
        await desk.file_case(AGENT, "second", "health", "شکایت", "x", override_reason="\u202a\u202c")


def _drain(events: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    while not events.empty():
        found.append(events.get_nowait())
    return [e for e in found if e.get("type") != "agent"]


async def test_a_connected_call_is_handed_to_a_ready_agent_and_the_case_history_says_so(
        store: Store, voice: SpokenCodes) -> None:
    other = "1002"
    config = Config(agents=AgentsConfig(accounts=(fake_account(AGENT, "مریم احمدی"), fake_account(other, "علی رضایی"))))
    acd = Acd(config.agents, config.queue)
    desk = ControlDesk(config, store, acd, voice)
    try:
        first, second = desk.subscribe(AGENT), desk.subscribe(other)
        await _desk_call(desk, store, "k1", voice)
        with pytest.raises(ValueError, match="آماده"):
            await desk.transfer(AGENT, "k1", other)  # logged out
        with pytest.raises(LookupError):
            await desk.transfer(AGENT, "k1", "nobody")
        with pytest.raises(PermissionError):
            await desk.transfer(other, "k1", AGENT)  # not the other's call
        acd.login(other)
        await desk.transfer(AGENT, "k1", other)
        assert voice.transfers == [Transfer("hand", other)]
        with pytest.raises(ValueError, match="در جریان"):
            await desk.transfer(AGENT, "k1", other)
        _drain(first), _drain(second)
        await desk.transfer_ringing("k1", AGENT, other, False)
        (offer,) = _drain(second)
        assert offer["type"] == "offer" and offer["transferred_from"] == AGENT and offer["national_id"] == NATIONAL_ID
        await desk.transfer_done("k1", AGENT, other, voice)  # type: ignore[arg-type]
        assert [e["type"] for e in _drain(first)] == ["transfer", "call_ended"]
        assert [e["type"] for e in _drain(second)] == ["connected"]
        assert desk.current_offer(AGENT) is None and desk.current_offer(other)["call_key"] == "k1"  # type: ignore[index]
        # The second agent sends the caller back to the queue: noted, said, asked of the call.
        await desk.transfer(other, "k1", "queue")
        assert voice.transfers == [Transfer("hand", other), Transfer("hand", "queue")]
        assert [(e["type"], e["state"]) for e in _drain(second)] == [("transfer", "to_queue")]
        code = await desk.finished("k1", other, None)
        assert code is not None
        case = await store.get_case(code)
        assert case is not None
        moves = [e.detail for e in await store.case_events(case.id) if e.kind == "transferred"]
        assert [(m["from_agent"], m["to_agent"]) for m in moves] == [(AGENT, other), (other, "queue")]
    finally:
        await desk.close()
        acd.close()


async def test_a_call_handed_to_an_agencys_line_is_a_case_at_once_and_its_history_names_the_agency(
        store: Store, voice: SpokenCodes) -> None:
    config = Config(sip=SipConfig(outbound_trunk="127.0.0.1:5090"),
                    agents=AgentsConfig(accounts=(fake_account(AGENT, "مریم احمدی"),)),
                    agencies=(Agency(id="health", name="وزارت بهداشت", phone="02161920000"),
                              Agency(id="roads", name="وزارت راه")))
    acd = Acd(config.agents, config.queue)
    desk = ControlDesk(config, store, acd, voice)
    try:
        events = desk.subscribe(AGENT)
        await _desk_call(desk, store, "k1", voice)
        with pytest.raises(LookupError):
            await desk.transfer(AGENT, "k1", "agency:roads")  # no line of its own
        with pytest.raises(ValueError, match="مشورتی"):
            await desk.end_consultation(AGENT, "k1", True)  # nothing to end
        await desk.transfer(AGENT, "k1", "agency:health", consult=True)
        assert voice.transfers == [Transfer("consult", "agency:health", "02161920000")]
        assert desk.current_offer(AGENT)["transferring"] == "agency:health"  # type: ignore[index]
        _drain(events)
        await desk.transfer_ringing("k1", AGENT, "agency:health", True)
        desk.consulting("k1", AGENT, "agency:health")
        assert [(e["type"], e["state"]) for e in _drain(events)] == [("transfer", "ringing"), ("transfer", "consulting")]
        await desk.end_consultation(AGENT, "k1", True)
        assert voice.transfers[-1] == Transfer("complete")
        with pytest.raises(ValueError, match="مشورتی"):
            await desk.end_consultation(AGENT, "k1", False)  # asked once
        await desk.transfer_done("k1", AGENT, "agency:health", voice)  # type: ignore[arg-type]
        (ended,) = _drain(events)
        # The agent wraps up with the case opened already, while the caller talks with the agency: the call is
        # still on its console, ended for it, and its matter can be completed but not read to the agency.
        assert ended["reason"] == "transferred" and ended["tracking_code"]
        assert desk.current_offer(AGENT)["state"] == "ended"  # type: ignore[index]
        with pytest.raises(ValueError, match="پایان"):
            await desk.give_tracking_code(AGENT, "k1")
        filed = await desk.file_case(AGENT, "k1", "health", config.categories[0], "نوبت جراحی")
        assert filed.tracking_code == ended["tracking_code"]
        assert await desk.finished("k1", None, None) == ended["tracking_code"]
        assert [e["type"] for e in _drain(events)] == ["case_filed"]
        case = await store.get_case(ended["tracking_code"])
        assert (case.agency, case.summary, case.status) == ("health", "نوبت جراحی", "referred")
        moves = [e.detail for e in await store.case_events(case.id) if e.kind == "transferred"]
        assert [(m["from_agent"], m["to_agency"]) for m in moves] == [(AGENT, "health")]
    finally:
        await desk.close()
        acd.close()


def test_an_agencys_phone_needs_the_outbound_trunk_and_may_not_be_an_agents_id() -> None:
    phoned = (Agency(id="health", name="وزارت بهداشت", phone="1001"),)
    with pytest.raises(ValueError, match="outbound_trunk"):
        Config(agencies=phoned)
    with pytest.raises(ValueError, match="agent's id"):
        Config(sip=SipConfig(outbound_trunk="127.0.0.1:5090"), agencies=phoned,
               agents=AgentsConfig(accounts=(fake_account("1001", "مریم احمدی"),)))
