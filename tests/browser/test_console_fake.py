"""Browser tests of the web console in headless Chromium, around a FakeDesk (the real ACD inside).

SCREENSHOTS=1 also writes docs/screenshots/console.png and supervisor.png.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from softswitch.config import Agency
from softswitch.domain.persian import persian_digits
from tests.browser.conftest import AGENT, SUPERVISOR, ConsoleServer, make_desk
from tests.browser.demo import (CALL_KEY, NATIONAL_ID, SUBJECT_ID, add_history_cases, demo_desk, populate_morning,
                                rate_morning, screen_pop, write_wav)
from tests.browser.driver import attribute_is, login, screenshot, visible, wait_until
from tests.fakes.desk import FakeDesk

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

Serve = Callable[[FakeDesk], ConsoleServer]
SUMMARY = "آب کوچه شهید رضایی از شنبه قطع است؛ تماس‌گیرنده برای پدر سالمندش درخواست پیگیری فوری دارد."


def desk_calls(server: ConsoleServer, name: str) -> list[tuple[Any, ...]]:
    return server.call(lambda: [call for call in server.desk.calls if call[0] == name])


def text_of(browser: WebDriver, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def test_agent_answers_a_call_files_a_case_and_gives_the_code(browser: WebDriver, console_server: Serve,
                                                             tmp_path: Path) -> None:
    desk = make_desk()
    pop = screen_pop()
    add_history_cases(desk, pop)
    for recording_id in pop["subject_id_audio"]:
        desk.recordings[recording_id] = write_wav(tmp_path / f"{recording_id}.wav")
    server = console_server(desk)

    login(browser, server.base_url, AGENT[0], AGENT[2])
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("dir") == "rtl"
    attribute_is(browser, "#agent-state", "data-state", "logged_out")
    browser.find_element(By.ID, "btn-login").click()
    attribute_is(browser, "#agent-state", "data-state", "ready")
    assert text_of(browser, "agent-state-label") == "آماده"

    assert server.run(lambda: desk.ring(pop)) == AGENT[0]
    attribute_is(browser, "#screen-pop", "data-call-key", CALL_KEY)
    attribute_is(browser, "#agent-state", "data-state", "ringing")
    server.call(desk.answer, CALL_KEY)
    attribute_is(browser, "#screen-pop", "data-call-state", "connected")
    attribute_is(browser, "#agent-state", "data-state", "on_call")

    # The agent's own screen-pop: the IDs in full, in Persian digits; the spoken attempts playable.
    assert browser.find_element(By.ID, "pop-national-id").get_attribute("data-value") == NATIONAL_ID
    assert text_of(browser, "pop-national-id") == persian_digits(NATIONAL_ID)
    assert browser.find_element(By.ID, "pop-subject-id").get_attribute("data-value") == SUBJECT_ID
    assert text_of(browser, "pop-subject-id-status") == "تأییدنشده"
    players = browser.find_elements(By.CSS_SELECTOR, "#pop-subject-audio audio")
    assert [p.get_attribute("data-recording-id") for p in players] == ["41", "42"]
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.arrayBuffer().then((b) => done([r.status, b.byteLength])));",
        players[0].get_attribute("src"))
    assert status[0] == 200 and status[1] > 44
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-caller tbody tr")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-subject tbody tr")) == 1
    assert not browser.find_element(By.ID, "btn-give-code").is_enabled()

    Select(browser.find_element(By.ID, "case-agency")).select_by_value("energy")
    Select(browser.find_element(By.ID, "case-category")).select_by_visible_text("درخواست")
    browser.find_element(By.ID, "case-summary").send_keys(SUMMARY)
    screenshot(browser, "console")
    browser.find_element(By.ID, "case-submit").click()

    code_node = visible(browser, "#case-tracking-code")
    code = wait_until(browser, lambda d: code_node.get_attribute("data-value"))
    assert desk_calls(server, "file_case") == [("file_case", AGENT[0], CALL_KEY, "energy", "درخواست", SUMMARY)]
    assert code_node.text == persian_digits(code)
    assert not browser.find_element(By.ID, "case-form").is_displayed()

    give = browser.find_element(By.ID, "btn-give-code")
    wait_until(browser, lambda d: give.is_enabled())
    give.click()
    wait_until(browser, lambda d: "خوانده شد" in text_of(d, "action-message"))
    assert desk_calls(server, "give_tracking_code") == [("give_tracking_code", AGENT[0], CALL_KEY)]

    server.call(desk.hang_up, AGENT[0])
    attribute_is(browser, "#screen-pop", "data-call-state", "ended")
    attribute_is(browser, "#agent-state", "data-state", "wrap_up")
    browser.find_element(By.ID, "btn-ready").click()
    attribute_is(browser, "#agent-state", "data-state", "ready")


def test_agent_attaches_the_call_to_an_earlier_case(browser: WebDriver, console_server: Serve) -> None:
    desk = make_desk()
    pop = screen_pop()
    add_history_cases(desk, pop)
    desk.offer(AGENT[0], {**pop, "state": "connected"})  # already on the call when the page loads
    server = console_server(desk)
    login(browser, server.base_url, AGENT[0], AGENT[2])
    attribute_is(browser, "#screen-pop", "data-call-state", "connected")
    browser.find_element(By.CSS_SELECTOR, "#history-caller [data-test=history-attach]").click()
    browser.find_element(By.ID, "attach-submit").click()
    earlier = pop["history"][0]["tracking_code"]
    attribute_is(browser, "#case-tracking-code", "data-value", earlier)
    assert desk_calls(server, "attach_case") == [("attach_case", AGENT[0], CALL_KEY, earlier)]


def test_agent_consults_an_agencys_line_then_puts_the_caller_through(browser: WebDriver,
                                                                    console_server: Serve) -> None:
    agencies = (Agency(id="health", name="وزارت بهداشت", phone="02161920000"), Agency(id="roads", name="وزارت راه"))
    desk = make_desk(agencies=agencies)
    pop = screen_pop()
    desk.offer(AGENT[0], {**pop, "state": "connected"})
    server = console_server(desk)
    login(browser, server.base_url, AGENT[0], AGENT[2])
    attribute_is(browser, "#screen-pop", "data-call-state", "connected")
    # Only an agency with a line of its own is offered.
    targets = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "transfer-agent")).options]
    assert "agency:health" in targets and "agency:roads" not in targets
    Select(browser.find_element(By.ID, "transfer-agent")).select_by_value("agency:health")
    browser.find_element(By.ID, "transfer-consult").click()
    browser.find_element(By.ID, "transfer-submit").click()
    wait_until(browser, lambda d: desk_calls(server, "transfer"))
    assert desk_calls(server, "transfer") == [("transfer", AGENT[0], CALL_KEY, "agency:health", True)]
    wait_until(browser, lambda d: "برای مشورت" in text_of(d, "action-message"))
    assert not browser.find_element(By.ID, "transfer-submit").is_enabled()  # one transfer at a time
    assert not browser.find_element(By.ID, "consult-actions").is_displayed()

    # The line answers: the agent talks with it, and may put the caller through or go back.
    server.call(desk.publish, AGENT[0], {"type": "transfer", "call_key": CALL_KEY, "state": "consulting",
                                         "to": "agency:health"})
    wait_until(browser, lambda d: d.find_element(By.ID, "consult-actions").is_displayed())
    assert "وزارت بهداشت" in text_of(browser, "action-message")
    browser.find_element(By.ID, "btn-consult-complete").click()
    wait_until(browser, lambda d: desk_calls(server, "end_consultation"))
    assert desk_calls(server, "end_consultation") == [("end_consultation", AGENT[0], CALL_KEY, True)]
    assert not browser.find_element(By.ID, "consult-actions").is_displayed()
    server.call(desk.publish, AGENT[0], {"type": "call_ended", "call_key": CALL_KEY, "reason": "transferred",
                                         "to": "agency:health", "tracking_code": None})
    wait_until(browser, lambda d: "به وزارت بهداشت منتقل شد" in text_of(d, "action-message"))
    attribute_is(browser, "#screen-pop", "data-call-state", "ended")


def test_supervisor_sees_agents_queue_and_calls_per_hour(browser: WebDriver, console_server: Serve) -> None:
    desk, clock = demo_desk()
    server = console_server(desk)
    server.run(lambda: populate_morning(desk, clock))
    rate_morning(desk)
    snapshot = server.call(desk.acd.snapshot)

    login(browser, server.base_url, SUPERVISOR[0], SUPERVISOR[2])
    assert browser.current_url.endswith("/supervisor")
    bars = browser.find_elements(By.CSS_SELECTOR, "#hour-chart [data-test=hour-bar]")
    assert [int(bar.get_attribute("data-count") or -1) for bar in bars] == snapshot["today"]["per_hour"]
    assert text_of(browser, "kpi-answered") == persian_digits(snapshot["today"]["answered"])
    assert text_of(browser, "kpi-waiting") == persian_digits(3)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#queue-table [data-test=queue-row]")) == 3
    tiles = {tile.get_attribute("data-agent-id"): tile.get_attribute("data-state")
             for tile in browser.find_elements(By.CSS_SELECTOR, "[data-test=agent-tile]")}
    assert tiles == {agent["id"]: agent["state"] for agent in snapshot["agents"]}
    screenshot(browser, "supervisor")

    server.call(desk.acd.login, "sara")  # live: the board follows the ACD's events
    attribute_is(browser, "[data-test=agent-tile][data-agent-id=sara]", "data-state", "ready")


def test_supervisor_sees_todays_survey_ratings_per_agent(browser: WebDriver, console_server: Serve) -> None:
    desk, clock = demo_desk()
    # Maryam: 5 and 4; Ali: 2; a follow-up's rating (no agent) counts only in the day's total.
    desk.ratings = [("maryam", 5), ("maryam", 4), ("ali", 2), (None, 3)]
    server = console_server(desk)
    server.run(lambda: populate_morning(desk, clock))
    login(browser, server.base_url, SUPERVISOR[0], SUPERVISOR[2])

    def rating_of(agent_id: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f"[data-agent-id={agent_id}] [data-test=agent-rating]")
    assert rating_of("maryam").text == "رضایت امروز: ۴٫۵ از ۲ نظر"
    assert rating_of("maryam").get_attribute("data-count") == "2"
    assert rating_of("ali").text == "رضایت امروز: ۲٫۰ از ۱ نظر"
    assert rating_of("zahra").text == "امروز نظری ثبت نشده است"
    assert text_of(browser, "kpi-rating") == "۳٫۵" and text_of(browser, "kpi-rating-note") == "امروز، از ۴ نظر"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("dir") == "rtl"

    # A new rating shows with the next snapshot (here brought by an agent's change of state).
    server.call(desk.ratings.append, ("zahra", 1))
    server.call(desk.acd.login, "sara")
    wait_until(browser, lambda d: rating_of("zahra").text == "رضایت امروز: ۱٫۰ از ۱ نظر")
    wait_until(browser, lambda d: text_of(browser, "kpi-rating-note") == "امروز، از ۵ نظر")


def test_an_agent_may_not_open_the_supervisor_view(browser: WebDriver, console_server: Serve) -> None:
    server = console_server(make_desk())
    login(browser, server.base_url, AGENT[0], AGENT[2])
    browser.get(server.base_url + "/supervisor")
    assert "فقط برای سرپرستان" in text_of(browser, "message")


def test_wrong_password_shows_one_persian_error(browser: WebDriver, console_server: Serve) -> None:
    server = console_server(make_desk())
    with pytest.raises(AssertionError, match="شناسه یا گذرواژه نادرست است"):
        login(browser, server.base_url, AGENT[0], "wrong")
