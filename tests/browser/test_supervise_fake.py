"""Browser test of the supervisor's listen / whisper / barge controls in headless Chromium, around a FakeDesk."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import AGENT, SUPERVISOR, ConsoleServer, make_desk
from tests.browser.demo import CALL_KEY, screen_pop
from tests.browser.driver import attribute_is, login, visible, wait_until
from tests.fakes.desk import FakeDesk

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")]

Serve = Callable[[FakeDesk], ConsoleServer]
ROW = f"[data-test=live-call][data-call-key='{CALL_KEY}']"


def click(browser: WebDriver, test_id: str) -> None:
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"{ROW} [data-test={test_id}]").is_enabled())
    browser.find_element(By.CSS_SELECTOR, f"{ROW} [data-test={test_id}]").click()


def monitor_calls(server: ConsoleServer) -> list[tuple[object, ...]]:
    return server.call(lambda: [c for c in server.desk.calls if c[0] in ("monitor", "stop_monitor")])


def test_supervisor_listens_whispers_barges_and_leaves_from_the_live_call(browser: WebDriver,
                                                                         console_server: Serve) -> None:
    desk = make_desk()
    server = console_server(desk)
    server.call(desk.acd.login, AGENT[0])
    server.run(lambda: desk.ring(screen_pop()))
    server.call(desk.answer, CALL_KEY)

    login(browser, server.base_url, SUPERVISOR[0], SUPERVISOR[2])
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("dir") == "rtl"
    row = visible(browser, ROW)
    assert [b.text for b in row.find_elements(By.TAG_NAME, "button")] == ["شنود", "نجوا", "ورود به مکالمه"]

    click(browser, "monitor-listen")
    attribute_is(browser, ROW, "data-monitor-mode", "listen")
    attribute_is(browser, "#monitor-state", "data-state", "joined")
    assert "شنود" in browser.find_element(By.ID, "monitor-state").text
    attribute_is(browser, f"{ROW} [data-test=monitor-listen]", "aria-pressed", "true")

    click(browser, "monitor-whisper")
    attribute_is(browser, "#monitor-state", "data-mode", "whisper")
    assert "نجوا" in browser.find_element(By.ID, "monitor-state").text

    # A refusal is shown in Persian, and the mode stays as it was.
    server.call(setattr, desk, "monitor_refusal", "تلفن شما پاسخ نداد.")
    click(browser, "monitor-barge")
    assert visible(browser, "#monitor-error").text == "تلفن شما پاسخ نداد."
    attribute_is(browser, "#monitor-state", "data-mode", "whisper")
    click(browser, "monitor-barge")
    attribute_is(browser, "#monitor-state", "data-mode", "barge")
    assert not browser.find_element(By.ID, "monitor-error").is_displayed()

    click(browser, "monitor-stop")
    attribute_is(browser, "#monitor-state", "data-state", "none")
    attribute_is(browser, ROW, "data-monitor-mode", "")
    assert monitor_calls(server) == [
        ("monitor", SUPERVISOR[0], CALL_KEY, "listen"), ("monitor", SUPERVISOR[0], CALL_KEY, "whisper"),
        ("monitor", SUPERVISOR[0], CALL_KEY, "barge"), ("monitor", SUPERVISOR[0], CALL_KEY, "barge"),
        ("stop_monitor", SUPERVISOR[0])]

    # The call's end takes it off the list.
    server.call(desk.hang_up, AGENT[0])
    wait_until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ROW))
    assert browser.find_element(By.ID, "live-calls-empty").is_displayed()
