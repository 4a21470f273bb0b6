"""Follow-up by tracking code, other channels and duplicates, over real SIP and HTTP.

A case comes in by SMS through ``POST /api/cases``; callers (PJSUA2 softphones
that record what they hear) follow it up with menu option 3; an agency user
answers it on the agency page in headless Chromium. Own softswitch on ports
19560/19511.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from media.wavfile import read_pcm
from softswitch.web.credentials import hash_password
from tests.browser.driver import visible
from tests.browser.test_agency_fake import agency_login
from tests.sip.conftest import NATIONAL_ID, SUBJECT_ID, RunningSoftswitch, agent_accounts, running_softswitch
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Softphone
from tests.sip.test_live import ALWAYS_OPEN, tone_share, tone_wav

pytestmark = pytest.mark.sip

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 19560, 19511, 19570, 29600
PHONE_PORT, PHONE_RTP = 19600, 29700
SMS_TOKEN, LETTER_TOKEN = "sms-token-for-tests-0123456789abcdef", "letter-token-for-tests-0123456789ab"
PASSWORD = "agency-pass-1"
MARKER_HZ = 2600.0
CATEGORY = "شکایت"
CONFIG = {
    "office_hours": {"weekly": ALWAYS_OPEN},
    "api_tokens": [
        {"name": "sms-gateway", "sha256": hashlib.sha256(SMS_TOKEN.encode()).hexdigest(), "channel": "sms"},
        {"name": "letters", "sha256": hashlib.sha256(LETTER_TOKEN.encode()).hexdigest(), "channel": "letter"},
    ],
    "follow_up": {"max_failures": 2, "failure_window_s": 600},
    # The callers here do not rate: the survey after an agent or an answer only waits its (short) time.
    "survey": {"wait_s": 2.0},
    "agents": {"accounts": agent_accounts([("1001", "مریم احمدی", PASSWORD)], "softswitch-111")},
    "agencies": [
        {"id": "energy", "name": "وزارت نیرو",
         "users": [{"id": "u1", "name": "کاربر نیرو", "password": hash_password(PASSWORD)}]},
        {"id": "municipality", "name": "شهرداری"},
    ],
}


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[RunningSoftswitch]:
    with running_softswitch(tmp_path, sip_port=SIP_PORT, http_port=HTTP_PORT, workers=2,
                            worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT, config_overrides=CONFIG) as running:
        yield running


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[list[Softphone]]:
    with contextlib.ExitStack() as stack:
        made: list[Softphone] = []

        def new(name: str) -> Softphone:
            n = len(made)
            phone = stack.enter_context(Softphone(name, tmp_path / "phones", sip_port=PHONE_PORT + n,
                                                  rtp_port=PHONE_RTP + 20 * n, user=name))
            made.append(phone)
            return phone
        yield new  # type: ignore[misc]


def submit(switch: RunningSoftswitch, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(switch.http + "/api/cases", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def sms_case(switch: RunningSoftswitch, subject: str = NATIONAL_ID) -> str:
    status, body = submit(switch, SMS_TOKEN, {
        "channel": "sms", "subject_national_id": subject, "agency": "energy", "category": CATEGORY,
        "text": "برق کوچه ما سه روز است که قطع است."})
    assert status == 201 and body["duplicate"] is False, body
    return str(body["tracking_code"])


def follow_up_call(phone: Softphone, national_id: str, code: str, wav: Path) -> str:
    """Dial 111, key and confirm the ID, choose 3, key the code; record everything heard until hang-up."""
    call = phone.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
    phone.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
    phone.record(call, wav)
    time.sleep(1.0)
    phone.dtmf(call, national_id)
    time.sleep(3.5)
    phone.dtmf(call, "1")  # the read-back is right
    time.sleep(1.0)
    phone.dtmf(call, "3")  # follow up
    time.sleep(1.0)
    phone.dtmf(call, code + "#")
    return call


def test_wrong_id_hears_nothing_and_repeated_tries_are_throttled(switch: RunningSoftswitch, phones: Any,
                                                                  tmp_path: Path) -> None:
    code = sms_case(switch)
    stranger = phones("stranger")
    for attempt in range(2):
        call = follow_up_call(stranger, SUBJECT_ID, code, tmp_path / f"stranger{attempt}.wav")
        if attempt == 0:
            # Not this caller's case: "not found", asked again; a wrong check digit is refused without a
            # lookup; the second miss (max_failures 2) throttles this number.
            # Ten keys take the phone 2 s to send; each entry waits for the one before and its answer.
            time.sleep(4.0)
            stranger.dtmf(call, code[:-1] + str((int(code[-1]) + 1) % 10) + "#")
            time.sleep(4.0)
            stranger.dtmf(call, code + "#")
        stranger.wait_for("ended", call=call, timeout_s=40)
        path = switch.call_record(call)["call"]["ivr_path"]
        assert "follow_up:throttled" in path, path
        assert not any(step.startswith("follow_up:told") for step in path)
    # The case's own subject is told its status (referred to the agency).
    owner = phones("owner")
    call = follow_up_call(owner, NATIONAL_ID, code, tmp_path / "owner.wav")
    owner.wait_for("ended", call=call, timeout_s=40)
    assert "follow_up:told:referred" in switch.call_record(call)["call"]["ivr_path"]


def test_duplicates_by_sms_letter_and_phone_link_to_the_first_case(switch: RunningSoftswitch) -> None:
    first = sms_case(switch)
    status, again = submit(switch, LETTER_TOKEN, {
        "channel": "letter", "subject_national_id": NATIONAL_ID, "submitter_national_id": SUBJECT_ID,
        "agency": "energy", "category": CATEGORY, "text": "نامه: برق کوچه قطع است."})
    assert status == 200 and again == {"tracking_code": first, "duplicate": True}
    # A token of one channel cannot speak for another.
    status, _ = submit(switch, SMS_TOKEN, {"channel": "letter", "subject_national_id": NATIONAL_ID,
                                           "agency": "energy", "category": CATEGORY, "text": "x"})
    assert status == 403
    status, other = submit(switch, SMS_TOKEN, {"channel": "sms", "subject_national_id": NATIONAL_ID,
                                               "agency": "municipality", "category": CATEGORY, "text": "آسفالت"})
    assert status == 201 and other["tracking_code"] != first
    # Cases are read with a reports token only: a tracking code alone discloses nothing.
    assert switch.get(f"/api/cases/{first}", token=None)[0] == 401
    assert switch.get(f"/api/cases/{first}", token=SMS_TOKEN)[0] == 403
    _, case = switch.get(f"/api/cases/{first}")
    contacts = [event for event in case["history"] if event["kind"] == "contact"]
    assert len(contacts) == 1 and contacts[0]["actor"] == "api:letters"


def test_a_phone_request_for_the_same_matter_links_to_the_first_case(switch: RunningSoftswitch, phones: Any,
                                                                      tmp_path: Path) -> None:
    first = sms_case(switch)
    agent = phones("agent")
    assert agent.register(f"sip:127.0.0.1:{SIP_PORT}", "1001", PASSWORD)["code"] == 200
    agent.answer_policy(0.2)
    console = ConsoleClient(switch.http, "1001", PASSWORD).login()
    caller = phones("caller")
    call = caller.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
    caller.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
    time.sleep(1.0)
    caller.dtmf(call, NATIONAL_ID)
    for pause_s, key in ((3.5, "1"), (1.0, "1"), (1.0, "1")):  # the read-back is right, an agent, about me
        time.sleep(pause_s)
        caller.dtmf(call, key)
    leg = agent.wait_for("incoming", timeout_s=20)["call"]
    agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
    offer = console.current_offer()
    assert offer is not None and [c["tracking_code"] for c in offer["history"]] == [first]
    status, filed = console.post("/console/api/cases", {
        "call_key": offer["call_key"], "agency_id": "energy", "category": CATEGORY,
        "summary": "برق کوچه قطع است؛ پیامک هم داده است."})
    assert status == 200 and filed["tracking_code"] == first and filed["duplicate"] is True, filed
    agent.hangup(leg)
    caller.wait_for("ended", call=call, timeout_s=10)
    body = switch.call_record(call)
    assert body["tracking_code"] is None or body["tracking_code"] == first
    _, case = switch.get(f"/api/cases/{first}")
    assert [event["actor"] for event in case["history"] if event["kind"] == "contact"] == ["agent:1001"]
    # The phone call's conversation is evidence of the first case now.
    assert [r["kind"] for r in case["recordings"]].count("conversation") == 1


def test_agency_answers_on_its_page_and_the_next_follow_up_call_plays_it(
        switch: RunningSoftswitch, phones: Any, browser: WebDriver, tmp_path: Path) -> None:
    code = sms_case(switch)
    # The agency user uploads a recorded answer on the agency page: a 2 s tone, a marker the caller can hear.
    marker = tone_wav(tmp_path / "answer.wav", MARKER_HZ, seconds=2.0)
    agency_login(browser, switch.http, "energy", "u1", PASSWORD)
    visible(browser, "[data-test=case-row]")
    browser.get(f"{switch.http}/agency/cases/{code}")
    browser.find_element(By.ID, "mode-audio").click()
    visible(browser, "#answer-audio-input").send_keys(str(marker))
    browser.find_element(By.ID, "answer-submit").click()
    visible(browser, "#answer-audio", timeout=20)
    _, case = switch.get(f"/api/cases/{code}")
    assert case["status"] == "answered" and "answered" in [e["kind"] for e in case["history"]]

    owner = phones("owner")
    heard = tmp_path / "owner-heard.wav"
    call = follow_up_call(owner, NATIONAL_ID, code, heard)
    owner.wait_for("ended", call=call, timeout_s=40)
    owner.wait_for("recorded", call=call, timeout_s=10)
    assert "follow_up:told:answered" in switch.call_record(call)["call"]["ivr_path"]
    # About 2 s of the marker among everything the caller heard (test prompts are 0.3 s tones elsewhere).
    pcm = read_pcm(heard)
    window = 8000 * 2 // 4  # 0.25 s windows
    marked = sum(tone_share(pcm[i:i + window], MARKER_HZ) > 0.5 for i in range(0, len(pcm) - window, window))
    assert 6 <= marked <= 9, marked

