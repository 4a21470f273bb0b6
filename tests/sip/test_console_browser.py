"""The agent console in headless Chromium against a real softswitch: a SIPp caller pops up on the agent's screen."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.browser.driver import attribute_is, login, visible
from tests.sip.conftest import NATIONAL_ID, CallerScript
from tests.sip.softphones import Phones
from tests.sip.test_live import PASSWORD, live_softswitch, phones  # noqa: F401 (fixture)

pytestmark = pytest.mark.sip

SUMMARY = "آب آشامیدنی محله از دیروز قطع است و تانکر هم نیامده."


def test_agent_files_the_case_of_a_sipp_caller_and_has_the_code_read_out(
        tmp_path: Path, phones: Phones, browser: WebDriver) -> None:  # noqa: F811
    with live_softswitch(tmp_path) as switch:
        softphone = phones.agent("1001", answer_after_s=0.3)
        login(browser, switch.http, "1001", PASSWORD)
        browser.find_element(By.ID, "btn-login").click()
        attribute_is(browser, "#agent-state", "data-state", "ready")

        # ID keyed and confirmed, 1 = an agent, 1 = about myself, then 30 s on the line.
        script = CallerScript().keys(NATIONAL_ID).keys("1", pause_s=4.5).keys("1", pause_s=1.0) \
            .keys("1", pause_s=1.0)
        script.timeline.silence(30)
        pcap = script.write(tmp_path / "caller.pcap")
        outcome: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: outcome.update(zip(("result", "call_id"),
                                                                    switch.call("console", pcap, timeout_s=90))))
        caller.start()
        try:
            pop = attribute_is(browser, "#screen-pop", "data-call-state", "connected", timeout=30)
            # The agent on this call sees the full ID (nobody else does).
            assert browser.find_element(By.ID, "pop-national-id").get_attribute("data-value") == NATIONAL_ID
            call_key = pop.get_attribute("data-call-key")
            Select(browser.find_element(By.ID, "case-agency")).select_by_value("energy")
            Select(browser.find_element(By.ID, "case-category")).select_by_index(1)
            category = Select(browser.find_element(By.ID, "case-category")).first_selected_option.get_attribute(
                "value")
            browser.find_element(By.ID, "case-summary").send_keys(SUMMARY)
            browser.find_element(By.ID, "case-submit").click()
            code_element = visible(browser, "#case-tracking-code[data-value]:not([data-value=''])")
            code = code_element.get_attribute("data-value")
            assert code and len(code) == 9
            give = browser.find_element(By.ID, "btn-give-code")
            assert give.is_enabled()
            give.click()
            attribute_is(browser, "#screen-pop", "data-call-state", "connected")
            # The code is read twice, digit by digit (0.3 s test prompts); then the agent hangs up.
            time.sleep(8)
            softphone.hangup()
        finally:
            caller.join(100)
        assert not caller.is_alive()
        assert outcome["result"].returncode == 0, outcome["result"].stderr

        body, case = switch.case_of(outcome["call_id"])
        assert call_key and body["call"]["agent_id"] == "1001"
        assert case["tracking_code"] == code
        assert (case["agency"], case["category"], case["summary"]) == ("energy", category, SUMMARY)
        assert case["filed_by"] == "agent:1001"
        kinds = [event["kind"] for event in case["history"]]
        # Filed during the call: the case was created with what the agent filed, then the code was read out.
        assert kinds[0] == "created" and "tracking_code_read" in kinds
        assert [r["kind"] for r in case["recordings"]].count("conversation") == 1
