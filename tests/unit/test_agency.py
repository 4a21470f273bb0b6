"""Unit tests for the agencies' page (softswitch.web.agency): aiohttp's test server over a real SQLite store in tmp."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, FormData, web
from aiohttp.test_utils import TestClient, TestServer

from media.synth import EspeakSynthesizer
from media.wavfile import is_silence, read_format
from softswitch.config import Agency, AgencyUser
from softswitch.domain.sms import ANSWER_READY, TRACKING_CODE, sms_text
from softswitch.web import agency as agency_module
from softswitch.web.agency import AGENCY_ERRORS, AgencyServices, add_agency_routes
from softswitch.web.console import ERRORS, add_console_routes
from softswitch.web.sessions import install_sessions
from softswitch.web.credentials import hash_password
from storage.crypto import IdProtector
from storage.models import Case, PersonId
from storage.store import Store, open_store
from tests.browser.demo import write_wav
from tests.fakes.desk import FakeDesk, fake_account
from tests.unit.test_synth import crafted_wav

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

HEALTH_USER, HEALTH_PASSWORD = "sara", "health-pass"
ROADS_USER, ROADS_PASSWORD = "reza", "roads-pass"
AGENT, AGENT_PASSWORD = "maryam", "agent-pass"
SUBJECT_ID = "0499370899"
OTHER_ID = "0790419904"
WINDOW_S = 30 * 86400.0
ANSWER = "پاسخ وزارت بهداشت: نوبت جراحی شما به بیمارستان امام منتقل شد؛ روز شنبه مراجعه کنید."
AGENCIES = (
    Agency(id="health", name="وزارت بهداشت", users=(AgencyUser(id=HEALTH_USER, name="سارا کریمی",
                                                               password=hash_password(HEALTH_PASSWORD)),)),
    Agency(id="roads", name="وزارت راه و شهرسازی", users=(AgencyUser(id=ROADS_USER, name="رضا نوری",
                                                                      password=hash_password(ROADS_PASSWORD)),)),
    Agency(id="energy", name="وزارت نیرو"),
)


@dataclass
class World:
    store: Store
    client: TestClient[web.Request, web.Application]
    health_case: Case
    roads_case: Case
    recordings: dict[str, int]  # kind -> recording id of the health case
    answers_dir: Path


async def _referred_case(store: Store, tmp_path: Path, agency: str, national_id: str, sip_id: str) -> Case:
    call_id = await store.add_call(sip_id, "sip:09121234567@trunk", "sip:111@softswitch", "127.0.0.1", 0, 1.0)
    result = await store.intake(PersonId(national_id, "keypad", "verified"), channel="phone", agency=agency,
                                category="شکایت", summary="نوبت جراحی پدرم سه بار عقب افتاده است.",
                                actor="agent:1001", window_s=WINDOW_S, call_id=call_id)
    return result.case


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    protector = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
    async with open_store(tmp_path / "store.db", protector) as store:
        health = await _referred_case(store, tmp_path, "health", SUBJECT_ID, "a@trunk")
        roads = await _referred_case(store, tmp_path, "roads", OTHER_ID, "b@trunk")
        recordings = {}
        for kind in ("national_id_utterance", "message", "conversation"):
            path = write_wav(tmp_path / f"{kind}.wav", 0.5)
            recording = await store.add_recording(health.call_id or 0, health.id, kind, str(path), 0.5, "ab" * 32,
                                                  True)
            recordings[kind] = recording.id
        answers = tmp_path / "answers"
        app = web.Application()
        desk = FakeDesk([(fake_account(AGENT, "مریم احمدی"), AGENT_PASSWORD)])
        install_sessions(app, store)
        add_console_routes(app, desk)
        add_agency_routes(app, AgencyServices(store, AGENCIES, EspeakSynthesizer(), answers))
        async with TestClient(TestServer(app)) as client:
            yield World(store, client, health, roads, recordings, answers)
        await desk.close()


def _field(html: str, pattern: str) -> str:
    match = re.search(pattern, html)
    assert match, f"no {pattern} in the page"
    return match.group(1)


async def _post_login(client: TestClient[Any, Any], agency_id: str, user_id: str, password: str) -> ClientResponse:
    token = _field(await (await client.get("/agency/login")).text(), r'name="csrf" value="([^"]+)"')
    return await client.post("/agency/login", data={"agency_id": agency_id, "user_id": user_id,
                                                    "password": password, "csrf": token}, allow_redirects=False)


async def _login(client: TestClient[Any, Any], agency_id: str = "health", user_id: str = HEALTH_USER,
                 password: str = HEALTH_PASSWORD) -> str:
    """Log in and return the page's CSRF token for the state-changing calls."""
    response = await _post_login(client, agency_id, user_id, password)
    assert (response.status, response.headers["Location"]) == (303, "/agency"), await response.text()
    page = await client.get("/agency")
    assert page.status == 200
    return _field(await page.text(), r'<meta name="csrf-token" content="([^"]+)"')


async def _answer(client: TestClient[Any, Any], code: str, token: str | None, **fields: Any) -> ClientResponse:
    form = FormData(default_to_multipart=True)  # as a browser sends it
    for name, value in fields.items():
        if isinstance(value, Path):
            form.add_field(name, value.read_bytes(), filename=value.name, content_type="application/octet-stream")
        else:
            form.add_field(name, value)
    headers = {} if token is None else {"X-CSRF-Token": token}
    return await client.post(f"/agency/api/cases/{code}/answer", data=form, headers=headers)


async def _set_status(client: TestClient[Any, Any], code: str, token: str, status: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(f"/agency/api/cases/{code}/status", json={"status": status},
                                 headers={"X-CSRF-Token": token})
    return response.status, await response.json()


# -- login and who sees what ---------------------------------------------------------------


async def test_login_page_is_persian_and_lists_agencies_with_users(world: World) -> None:
    response = await world.client.get("/agency/login")
    html = await response.text()
    assert response.status == 200 and '<html lang="fa" dir="rtl">' in html and "ورود کاربر دستگاه" in html
    assert '<option value="health">وزارت بهداشت</option>' in html
    assert 'value="energy"' not in html  # no users, nobody can log in for it
    assert "Content-Security-Policy" in response.headers


async def test_wrong_password_wrong_agency_and_throttling(world: World) -> None:
    client = world.client
    assert (await _post_login(client, "health", HEALTH_USER, "nope")).status == 401
    unknown = await _post_login(client, "roads", HEALTH_USER, HEALTH_PASSWORD)  # a user of another agency
    assert unknown.status == 401 and ERRORS["login_failed"] in await unknown.text()
    for _ in range(4):
        await _post_login(client, "health", HEALTH_USER, "guess")
    throttled = await _post_login(client, "health", HEALTH_USER, HEALTH_PASSWORD)
    assert throttled.status == 429 and ERRORS["login_throttled"] in await throttled.text()
    assert (await _post_login(client, "roads", ROADS_USER, ROADS_PASSWORD)).status == 303


async def test_pages_need_a_login(world: World) -> None:
    code = world.health_case.tracking_code
    for path in ("/agency", f"/agency/cases/{code}", f"/agency/cases/{code}/answer.wav"):
        response = await world.client.get(path, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/agency/login"), path
    response = await world.client.post(f"/agency/api/cases/{code}/status", json={"status": "closed"})
    assert response.status == 401 and (await response.json())["error"] == ERRORS["not_logged_in"]


async def test_the_list_holds_the_agencys_own_cases_with_masked_ids(world: World) -> None:
    await _login(world.client)
    html = await (await world.client.get("/agency")).text()
    assert "سارا کریمی" in html and "پرونده‌های ارجاع‌شده به وزارت بهداشت" in html
    assert f'data-tracking-code="{world.health_case.tracking_code}"' in html
    assert world.roads_case.tracking_code not in html
    assert SUBJECT_ID not in html and "********۹۹" in html  # masked, in Persian digits
    assert re.search(r"[۰-۹]{4}/[۰-۹]{2}/[۰-۹]{2} [۰-۹]{2}:[۰-۹]{2}", html)
    assert "ارجاع‌شده" in html
    closed_only = await (await world.client.get("/agency?status=closed")).text()
    assert 'data-test="case-row"' not in closed_only and "پرونده‌ای با این وضعیت نیست" in closed_only


async def test_another_agencys_case_is_not_found(world: World) -> None:
    token = await _login(world.client)
    code = world.roads_case.tracking_code
    page = await world.client.get(f"/agency/cases/{code}")
    assert page.status == 404 and AGENCY_ERRORS["no_such_case"] in await page.text()
    assert (await world.client.get("/agency/cases/123456789")).status == 404
    assert (await world.client.get(f"/agency/cases/{code}/answer.wav")).status == 404
    response = await _answer(world.client, code, token, mode="text", text=ANSWER)
    assert response.status == 404 and (await response.json())["error"] == AGENCY_ERRORS["no_such_case"]
    assert (await _set_status(world.client, code, token, "closed"))[0] == 404
    assert (await world.store.get_case(code)).status == "referred"


async def test_roles_stay_apart_on_the_one_cookie(world: World) -> None:
    client = world.client
    await _login(client)
    response = await client.get("/console", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/agency")
    assert (await client.post("/console/api/agent/login", json={})).status == 401

    agent: TestClient[Any, Any]
    async with TestClient(client.server) as agent:
        form = await agent.get("/console/login")
        token = _field(await form.text(), r'name="csrf" value="([^"]+)"')
        login = await agent.post("/console/login", data={"agent_id": AGENT, "password": AGENT_PASSWORD,
                                                         "csrf": token}, allow_redirects=False)
        assert login.status == 303
        response = await agent.get("/agency", allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/console")
        code = world.health_case.tracking_code
        assert (await agent.get(f"/agency/cases/{code}", allow_redirects=False)).status == 303
        assert (await agent.post(f"/agency/api/cases/{code}/status", json={"status": "closed"})).status == 401


# -- the case ------------------------------------------------------------------------------


async def test_case_page_shows_details_history_and_the_callers_recordings(world: World) -> None:
    await _login(world.client)
    code = world.health_case.tracking_code
    html = await (await world.client.get(f"/agency/cases/{code}")).text()
    assert "نوبت جراحی پدرم" in html and "شکایت" in html and "تلفن ۱۱۱" in html
    assert SUBJECT_ID not in html and "********۹۹" in html
    assert "کارشناس ۱۰۰۱" in html and "ثبت درخواست" in html  # who created it, in the history
    ids = set(map(int, re.findall(r'data-recording-id="(\d+)"', html)))
    assert ids == {world.recordings["message"], world.recordings["conversation"]}

    message = await world.client.get(f"/agency/cases/{code}/recordings/{world.recordings['message']}")
    assert message.status == 200 and (await message.read())[:4] == b"RIFF"
    assert message.headers["Cache-Control"] == "no-store"
    # The spoken-ID attempts say the ID in full: never served to an agency.
    spoken_id = world.recordings["national_id_utterance"]
    assert (await world.client.get(f"/agency/cases/{code}/recordings/{spoken_id}")).status == 404
    other = world.roads_case.tracking_code
    assert (await world.client.get(f"/agency/cases/{other}/recordings/{world.recordings['message']}")).status == 404


async def test_text_answer_is_synthesised_and_kept_with_its_text(world: World) -> None:
    token = await _login(world.client)
    code = world.health_case.tracking_code
    response = await _answer(world.client, code, token, mode="text", text=f"  {ANSWER}\r\n")
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "answered"
    case = await world.store.get_case(code)
    assert case.status == "answered" and case.answer_text == ANSWER
    assert case.answered_by == "agency:health/sara"
    assert case.answer_audio is not None
    audio = Path(case.answer_audio)
    assert audio.parent == world.answers_dir / code
    fmt = read_format(audio)
    assert (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) == (8000, 1, 16) and fmt.duration_s > 2
    assert not is_silence(audio)
    assert [p.name for p in audio.parent.iterdir()] == [audio.name]  # no upload or scratch files left

    events = await world.store.case_events(case.id)
    assert (events[-1].kind, events[-1].actor) == ("answered", "agency:health/sara")
    served = await world.client.get(f"/agency/cases/{code}/answer.wav")
    assert served.status == 200 and await served.read() == audio.read_bytes()
    html = await (await world.client.get(f"/agency/cases/{code}")).text()
    assert ANSWER in html and "سارا کریمی (وزارت بهداشت)" in html and "ثبت پاسخ" in html

    for text, key in (("   ", "empty_answer"), ("ب" * 4001, "answer_too_long")):
        response = await _answer(world.client, code, token, mode="text", text=text)
        assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS[key]


async def test_an_answer_queues_the_answer_ready_sms_once_when_the_caller_asked_for_one(world: World) -> None:
    health = world.health_case
    await world.store.sms.queue(health.id, TRACKING_CODE, "+989121234567", sms_text(TRACKING_CODE,
                                                                                     health.tracking_code))
    token = await _login(world.client)
    for text in (ANSWER, "پاسخ تکمیلی"):  # the second answer replaces the first: still one notice
        response = await _answer(world.client, health.tracking_code, token, mode="text", text=text)
        assert response.status == 200, await response.text()
    notices = [m for m in await world.store.sms.for_case(health.id) if m.kind == ANSWER_READY]
    assert [(m.recipient, m.text, m.status) for m in notices] == [
        ("+989121234567", sms_text(ANSWER_READY, health.tracking_code), "pending")]
    assert SUBJECT_ID not in notices[0].text


async def test_uploaded_answer_is_converted_to_8k_mono(world: World, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = await _login(world.client)
    code = world.health_case.tracking_code
    upload = tmp_path / "answer.flac"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(upload), "synth", "2", "sine", "500"], check=True,
                   timeout=30)
    response = await _answer(world.client, code, token, mode="audio", audio=upload)
    assert response.status == 200, await response.text()
    case = await world.store.get_case(code)
    assert case.answer_text is None and case.answer_audio is not None
    fmt = read_format(Path(case.answer_audio))
    assert (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) == (8000, 1, 16)
    assert fmt.duration_s == pytest.approx(2.0, abs=0.01)
    assert not is_silence(Path(case.answer_audio))

    garbage = tmp_path / "answer.wav"
    garbage.write_bytes(b"RIFF but not really audio" * 50)
    response = await _answer(world.client, code, token, mode="audio", audio=garbage)
    assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS["bad_audio"]
    response = await _answer(world.client, code, token, mode="audio")
    assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS["no_audio"]
    monkeypatch.setattr(agency_module, "ANSWER_MAX_S", 1.0)
    response = await _answer(world.client, code, token, mode="audio", audio=upload)
    assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS["audio_too_long"]
    monkeypatch.setattr(agency_module, "UPLOAD_MAX_BYTES", 1000)
    response = await _answer(world.client, code, token, mode="audio", audio=upload)
    assert response.status == 413 and (await response.json())["error"] == AGENCY_ERRORS["upload_too_large"]
    assert (await world.store.get_case(code)).answer_audio == case.answer_audio  # refusals changed nothing
    assert len(list((world.answers_dir / code).iterdir())) == 1


async def test_status_moves_forward_only_and_lands_in_the_history(world: World) -> None:
    token = await _login(world.client)
    code = world.health_case.tracking_code
    status, body = await _set_status(world.client, code, token, "answered")
    assert (status, body["error"]) == (409, AGENCY_ERRORS["no_answer_yet"])
    status, body = await _set_status(world.client, code, token, "referred")
    assert (status, body["error"]) == (400, AGENCY_ERRORS["bad_status"])
    status, body = await _set_status(world.client, code, token, "closed")
    assert (status, body["status"]) == (200, "closed")
    status, body = await _set_status(world.client, code, token, "answered")
    assert (status, body["error"]) == (409, AGENCY_ERRORS["status_backward"])
    response = await _answer(world.client, code, token, mode="text", text=ANSWER)
    assert response.status == 409 and (await response.json())["error"] == AGENCY_ERRORS["case_closed"]

    case = await world.store.get_case(code)
    last = (await world.store.case_events(case.id))[-1]
    assert (last.kind, last.actor, last.detail["from"], last.detail["to"]) == (
        "status", "agency:health/sara", "referred", "closed")
    html = await (await world.client.get(f"/agency/cases/{code}")).text()
    assert "از «ارجاع‌شده» به «بسته‌شده»" in html and 'id="answer-form"' not in html


async def test_changes_need_the_sessions_csrf_token(world: World, tmp_path: Path) -> None:
    await _login(world.client)
    code = world.health_case.tracking_code
    for token in (None, "forged"):
        response = await _answer(world.client, code, token, mode="text", text=ANSWER)
        assert response.status == 403 and (await response.json())["error"] == ERRORS["csrf"]
        headers = {} if token is None else {"X-CSRF-Token": token}
        response = await world.client.post(f"/agency/api/cases/{code}/status", json={"status": "closed"},
                                           headers=headers)
        assert response.status == 403
    case = await world.store.get_case(code)
    assert case.status == "referred" and case.answer_audio is None
    assert not (world.answers_dir / code).exists()


async def test_logout_ends_the_session(world: World) -> None:
    token = await _login(world.client)
    saved = {cookie.key: cookie.value for cookie in world.client.session.cookie_jar}
    response = await world.client.post("/agency/logout", data={"csrf": token}, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/agency/login")
    assert (await world.client.get("/agency", allow_redirects=False)).status == 303
    # Someone who copied the cookie before the logout replays it.
    world.client.session.cookie_jar.update_cookies(saved)
    page = await world.client.get("/agency", allow_redirects=False)
    assert (page.status, page.headers["Location"]) == (303, "/agency/login")
    world.client.session.cookie_jar.update_cookies(saved)
    answer = await _set_status(world.client, world.health_case.tracking_code, token, "closed")
    assert answer == (401, {"error": ERRORS["not_logged_in"], "code": "not_logged_in"})


# -- uploads that would fill the disk, and text that would read differently -------------------------

def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


async def test_uploads_that_would_expand_are_refused_before_conversion_and_write_nothing(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    token = await _login(world.client)
    code = world.health_case.tracking_code
    # 40 kB at 1 Hz (20,000 s: 320 MB at 8 kHz), and 2 kB whose header states 4 GB of audio.
    one_hertz = crafted_wav(tmp_path / "one-hertz.wav", rate=1, samples=20_000)
    huge = crafted_wav(tmp_path / "huge.wav", rate=8000, samples=1000, stated_bytes=0xFFFFFFF0)
    for upload, key in ((one_hertz, "audio_format"), (huge, "audio_too_long")):
        response = await _answer(world.client, code, token, mode="audio", audio=upload)
        assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS[key]
        assert _bytes_under(world.answers_dir) == 0 and list(system_tmp.iterdir()) == []
    assert "۸ تا ۴۸ کیلوهرتز" in AGENCY_ERRORS["audio_format"]
    assert (await world.store.get_case(code)).answer_audio is None

    # A file that passes: its result is bounded by the limit, and nothing else stays.
    monkeypatch.setattr(agency_module, "ANSWER_MAX_S", 3.0)
    fine = tmp_path / "fine.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "2", str(fine), "synth", "2.5", "sine", "500"], check=True,
                   timeout=30)
    response = await _answer(world.client, code, token, mode="audio", audio=fine)
    assert response.status == 200, await response.text()
    [kept] = (world.answers_dir / code).iterdir()
    assert kept.stat().st_size <= 3 * 8000 * 2 + 4096 and list(system_tmp.iterdir()) == []


async def test_bidi_and_control_characters_never_reach_the_store_from_an_answer(world: World) -> None:
    token = await _login(world.client)
    code = world.health_case.tracking_code
    tricky = "\u202eپاسخ\u202c: \u2066نوبت\u2069 شنبه\u200f\x00\x1b[31m\r\nمراجعه کنید\u061c.\u0085"
    response = await _answer(world.client, code, token, mode="text", text=tricky)
    assert response.status == 200, await response.text()
    case = await world.store.get_case(code)
    assert case.answer_text == "پاسخ: نوبت شنبه[31m\nمراجعه کنید."
    response = await _answer(world.client, code, token, mode="text", text="\u202e\u200f\u2066 ")
    assert response.status == 400 and (await response.json())["error"] == AGENCY_ERRORS["empty_answer"]
