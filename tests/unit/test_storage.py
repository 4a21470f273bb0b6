"""Unit tests for the storage layer's case store, each against a real SQLite file and a real PostgreSQL server."""

import asyncio
import dataclasses
import logging
import sqlite3
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from softswitch.domain.tracking_code import is_tracking_code
from storage.crypto import IdProtector
from storage.errors import Conflict, NotFound, StorageFull, StoreError
from storage.models import CallRecord, Case, IntakeResult, PersonId
from storage.store import CASE_STATUSES, Store, open_store
import storage.store
from tests.support.postgres import StoreDatabase

pytestmark = pytest.mark.unit

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
PEPPER = b"p" * 32
NATIONAL_ID = "0987654321"
SHA = "ab" * 32


@pytest.fixture
def protector() -> IdProtector:
    return IdProtector({"k1": KEY_1}, "k1", PEPPER)


@pytest.fixture
def db(store_database: StoreDatabase) -> StoreDatabase:
    return store_database


@pytest.fixture
async def store(db: StoreDatabase, protector: IdProtector) -> AsyncIterator[Store]:
    async with open_store(db.target, protector) as opened:
        yield opened


async def _new_call(store: Store, sip_call_id: str = "abc@10.0.0.1", at: float = 100.0) -> int:
    return await store.add_call(sip_call_id, "sip:0912@pstn", "sip:111@gw", "pstn", 3, at)


async def test_call_case_recordings_round_trip(store: Store) -> None:
    call_id = await _new_call(store)
    await store.answer_call(call_id, 101.0)
    utterance = await store.add_recording(
        call_id, None, "national_id_utterance", "/rec/1.wav", 4.5, SHA, True
    )
    case = await store.create_case(call_id, "received", NATIONAL_ID, "speech")
    assert is_tracking_code(case.tracking_code)
    assert case == Case(
        id=case.id,
        tracking_code=case.tracking_code,
        status="received",
        created_at=case.created_at,
        call_id=call_id,
        national_id_masked="********21",
        id_source="speech",
        id_status="verified",
    )
    assert await store.attach_recordings(call_id, case.id) == 1
    message = await store.add_recording(
        call_id, case.id, "message", "/rec/2.wav", 30.0, SHA, False
    )
    await store.end_call(call_id, 160.0, "completed", ["welcome", "پیام", "goodbye"])

    assert await store.get_call(call_id) == CallRecord(
        id=call_id,
        sip_call_id="abc@10.0.0.1",
        from_uri="sip:0912@pstn",
        to_uri="sip:111@gw",
        source="pstn",
        worker_id=3,
        arrived_at=100.0,
        answered_at=101.0,
        ended_at=160.0,
        disposition="completed",
        ivr_path=("welcome", "پیام", "goodbye"),
    )
    assert await store.get_case(case.tracking_code) == case
    assert await store.case_for_call(call_id) == case
    expected = [dataclasses.replace(utterance, case_id=case.id), message]
    assert await store.recordings_for_call(call_id) == expected
    assert await store.recordings_for_case(case.id) == expected
    assert await store.national_id_of(case.id) == NATIONAL_ID

    await store.set_case_status(case.id, "closed")
    assert (await store.get_case(case.tracking_code)).status == "closed"
    assert await store.unfinished_calls() == []


async def test_case_without_call_or_id(store: Store) -> None:
    case = await store.create_case(None, "received", None, "none")
    assert case.call_id is None and case.national_id_masked is None
    assert await store.national_id_of(case.id) is None
    assert await store.get_case(case.tracking_code) == case


async def test_speech_case_may_lack_an_id(store: Store) -> None:
    case = await store.create_case(await _new_call(store), "received", None, "speech")
    assert case.id_source == "speech" and await store.national_id_of(case.id) is None


async def test_writes_are_committed_before_returning(store: Store, db: StoreDatabase) -> None:
    call_id = await _new_call(store)
    case = await store.create_case(call_id, "received", NATIONAL_ID, "keypad")
    await store.add_recording(call_id, case.id, "message", "/rec/m.wav", 1.0, SHA, True)
    # A second connection sees only committed data.
    assert await db.raw("SELECT tracking_code FROM cases") == [(case.tracking_code,)]
    assert await db.raw("SELECT count(*) FROM recordings") == [(1,)]


async def test_national_id_never_stored_in_clear(
    db: StoreDatabase, protector: IdProtector, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [NATIONAL_ID, "1234567890", "5550001112"]
    codes: list[str] = []

    async def assert_hidden() -> None:
        data = await db.stored_bytes()
        # Positive control: the searched bytes do contain the case rows.
        assert all(code.encode() in data for code in codes)
        for national_id in ids:
            assert national_id.encode("ascii") not in data
            assert national_id.encode("utf-16-le") not in data

    with caplog.at_level(logging.DEBUG):
        async with open_store(db.target, protector) as store:
            for n, national_id in enumerate(ids):
                call_id = await _new_call(store, f"call-{n}")
                case = await store.create_case(call_id, "received", national_id, "keypad")
                assert await store.national_id_of(case.id) == national_id
                codes.append(case.tracking_code)
            # While open the rows live in SQLite's -wal file, PostgreSQL's write-ahead log.
            await assert_hidden()
    for national_id in ids:
        assert national_id not in caplog.text
    if db.engine == "sqlite":
        # Closing checkpoints the WAL into the main file.
        assert not Path(str(db.target) + "-wal").exists()
    await assert_hidden()


async def test_key_rotation_keeps_old_cases_readable(
    db: StoreDatabase, protector: IdProtector
) -> None:
    async with open_store(db.target, protector) as store:
        old = await store.create_case(None, "received", NATIONAL_ID, "keypad")

    rotated = IdProtector({"k1": KEY_1, "k2": KEY_2}, "k2", PEPPER)
    async with open_store(db.target, rotated) as store:
        new = await store.create_case(None, "received", "1112223334", "keypad")
        assert await store.national_id_of(old.id) == NATIONAL_ID
        assert await store.national_id_of(new.id) == "1112223334"
    rows = await db.raw("SELECT id, national_id_key_id, national_id_hmac FROM cases ORDER BY id")
    assert rows == [
        (old.id, "k1", protector.lookup_hash(NATIONAL_ID)),
        (new.id, "k2", rotated.lookup_hash("1112223334")),
    ]

    retired = IdProtector({"k2": KEY_2}, "k2", PEPPER)
    async with open_store(db.target, retired) as store:
        assert await store.national_id_of(new.id) == "1112223334"
        with pytest.raises(StoreError, match="k1"):
            await store.national_id_of(old.id)


async def test_tampered_ciphertext_is_reported(store: Store, db: StoreDatabase) -> None:
    case = await store.create_case(None, "received", NATIONAL_ID, "keypad")
    await db.raw("UPDATE cases SET national_id_key_id = 'k9' WHERE id = ?", case.id)
    with pytest.raises(StoreError):
        await store.national_id_of(case.id)


async def test_get_call_by_sip_id_returns_latest(store: Store) -> None:
    first = await _new_call(store, "reused@host", at=100.0)
    await _new_call(store, "other@host", at=150.0)
    second = await _new_call(store, "reused@host", at=200.0)
    latest = await store.get_call_by_sip_id("reused@host")
    assert latest.id == second and latest.arrived_at == 200.0
    assert (await store.get_call(first)).sip_call_id == "reused@host"


async def test_unfinished_calls(store: Store) -> None:
    done = await _new_call(store, "a")
    open_1 = await _new_call(store, "b")
    open_2 = await _new_call(store, "c")
    await store.answer_call(open_2, 101.0)
    await store.end_call(done, 120.0, "caller_hangup", [])
    assert [c.id for c in await store.unfinished_calls()] == [open_1, open_2]
    assert (await store.get_call(done)).ivr_path == ()


async def test_not_found_errors(store: Store) -> None:
    call_id = await _new_call(store)
    with pytest.raises(NotFound):
        await store.get_call(999)
    with pytest.raises(NotFound):
        await store.get_call_by_sip_id("nobody@nowhere")
    with pytest.raises(NotFound):
        await store.get_case("123456782")
    with pytest.raises(NotFound):
        await store.answer_call(999, 1.0)
    with pytest.raises(NotFound):
        await store.end_call(999, 1.0, "x", [])
    with pytest.raises(NotFound):
        await store.create_case(999, "received", None, "none")
    with pytest.raises(NotFound):
        await store.set_case_status(999, "closed")
    with pytest.raises(NotFound):
        await store.national_id_of(999)
    with pytest.raises(NotFound):
        await store.add_recording(999, None, "message", "/x.wav", 1.0, SHA, True)
    with pytest.raises(NotFound):
        await store.add_recording(call_id, 999, "message", "/x.wav", 1.0, SHA, True)
    with pytest.raises(NotFound):
        await store.attach_recordings(call_id, 999)
    assert await store.case_for_call(call_id) is None
    assert await store.recordings_for_call(999) == []
    assert await store.recordings_for_case(999) == []


async def test_conflicts(store: Store) -> None:
    call_id = await _new_call(store)
    await store.answer_call(call_id, 101.0)
    with pytest.raises(Conflict):
        await store.answer_call(call_id, 102.0)
    await store.create_case(call_id, "received", None, "none")
    with pytest.raises(Conflict):
        await store.create_case(call_id, "received", None, "none")
    await store.end_call(call_id, 130.0, "completed", ["a"])
    with pytest.raises(Conflict):
        await store.end_call(call_id, 131.0, "completed", ["b"])
    assert (await store.get_call(call_id)).ivr_path == ("a",)


async def test_attach_leaves_recordings_of_other_cases_alone(store: Store) -> None:
    call_id = await _new_call(store)
    other = await store.create_case(None, "received", None, "none")
    case = await store.create_case(call_id, "received", None, "none")
    await store.add_recording(call_id, other.id, "message", "/a.wav", 1.0, SHA, True)
    await store.add_recording(call_id, None, "message", "/b.wav", 1.0, SHA, True)
    assert await store.attach_recordings(call_id, case.id) == 1
    assert [r.path for r in await store.recordings_for_case(case.id)] == ["/b.wav"]
    assert [r.path for r in await store.recordings_for_case(other.id)] == ["/a.wav"]


@pytest.mark.parametrize(
    ("national_id", "id_source"),
    [(None, "voice"), (NATIONAL_ID, "none"), ("12345", "keypad"), ("12345678901", "keypad")],
)
async def test_invalid_case_input_is_rejected(
    store: Store, db: StoreDatabase, national_id: str | None, id_source: str
) -> None:
    with pytest.raises(ValueError):
        await store.create_case(None, "received", national_id, id_source)
    assert await db.raw("SELECT count(*) FROM cases") == [(0,)]


async def test_tracking_code_collision_is_retried(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = iter(["123456782", "123456782", "234567891"])
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: next(codes))
    first = await store.create_case(None, "received", None, "none")
    second = await store.create_case(None, "received", None, "none")
    assert (first.tracking_code, second.tracking_code) == ("123456782", "234567891")


async def test_persistent_collisions_give_up(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: "123456782")
    await store.create_case(None, "received", None, "none")
    with pytest.raises(Conflict):
        await store.create_case(None, "received", None, "none")


async def test_disk_full_raises_storage_full(tmp_path: Path, protector: IdProtector) -> None:
    async with open_store(tmp_path / "store.db", protector) as store:
        await _sqlite_disk_fills(store)


async def _sqlite_disk_fills(store: Store) -> None:
    call_id = await _new_call(store)
    # A page cap makes SQLite hit SQLITE_FULL exactly as a full disk does.
    await store._db.execute("PRAGMA max_page_count = 8")
    stored = 0
    with pytest.raises(StorageFull) as excinfo:
        for _ in range(100):
            await store.add_recording(call_id, None, "message", "/r/" + "x" * 2000, 1.0, SHA, True)
            stored += 1
    assert isinstance(excinfo.value.__cause__, sqlite3.OperationalError)
    # The failed write rolled back alone; earlier ones stay committed.
    assert stored > 0
    assert len(await store.recordings_for_call(call_id)) == stored


async def test_case_for_someone_else_is_filed_under_the_subject(store: Store, db: StoreDatabase) -> None:
    subject_id, caller_id = "0499370899", "0790419904"
    call_id = await _new_call(store)
    case = await store.create_case(call_id, "received", subject_id, "keypad",
                                   caller=PersonId(caller_id, "keypad", "verified"))
    assert case.subject_is_caller is False and case.id_status == "verified"
    assert case.national_id_masked == "********99" and case.caller_national_id_masked == "********04"
    assert await store.get_case(case.tracking_code) == case
    assert [c.id for c in await store.cases_for_national_id(subject_id)] == [case.id]
    assert [c.id for c in await store.cases_for_national_id(caller_id)] == [case.id]
    assert await store.cases_for_national_id("0084575948") == []
    raw = await db.stored_bytes()
    assert subject_id.encode() not in raw and caller_id.encode() not in raw


async def test_an_open_case_makes_a_repeat_caller_until_it_is_answered(store: Store) -> None:
    subject_id, caller_id = "0499370899", "0790419904"
    case = await store.create_case(await _new_call(store), "received", subject_id, "keypad",
                                   caller=PersonId(caller_id, "keypad", "verified"))
    assert await store.has_open_case(subject_id, since=case.created_at - 1)
    assert await store.has_open_case(caller_id, since=case.created_at - 1)  # who raised it for them
    assert not await store.has_open_case(subject_id, since=case.created_at + 1)  # older than the window
    assert not await store.has_open_case("0084575948", since=0)
    await store.set_case_status(case.id, "referred")
    assert await store.has_open_case(subject_id, since=0)
    await store.set_case_status(case.id, "answered")
    assert not await store.has_open_case(subject_id, since=0)


async def test_unverified_and_to_transcribe_statuses(store: Store) -> None:
    unverified = await store.create_case(None, "received", "1234567890", "speech", id_status="unverified")
    assert unverified.id_status == "unverified" and unverified.subject_is_caller
    audio_only = await store.create_case(None, "received", None, "speech")
    assert audio_only.id_status == "to_transcribe"
    with pytest.raises(ValueError, match="id_status"):
        await store.create_case(None, "received", None, "none", id_status="maybe")


# -- issue 5: referral, answers, other channels, duplicates -------------------------------------------

SUBJECT, RELATIVE, STRANGER = "0499370899", "0790419904", "0084575948"
WINDOW_S = 100.0
T0 = 1_000_000.0


class Clock:
    """The store's time.time(), set by the test; whole seconds keep window arithmetic exact."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(storage.store, "time", types.SimpleNamespace(time=lambda: self.now))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _verified(national_id: str) -> PersonId:
    return PersonId(national_id, "keypad", "verified")


async def _referred(store: Store, subject: str = SUBJECT, agency: str = "health", category: str = "شکایت",
                    caller: PersonId | None = None) -> Case:
    """A case as an SMS gateway opens it."""
    return await store.create_case(None, "referred", subject, "keypad", caller=caller, channel="sms", agency=agency,
                                   category=category, summary="نوبت جراحی", actor="api:sms-gateway")


async def _intake(store: Store, subject: PersonId, **overrides: Any) -> IntakeResult:
    request: dict[str, Any] = {"channel": "sms", "agency": "health", "category": "شکایت",
                               "summary": "نوبت جراحی", "actor": "api:sms-gateway", "window_s": WINDOW_S}
    return await store.intake(subject, **{**request, **overrides})


async def test_case_statuses_are_checked(store: Store) -> None:
    assert CASE_STATUSES == ("received", "received_incomplete", "referred", "answered", "closed")
    with pytest.raises(ValueError, match="status"):
        await store.create_case(None, "open", None, "none")
    case = await store.create_case(None, "received", None, "none")
    with pytest.raises(ValueError, match="status"):
        await store.set_case_status(case.id, "done")
    with pytest.raises(ValueError, match="status"):
        await store.list_cases(status="done")
    assert [e.kind for e in await store.case_events(case.id)] == ["created"]


async def test_case_from_another_channel_in_one_call(store: Store, clock: Clock) -> None:
    case = await _referred(store, caller=_verified(RELATIVE))
    assert (case.status, case.channel, case.call_id) == ("referred", "sms", None)
    assert (case.agency, case.category, case.summary) == ("health", "شکایت", "نوبت جراحی")
    assert case.filed_by == "api:sms-gateway" and case.created_at == T0
    assert case.subject_is_caller is False
    assert (case.national_id_masked, case.caller_national_id_masked) == ("********99", "********04")
    assert case.answer_text is None and case.answered_at is None and case.is_open
    [created] = await store.case_events(case.id)
    assert (created.actor, created.kind, created.at) == ("api:sms-gateway", "created", T0)
    assert created.detail == {"status": "referred", "channel": "sms", "agency": "health", "category": "شکایت"}
    phone = await store.create_case(await _new_call(store), "received", SUBJECT, "keypad")
    assert (phone.channel, phone.agency, phone.filed_by) == ("phone", None, None)


async def test_set_case_status_keeps_from_and_to(store: Store, clock: Clock) -> None:
    case = await store.create_case(None, "received", SUBJECT, "keypad")
    clock.now = T0 + 5
    closed = await store.set_case_status(case.id, "closed", "agency:health/u1")
    assert closed.status == "closed" and not closed.is_open
    await store.set_case_status(case.id, "received")
    events = await store.case_events(case.id)
    assert [(e.actor, e.kind, e.at, e.detail) for e in events[1:]] == [
        ("agency:health/u1", "status", T0 + 5, {"from": "received", "to": "closed"}),
        ("system", "status", T0 + 5, {"from": "closed", "to": "received"}),
    ]


async def test_refer_case(store: Store, clock: Clock) -> None:
    case = await store.create_case(None, "received", SUBJECT, "keypad")
    first = await store.refer_case(case.id, "health", "agent:1001")
    assert (first.status, first.agency) == ("referred", "health")
    clock.now = T0 + 60
    again = await store.refer_case(case.id, "social-security", "agent:1002")
    assert (again.status, again.agency) == ("referred", "social-security")
    events = await store.case_events(case.id)
    assert [(e.actor, e.kind, e.detail) for e in events[1:]] == [
        ("agent:1001", "referred", {"from": None, "to": "health", "status_from": "received"}),
        ("agent:1002", "referred", {"from": "health", "to": "social-security", "status_from": "referred"}),
    ]
    assert events[2].at == T0 + 60
    with pytest.raises(NotFound):
        await store.refer_case(999, "health", "agent:1001")


async def test_set_answer(store: Store, clock: Clock) -> None:
    case = await _referred(store)
    clock.now = T0 + 30
    answered = await store.set_answer(case.id, "agency:health/u1", text="نوبت شما ۱۲ اردیبهشت است.")
    assert answered.status == "answered" and answered.answer_text == "نوبت شما ۱۲ اردیبهشت است."
    assert (answered.answered_at, answered.answered_by, answered.answer_audio) == (T0 + 30, "agency:health/u1", None)
    # The text's speech, synthesized later, joins the same answer.
    spoken = await store.set_answer(case.id, "agency:health/u1", text=answered.answer_text,
                                    audio_path="/var/answers/1.wav", audio_sha256=SHA)
    assert (spoken.answer_audio, spoken.answer_audio_sha256) == ("/var/answers/1.wav", SHA)
    # A recorded answer replaces the written one.
    recorded = await store.set_answer(case.id, "agency:health/u2", audio_path="/var/answers/2.wav")
    assert recorded.answer_text is None and recorded.answer_audio == "/var/answers/2.wav"
    assert await store.get_case(case.tracking_code) == recorded
    events = [e for e in await store.case_events(case.id) if e.kind == "answered"]
    assert [(e.actor, e.detail["from"], e.detail["to"]) for e in events] == [
        ("agency:health/u1", "referred", "answered"), ("agency:health/u1", "answered", "answered"),
        ("agency:health/u2", "answered", "answered")]
    assert events[0].detail["text"] == "نوبت شما ۱۲ اردیبهشت است." and events[1].detail["audio_sha256"] == SHA
    with pytest.raises(ValueError, match="text or an audio"):
        await store.set_answer(case.id, "agency:health/u1")
    with pytest.raises(NotFound):
        await store.set_answer(999, "agency:health/u1", text="x")


async def test_file_case_keeps_history(store: Store) -> None:
    case = await store.create_case(await _new_call(store), "received", SUBJECT, "keypad")
    filed = await store.file_case(case.id, "roads", "پرسش", "جاده", "agent:1001")
    assert (filed.agency, filed.category, filed.summary, filed.filed_by) == ("roads", "پرسش", "جاده", "agent:1001")
    assert [(e.kind, e.detail) for e in await store.case_events(case.id)][-1] == (
        "filed", {"agency": "roads", "category": "پرسش"})
    with pytest.raises(NotFound):
        await store.file_case(999, "roads", "پرسش", "x", "agent:1001")


async def test_find_duplicate_window_edges(store: Store, clock: Clock) -> None:
    case = await _referred(store)
    for now, expected in [(T0, case.id), (T0 + WINDOW_S, case.id), (T0 + WINDOW_S + 0.5, None)]:
        found = await store.find_duplicate(SUBJECT, "health", "شکایت", WINDOW_S, now=now)
        assert (found.id if found else None) == expected, now
    clock.now = T0 + WINDOW_S + 1
    assert await store.find_duplicate(SUBJECT, "health", "شکایت", WINDOW_S) is None
    assert await store.find_duplicate(SUBJECT, "health", "شکایت", WINDOW_S + 1) == case


async def test_find_duplicate_needs_same_subject_agency_category_and_an_open_case(
    store: Store, clock: Clock
) -> None:
    first = await _referred(store)
    clock.now = T0 + 10
    second = await _referred(store)
    await _referred(store, subject=STRANGER)
    await _referred(store, agency="roads")
    await _referred(store, category="پرسش")
    # A case raised by the subject for someone else is not the subject's own.
    await _referred(store, subject=STRANGER, caller=_verified(SUBJECT), category="پیشنهاد")

    async def found(subject: str = SUBJECT, agency: str = "health", category: str = "شکایت") -> int | None:
        case = await store.find_duplicate(subject, agency, category, WINDOW_S, now=T0 + 20)
        return None if case is None else case.id

    assert await found() == first.id  # the oldest
    assert await found(agency="energy") is None
    assert await found(category="پیشنهاد") is None
    assert await found(subject=RELATIVE) is None
    await store.set_case_status(first.id, "closed")
    assert await found() == second.id
    await store.set_answer(second.id, "agency:health/u1", text="پاسخ")
    assert await found() == second.id  # answered is still open
    await store.set_case_status(second.id, "closed")
    assert await found() is None


async def test_duplicate_lookup_uses_its_index(store: Store, db: StoreDatabase) -> None:
    query = ("SELECT id FROM cases WHERE national_id_hmac = ? AND agency = ? AND category = ?"
             " AND status <> 'closed' AND created_at >= ? ORDER BY created_at, id LIMIT 1")
    params = ("h", "a", "c", 0.0)
    if db.engine == "sqlite":
        plan = " ".join(str(row[3]) for row in await store._db.fetchall("EXPLAIN QUERY PLAN " + query, params))
    else:
        # An empty table is read whole by choice; the planner is told to use an index if it can.
        async with store._db.transaction() as tx:
            await tx.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(row[0]) for row in await tx.fetchall("EXPLAIN " + query, params))
    assert "cases_open_by_subject" in plan


async def test_record_contact_masks_the_submitter(store: Store, db: StoreDatabase, clock: Clock) -> None:
    case = await _referred(store)
    clock.now = T0 + 3
    await store.record_contact(case.id, "api:letter-office", "letter", submitter_national_id=RELATIVE,
                               summary="دوباره")
    contact = (await store.case_events(case.id))[-1]
    assert (contact.actor, contact.kind, contact.at) == ("api:letter-office", "contact", T0 + 3)
    assert contact.detail == {"channel": "letter", "submitter": "********04", "summary": "دوباره"}
    assert RELATIVE.encode() not in await db.stored_bytes()
    with pytest.raises(NotFound):
        await store.record_contact(999, "ivr", "phone")


async def test_intake_opens_a_referred_case_then_links_duplicates(store: Store, db: StoreDatabase, clock: Clock) -> None:
    new = await _intake(store, _verified(SUBJECT))
    assert new.duplicate is False and new.case.status == "referred" and new.case.channel == "sms"
    assert new.case.subject_is_caller is True

    clock.now = T0 + 50
    call_id = await _new_call(store)
    by_phone = await _intake(store, _verified(SUBJECT), submitter=_verified(RELATIVE), channel="phone",
                             actor="agent:1001", call_id=call_id, summary=None)
    by_letter = await _intake(store, _verified(SUBJECT), submitter=_verified(SUBJECT), channel="letter",
                              actor="api:letter-office")
    assert by_phone.duplicate and by_letter.duplicate
    assert by_phone.case.id == by_letter.case.id == new.case.id
    contacts = [(e.actor, e.detail) for e in await store.case_events(new.case.id) if e.kind == "contact"]
    assert contacts == [
        ("agent:1001", {"channel": "phone", "submitter": "********04", "call_id": call_id}),
        ("api:letter-office", {"channel": "letter", "submitter": "********99", "summary": "نوبت جراحی"}),
    ]
    assert await db.raw("SELECT count(*) FROM cases") == [(1,)]

    other_agency = await _intake(store, _verified(SUBJECT), agency="roads")
    assert not other_agency.duplicate and other_agency.case.id != new.case.id
    clock.now = T0 + WINDOW_S + 1
    later = await _intake(store, _verified(SUBJECT))
    assert not later.duplicate and later.case.id != new.case.id


async def test_intake_submitter_is_kept_on_a_new_case(store: Store) -> None:
    result = await _intake(store, _verified(SUBJECT), submitter=_verified(RELATIVE), channel="letter")
    assert result.case.subject_is_caller is False and result.case.caller_national_id_masked == "********04"
    assert await store.person_matches(result.case.id, RELATIVE)
    themselves = await _intake(store, _verified(STRANGER), submitter=_verified(STRANGER))
    assert themselves.case.subject_is_caller is True


async def test_intake_never_links_an_unverified_id(store: Store) -> None:
    await _intake(store, _verified(SUBJECT))
    unverified = await _intake(store, PersonId(SUBJECT, "speech", "unverified"))
    assert not unverified.duplicate and unverified.case.id_status == "unverified"
    assert not (await _intake(store, PersonId(None, "speech", "to_transcribe"))).duplicate


async def test_intake_override_opens_a_case_and_says_why(store: Store) -> None:
    first = await _intake(store, _verified(SUBJECT))
    forced = await _intake(store, _verified(SUBJECT), actor="agent:1001", override_reason="موضوع دیگری است")
    assert not forced.duplicate and forced.case.id != first.case.id
    events = await store.case_events(forced.case.id)
    assert [(e.actor, e.kind, e.detail) for e in events] == [
        ("agent:1001", "created", {"status": "referred", "channel": "sms", "agency": "health", "category": "شکایت"}),
        ("agent:1001", "duplicate_override", {"of": first.case.tracking_code, "reason": "موضوع دیگری است"}),
    ]
    # Without a duplicate there is nothing to override.
    plain = await _intake(store, _verified(STRANGER), override_reason="x")
    assert [e.kind for e in await store.case_events(plain.case.id)] == ["created"]


async def test_concurrent_intakes_open_one_case(store: Store, db: StoreDatabase) -> None:
    results = await asyncio.gather(*(_intake(store, _verified(SUBJECT), channel=channel)
                                     for channel in ("sms", "letter", "web", "phone")))
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert len({r.case.id for r in results}) == 1
    assert await db.raw("SELECT count(*) FROM cases") == [(1,)]


async def test_list_cases_filters_newest_first(store: Store, clock: Clock) -> None:
    old = await _referred(store)
    clock.now = T0 + 10
    roads = await _referred(store, agency="roads")
    clock.now = T0 + 20
    received = await store.create_case(None, "received", None, "none")
    clock.now = T0 + 20  # same second: the later id comes first
    newest = await _referred(store, subject=STRANGER)

    def ids(cases: list[Case]) -> list[int]:
        return [c.id for c in cases]

    assert ids(await store.list_cases()) == [newest.id, received.id, roads.id, old.id]
    assert ids(await store.list_cases(agency="health")) == [newest.id, old.id]
    assert ids(await store.list_cases(status="received")) == [received.id]
    assert ids(await store.list_cases(since=T0 + 10)) == [newest.id, received.id, roads.id]
    assert ids(await store.list_cases(agency="health", status="referred", since=T0 + 1)) == [newest.id]
    assert ids(await store.list_cases(limit=2)) == [newest.id, received.id]
    assert ids(await store.list_cases(limit=None)) == ids(await store.list_cases())
    assert await store.list_cases(agency="energy") == []


async def test_list_calls_and_their_tracking_codes(store: Store) -> None:
    early = await _new_call(store, "early", at=100.0)
    late = await _new_call(store, "late", at=200.0)
    bare = await _new_call(store, "bare", at=300.0)
    early_case = await store.create_case(early, "received", None, "none")
    late_case = await store.create_case(late, "received", None, "none")
    assert [c.id for c in await store.list_calls()] == [bare, late, early]
    assert [c.id for c in await store.list_calls(since=200.0)] == [bare, late]
    assert await store.tracking_codes_by_call() == {early: early_case.tracking_code, late: late_case.tracking_code}
    assert await store.tracking_codes_by_call(since=150.0) == {late: late_case.tracking_code}


async def test_person_matches_subject_or_submitter_only(store: Store) -> None:
    case = await _referred(store, caller=_verified(RELATIVE))
    own = await store.create_case(None, "received", STRANGER, "keypad")
    assert await store.person_matches(case.id, SUBJECT)
    assert await store.person_matches(case.id, RELATIVE)
    assert not await store.person_matches(case.id, STRANGER)
    assert await store.person_matches(own.id, STRANGER) and not await store.person_matches(own.id, SUBJECT)
    assert not await store.person_matches(case.id, "12345")
    no_id = await store.create_case(None, "received", None, "speech")
    assert not await store.person_matches(no_id.id, SUBJECT)
    with pytest.raises(NotFound):
        await store.person_matches(999, SUBJECT)


async def test_each_public_operation_reports_its_time_to_the_observer_failures_included(store: Store) -> None:
    seen: list[tuple[str, float]] = []
    store.observe = lambda operation, seconds: seen.append((operation, seconds))
    call_id = await _new_call(store)
    await store.open_call_case(call_id, PersonId("0499370899", "keypad", "verified"))
    with pytest.raises(NotFound):
        await store.get_call(call_id + 1000)
    # The outer call only: create_case and add_case_event inside open_call_case are its own time.
    assert [operation for operation, _ in seen] == ["add_call", "open_call_case", "get_call"]
    assert all(0 <= seconds < 10 for _, seconds in seen)
    store.observe = None
    await store.get_call(call_id)
    assert len(seen) == 3


async def test_registered_sip_users_are_those_with_an_unexpired_registration(store: Store, db: StoreDatabase) -> None:
    # Rows as a SIP front writes them (usrloc DB-only, times in Unix seconds), on either engine.
    for ruid, user, expires in (("uloc-1-a", "1001", 1_000), ("uloc-1-b", "1001", 2_000),
                                ("uloc-2-c", "1002", 999), ("uloc-2-d", "1003", 1_001)):
        await db.raw("INSERT INTO location (ruid, username, contact, expires, server_id) VALUES (?, ?, ?, ?, 1)",
                     ruid, user, f"sip:{user}@192.0.2.1:{5060 + len(ruid)}", expires)
    assert await store.registered_sip_users(1_000.5) == {"1001", "1003"}
    assert await store.registered_sip_users(2_000) == set()
    assert (await store.registered_contacts(1, 1_000.5), await store.registered_contacts(2, 0)) == (2, 0)
