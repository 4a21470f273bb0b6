"""Unit tests for the storage layer's CSV reports (storage.reports)."""

import csv
import dataclasses
import io
from datetime import timezone
from zoneinfo import ZoneInfo

import pytest

from storage.crypto import IdProtector
from storage.models import CallRecord, Case, PersonId
from storage.reports import BOM, CALL_HEADER, CASE_HEADER, calls_csv, cases_csv
from storage.store import open_store
from tests.support.postgres import StoreDatabase

pytestmark = pytest.mark.unit

TEHRAN = ZoneInfo("Asia/Tehran")
# 2026-03-21 06:30:00 UTC, 10:00 in Tehran (+03:30)
AT = 1774074600.0


def _rows(text: str) -> list[dict[str, str]]:
    assert text.startswith(BOM)
    # What a spreadsheet program gets: the bytes, read as UTF-8 with a BOM.
    decoded = text.encode("utf-8").decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(decoded, newline="")))


CASE = Case(id=1, tracking_code="123456782", status="referred", created_at=AT, call_id=None,
            national_id_masked="********99", id_source="keypad", id_status="verified")


def test_cases_csv_masks_ids_and_keeps_persian() -> None:
    cases = [
        dataclasses.replace(
            CASE, subject_is_caller=False, caller_national_id_masked="********04", caller_id_source="keypad",
            caller_id_status="verified", agency="health", category="شکایت", summary="کد ملی من 0499370899 است",
            channel="sms", filed_by="api:sms-gateway", answered_at=AT + 3600, answered_by="agency:health/u1",
            answer_text="پاسخ"),
        dataclasses.replace(CASE, id=2, tracking_code="234567891", status="received", national_id_masked=None,
                            id_source="none", id_status="none"),
    ]
    text = cases_csv(cases, agency_names={"health": "وزارت بهداشت"}, tz=TEHRAN)
    assert text.count("\r\n") == 3
    first, second = _rows(text)
    assert tuple(first) == CASE_HEADER
    assert first == {
        "tracking_code": "123456782", "status": "referred", "created_at": "2026-03-21T10:00:00+03:30",
        "channel": "sms", "agency": "health", "agency_name": "وزارت بهداشت", "category": "شکایت",
        "national_id": "********99", "id_source": "keypad", "id_status": "verified", "on_behalf_of_other": "true",
        "caller_national_id": "********04", "filed_by": "api:sms-gateway", "answered_at": "2026-03-21T11:00:00+03:30",
        "answered_by": "agency:health/u1",
    }
    assert second["national_id"] == "" and second["agency_name"] == "" and second["on_behalf_of_other"] == "false"
    # Free text stays out: people write their IDs into it.
    assert "0499370899" not in text and "پاسخ" not in text


def test_calls_csv_links_cases_and_defuses_formulas() -> None:
    calls = [
        CallRecord(id=7, sip_call_id="=HYPERLINK(\"x\")", from_uri="sip:09121234567@pstn", to_uri="sip:111@gw",
                   source="127.0.0.1", worker_id=2, arrived_at=AT, answered_at=AT + 1, ended_at=AT + 61.5,
                   disposition="completed", ivr_path=("welcome", "national_id", "message"), agent_id="1001"),
        CallRecord(id=8, sip_call_id="b@host", from_uri="sip:0912@pstn", to_uri="sip:111@gw", source="127.0.0.1",
                   worker_id=None, arrived_at=AT, answered_at=None, ended_at=None, disposition=None, ivr_path=()),
    ]
    first, second = _rows(calls_csv(calls, {7: "123456782"}, tz=timezone.utc))
    assert tuple(first) == CALL_HEADER
    assert first["sip_call_id"] == "'=HYPERLINK(\"x\")"
    assert (first["arrived_at"], first["ended_at"], first["duration_s"]) == (
        "2026-03-21T06:30:00+00:00", "2026-03-21T06:31:01+00:00", "61.5")
    assert (first["ivr_path"], first["tracking_code"], first["agent_id"]) == (
        "welcome > national_id > message", "123456782", "1001")
    assert (second["ended_at"], second["duration_s"], second["tracking_code"], second["worker_id"]) == ("", "", "", "")
    assert "09121234567" not in calls_csv(calls, {}, tz=timezone.utc)


def test_empty_reports_have_the_header() -> None:
    assert _rows(cases_csv([], agency_names={}, tz=TEHRAN)) == []
    assert cases_csv([], agency_names={}, tz=TEHRAN) == BOM + ",".join(CASE_HEADER) + "\r\n"


async def test_reports_read_from_either_engine(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as store:
        call_id = await store.add_call("a@host", "sip:0912@pstn", "sip:111@gw", "127.0.0.1", 1, AT)
        await store.end_call(call_id, AT + 61.5, "completed", ["welcome", "message"])
        await store.create_case(call_id, "received", "0499370899", "keypad")
        result = await store.intake(PersonId("0790419904", "keypad", "verified"), channel="sms", agency="health",
                                    category="شکایت", summary="x", actor="api:sms", window_s=60.0)
        cases = _rows(cases_csv(await store.list_cases(), agency_names={"health": "وزارت بهداشت"}, tz=TEHRAN))
        calls = _rows(calls_csv(await store.list_calls(since=AT), await store.tracking_codes_by_call(since=AT),
                                tz=timezone.utc))
    assert [(c["tracking_code"], c["agency_name"], c["national_id"]) for c in cases][0] == (
        result.case.tracking_code, "وزارت بهداشت", "********04")
    assert cases[1]["national_id"] == "********99" and cases[1]["status"] == "received"
    [call] = calls
    assert (call["duration_s"], call["ivr_path"], call["tracking_code"]) == (
        "61.5", "welcome > message", cases[1]["tracking_code"])
