"""Browser tests of the agencies' page in headless Chromium, over a real store in tmp (the console's FakeDesk beside it).

SCREENSHOTS=1 also writes docs/screenshots/agency.png.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from media.synth import EspeakSynthesizer
from media.wavfile import is_silence, read_format
from softswitch.config import Agency, AgencyUser
from softswitch.domain.persian import persian_digits
from softswitch.web.agency import AgencyServices, add_agency_routes
from softswitch.web.console import add_console_routes
from softswitch.web.sessions import install_sessions
from softswitch.web.credentials import hash_password
from storage.crypto import IdProtector
from storage.models import Case, PersonId
from storage.store import open_store
from tests.browser.conftest import ConsoleServer, make_desk
from tests.browser.demo import write_wav
from tests.browser.driver import attribute_is, screenshot, submit_login, visible, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

USER = ("health", "sara", "سارا کریمی", "health-pass")
AGENCIES = (
    Agency(id="health", name="وزارت بهداشت، درمان و آموزش پزشکی",
           users=(AgencyUser(id=USER[1], name=USER[2], password=hash_password(USER[3])),)),
    Agency(id="roads", name="وزارت راه و شهرسازی"),
)
SUBJECT_ID = "0499370899"
SUMMARY = ("نوبت جراحی قلب پدر تماس‌گیرنده در بیمارستان شهید رجایی سه بار عقب افتاده است؛ "
           "درخواست تعیین نوبت قطعی دارند.")
ANSWER = ("با سلام. نوبت جراحی پدر شما برای شنبه هفته آینده، ساعت هشت صبح، در بیمارستان شهید رجایی قطعی شد. "
          "لطفاً یک روز پیش از جراحی برای آزمایش‌ها مراجعه کنید.")
WINDOW_S = 30 * 86400.0


class AgencyServer(ConsoleServer):
    """The console (around a FakeDesk) and the agency page (around a real store in tmp) on one app and one
    session cookie, on an ephemeral port of 127.0.0.1, on ConsoleServer's thread and loop."""

    def __init__(self, work: Path) -> None:
        super().__init__(make_desk())
        self.work = work
        self.exit_stack = contextlib.AsyncExitStack()
        self.cases: dict[str, Case] = {}

    async def _start(self) -> None:
        protector = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
        self.store = await self.exit_stack.enter_async_context(open_store(self.work / "store.db", protector))
        await self.seed()
        app = web.Application()
        install_sessions(app, self.store)
        add_console_routes(app, self.desk, heartbeat_s=2.0)
        add_agency_routes(app, AgencyServices(self.store, AGENCIES, EspeakSynthesizer(), self.work / "answers"))
        http = TestServer(app, host="127.0.0.1")
        await http.start_server()
        self.exit_stack.push_async_callback(http.close)
        self.base_url = str(http.make_url("")).rstrip("/")

    async def seed(self) -> None:
        """A case the agent referred to health, a second call about it linked as a duplicate, and one for roads."""
        store = self.store
        subject = PersonId(SUBJECT_ID, "keypad", "verified")
        caller = PersonId("0790419904", "keypad", "verified")
        for n, (agency, actor) in enumerate((("health", "agent:1001"), ("health", "agent:1002"),
                                             ("roads", "agent:1001"))):
            call_id = await store.add_call(f"call-{n}@trunk", "sip:09121234567@trunk", "sip:111@sw", "127.0.0.1",
                                           0, 1.0)
            result = await store.intake(subject, channel="phone", agency=agency, category="درخواست",
                                        summary=SUMMARY, actor=actor, window_s=WINDOW_S, submitter=caller,
                                        call_id=call_id)
            for kind, seconds in (("message", 1.0), ("conversation", 2.0)):
                path = write_wav(self.work / f"{kind}-{n}.wav", seconds)
                await store.add_recording(call_id, result.case.id, kind, str(path), seconds, "ab" * 32, True)
            self.cases[agency] = result.case

    def stop(self) -> None:
        try:
            self.run(self.exit_stack.aclose)
        finally:
            super().stop()


@pytest.fixture
def agency_server(tmp_path: Path) -> Iterator[AgencyServer]:
    server = AgencyServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def agency_login(browser: WebDriver, base_url: str, agency_id: str, user_id: str, password: str) -> None:
    """Log in through the agency form and land on the cases list."""
    submit_login(browser, base_url + "/agency/login", {"user-id": user_id}, password, {"agency-id": agency_id})


def status_becomes(browser: WebDriver, status: str, timeout: float = 30.0) -> None:
    """Wait for the case page, reloaded after a change, to show ``status``; the reload may catch a read midway."""
    def shown(driver: WebDriver) -> bool:
        try:
            return bool(driver.execute_script(
                "const page = document.getElementById('agency-case');"
                "return document.readyState === 'complete' && page !== null && page.dataset.status === arguments[0];",
                status))
        except WebDriverException:
            return False
    wait_until(browser, shown, timeout, f"the case never showed status {status!r}")


def stored_case(server: AgencyServer, code: str) -> Case:
    return server.run(lambda: server.store.get_case(code))


def test_agency_user_answers_a_referred_case(browser: WebDriver, agency_server: AgencyServer) -> None:
    server = agency_server
    code = server.cases["health"].tracking_code
    agency_login(browser, server.base_url, *USER[:2], USER[3])
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("dir") == "rtl"
    rows = browser.find_elements(By.CSS_SELECTOR, "[data-test=case-row]")
    assert [row.get_attribute("data-tracking-code") for row in rows] == [code]  # not the roads case
    assert "********۹۹" in rows[0].text and SUBJECT_ID not in browser.page_source

    rows[0].find_element(By.TAG_NAME, "a").click()
    attribute_is(browser, "#agency-case", "data-tracking-code", code)
    assert browser.find_element(By.ID, "case-code").text == persian_digits(code)
    assert browser.find_element(By.ID, "case-status").text == "ارجاع‌شده"
    history = [row.get_attribute("data-kind") for row in browser.find_elements(By.CSS_SELECTOR,
                                                                               "[data-test=history-row]")]
    assert history == ["created", "contact"]
    players = browser.find_elements(By.CSS_SELECTOR, "[data-test=recording]")
    assert len(players) == 4  # the message and the conversation of both calls
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.arrayBuffer().then((b) => done([r.status, b.byteLength])));",
        players[0].get_attribute("src"))
    assert status[0] == 200 and status[1] > 44

    browser.find_element(By.ID, "answer-text-input").send_keys(ANSWER)
    browser.find_element(By.ID, "answer-submit").click()
    status_becomes(browser, "answered")  # the page after the answer
    assert visible(browser, "#action-message").text == "پاسخ ثبت شد."
    assert browser.find_element(By.ID, "answer-text").text == ANSWER
    assert browser.find_elements(By.CSS_SELECTOR, "[data-test=history-row]")[-1].get_attribute("data-kind") == \
        "answered"
    screenshot(browser, "agency")

    case = stored_case(server, code)
    assert (case.status, case.answer_text, case.answered_by) == ("answered", ANSWER, "agency:health/sara")
    assert case.answer_audio is not None
    audio = Path(case.answer_audio)
    fmt = read_format(audio)
    assert (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) == (8000, 1, 16) and fmt.duration_s > 3
    assert not is_silence(audio)

    browser.find_element(By.ID, "status-closed").click()
    status_becomes(browser, "closed")
    assert stored_case(server, code).status == "closed"
    assert not browser.find_elements(By.ID, "answer-form")


def test_uploading_an_audio_answer(browser: WebDriver, agency_server: AgencyServer, tmp_path: Path) -> None:
    server = agency_server
    code = server.cases["health"].tracking_code
    recorded = write_wav(tmp_path / "recorded-answer.wav", 1.5)
    agency_login(browser, server.base_url, *USER[:2], USER[3])
    browser.get(f"{server.base_url}/agency/cases/{code}")
    browser.find_element(By.ID, "mode-audio").click()
    visible(browser, "#answer-audio-input").send_keys(str(recorded))
    browser.find_element(By.ID, "answer-submit").click()
    status_becomes(browser, "answered")
    case = stored_case(server, code)
    assert case.answer_text is None and case.answer_audio is not None
    assert read_format(Path(case.answer_audio)).duration_s == pytest.approx(1.5, abs=0.01)
    src = browser.find_element(By.ID, "answer-audio").get_attribute("src") or ""
    assert src.endswith(f"/agency/cases/{code}/answer.wav")


def test_another_agencys_case_and_the_console_are_closed_to_an_agency_user(
        browser: WebDriver, agency_server: AgencyServer) -> None:
    server = agency_server
    agency_login(browser, server.base_url, *USER[:2], USER[3])
    browser.get(f"{server.base_url}/agency/cases/{server.cases['roads'].tracking_code}")
    assert browser.find_element(By.ID, "message").text == "پرونده‌ای با این کد پیگیری در کارتابل شما نیست."
    browser.get(server.base_url + "/console")
    wait_until(browser, lambda d: d.current_url.rstrip("/").endswith("/agency"))

