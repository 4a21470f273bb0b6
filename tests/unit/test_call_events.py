"""One log line per call event, each with the call's SIP Call-ID, CDR id and worker; no personal data in any.

Whole calls go through the real control process (routing, flow, queue, desk,
a real SQLite store) over a scripted media worker (``tests/fakes/control.py``);
the log is read as the configured handler writes it, in JSON and in text.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pythonjsonlogger.json import JsonFormatter

from softswitch import logs
from softswitch.config import load_config
from tests.fakes.control import calls_done, control_switch, place_call, scripted_worker, write_config
from tests.fakes.scripted_worker import AgentPhone, Script

pytestmark = pytest.mark.unit

NATIONAL_ID = "0499370899"


class LogCapture:
    """The process's log handler (``softswitch.logs.handler``) writing into memory, on the root logger."""

    def __init__(self, log_format: logs.LogFormat) -> None:
        self.stream = io.StringIO()
        self.handler = logs.handler(log_format, "control", self.stream)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> Iterator[LogCapture]:
    log_format: logs.LogFormat = getattr(request, "param", "json")
    captured = LogCapture(log_format)
    root = logging.getLogger()
    level = root.level
    root.addHandler(captured.handler)
    root.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        root.removeHandler(captured.handler)
        root.setLevel(level)


def message_script() -> Script:
    # ID, 1 (confirm), 2 (a message), 1 (about me) typed in one burst; the request spoken after them.
    return Script().key(0.05, NATIONAL_ID + "121", gap_s=0.01).say(0.3, 2.5)


def live_script() -> Script:
    # ID, 1 (confirm), 1 (an agent), 1 (about me).
    return Script().key(0.05, NATIONAL_ID + "111", gap_s=0.01)


async def run_call(tmp_path: Path, script: Script, sip_call_id: str, *, agents: dict[str, AgentPhone] | None = None
                   ) -> dict[str, Any]:
    """One call to its end; the CDR and its case's tracking code, as stored."""
    config = load_config(write_config(tmp_path, agents=list(agents or {})))
    async with control_switch(config) as switch:
        worker = scripted_worker(script, agents)
        place_call(switch, worker, sip_call_id)
        await calls_done(switch)
        cdr = await switch.store.get_call_by_sip_id(sip_call_id)
        case = await switch.store.case_for_call(cdr.id)
        return {"cdr": cdr, "tracking_code": case.tracking_code if case else None}


def call_events(records: list[dict[str, Any]], sip_call_id: str) -> list[str]:
    return [r["event"] + (f":{r['step']}" if r["event"] == "ivr_step" else "")
            + (f":{r['kind']}" if r["event"] == "recording_end" else "")
            for r in records if r.get("call_id") == sip_call_id and "event" in r]


def assert_nothing_personal(capture: LogCapture, *secrets: str) -> None:
    """No line, message or field, holds the ID, the keys as keyed, or the full tracking code."""
    for line in capture.lines():
        for secret in secrets:
            assert secret not in line, (secret, line)


async def test_a_recorded_message_call_logs_each_event_once_with_its_call_id(
        tmp_path: Path, capture: LogCapture) -> None:
    stored = await run_call(tmp_path, message_script(), "msg-1@trunk")
    records = capture.records()
    assert call_events(records, "msg-1@trunk") == [
        "arrival", "routed", "ivr_step:greeting", "recording_end:national_id_utterance", "ivr_step:national_id",
        "ivr_step:menu", "ivr_step:about", "recording_end:message", "ivr_step:message", "case",
        "ivr_step:tracking_code", "ivr_step:goodbye", "hangup"]
    mine = [r for r in records if r.get("call_id") == "msg-1@trunk"]
    assert all(r["cdr_id"] == stored["cdr"].id and r["worker"] == 0 for r in mine)
    by_event = {r["event"]: r for r in mine if "event" in r}
    assert by_event["routed"]["decision"] == "answer"
    assert by_event["hangup"]["disposition"] == "completed" == stored["cdr"].disposition
    message = next(r for r in mine if r.get("kind") == "message")
    assert message["reason"] == "silence" and message["duration_s"] > 2.0
    code = stored["tracking_code"]
    assert code is not None and by_event["case"]["tracking_code_tail"] == "…" + code[-3:]
    assert_nothing_personal(capture, NATIONAL_ID, NATIONAL_ID + "121", code, "88776655")


async def test_a_live_call_logs_the_queue_the_bridge_and_the_conversation(
        tmp_path: Path, capture: LogCapture) -> None:
    stored = await run_call(tmp_path, live_script(), "live-1@trunk",
                            agents={"1001": AgentPhone(answer_after_s=0.2, talk_s=1.0)})
    records = capture.records()
    assert call_events(records, "live-1@trunk") == [
        "arrival", "routed", "ivr_step:greeting", "recording_end:national_id_utterance", "ivr_step:national_id",
        "ivr_step:menu", "ivr_step:about", "queue_join", "queue_leave", "bridged", "recording_end:conversation",
        "bridge_end", "ivr_step:queue", "ivr_step:survey", "ivr_step:goodbye", "hangup"]
    mine = {r["event"]: r for r in records if r.get("call_id") == "live-1@trunk" and "event" in r}
    assert mine["queue_leave"]["reason"] == "answered" and mine["bridged"]["agent"] == "1001"
    code = stored["tracking_code"]
    assert code is not None and mine["bridge_end"]["tracking_code_tail"] == "…" + code[-3:]
    assert_nothing_personal(capture, NATIONAL_ID, NATIONAL_ID + "111", code, "88776655")


@pytest.mark.parametrize("capture", ["text"], indirect=True)
async def test_the_text_format_names_the_call_on_each_of_its_lines(tmp_path: Path, capture: LogCapture) -> None:
    await run_call(tmp_path, message_script(), "text-1@trunk")
    lines = [line for line in capture.lines() if "call_id=text-1@trunk" in line]
    assert any(" control INFO ivr.steps: [call_id=text-1@trunk cdr=1 worker=0] ivr step menu: message" in line
               for line in lines), lines
    assert any("hang-up: completed after" in line for line in lines)
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_lines_outside_a_call_carry_no_call_fields_and_a_bound_call_is_reset() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.call_events")
    handler = logs.handler("json", "control", stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logs.call_context(logs.CallContext("x@y", 7, 1)):
            logger.info("inside", extra={"event": "arrival"})
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["call_id"], inside["cdr_id"], inside["worker"], inside["event"]) == ("x@y", 7, 1, "arrival")
    assert inside["process"] == "control" and inside["levelname"] == "INFO" and "timestamp" in inside
    assert "call_id" not in outside and outside["message"] == "outside"


def test_configure_leaves_one_handler_on_stderr_at_the_level_asked() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        logs.configure("json", "WARNING", "worker3")
        (handler,) = root.handlers
        assert root.level == logging.WARNING and isinstance(handler.formatter, JsonFormatter)
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m", None, None)
        assert json.loads(handler.format(record))["process"] == "worker3"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
