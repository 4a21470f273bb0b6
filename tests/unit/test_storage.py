"""Unit tests for the storage layer's case store, against real SQLite files."""

import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import storage.store
from storage.crypto import IdProtector
from storage.errors import Conflict, NotFound, StorageFull, StoreError
from storage.models import CallRecord, Case, PersonId
from storage.store import Store, open_store
from storage.tracking_code import is_tracking_code

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
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def store(db_path: Path, protector: IdProtector) -> AsyncIterator[Store]:
    async with open_store(db_path, protector) as opened:
        yield opened


async def _new_call(store: Store, sip_call_id: str = "abc@10.0.0.1", at: float = 100.0) -> int:
    return await store.add_call(sip_call_id, "sip:0912@pstn", "sip:111@gw", "pstn", 3, at)


def _raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def _database_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db_path.parent.glob(db_path.name + "*")))


async def test_call_case_recordings_round_trip(store: Store) -> None:
    call_id = await _new_call(store)
    await store.answer_call(call_id, 101.0)
    utterance = await store.add_recording(
        call_id, None, "national_id_utterance", "/rec/1.wav", 4.5, SHA, True
    )
    case = await store.create_case(call_id, "open", NATIONAL_ID, "speech")
    assert is_tracking_code(case.tracking_code)
    assert case == Case(
        id=case.id,
        tracking_code=case.tracking_code,
        status="open",
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
    case = await store.create_case(None, "open", None, "none")
    assert case.call_id is None and case.national_id_masked is None
    assert await store.national_id_of(case.id) is None
    assert await store.get_case(case.tracking_code) == case


async def test_speech_case_may_lack_an_id(store: Store) -> None:
    case = await store.create_case(await _new_call(store), "needs_transcription", None, "speech")
    assert case.id_source == "speech" and await store.national_id_of(case.id) is None


async def test_writes_are_committed_before_returning(store: Store, db_path: Path) -> None:
    call_id = await _new_call(store)
    case = await store.create_case(call_id, "open", NATIONAL_ID, "keypad")
    await store.add_recording(call_id, case.id, "message", "/rec/m.wav", 1.0, SHA, True)
    # A second connection sees only committed data.
    assert _raw(db_path, "SELECT tracking_code FROM cases") == [(case.tracking_code,)]
    assert _raw(db_path, "SELECT count(*) FROM recordings") == [(1,)]


async def test_national_id_never_stored_in_clear(
    db_path: Path, protector: IdProtector, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [NATIONAL_ID, "1234567890", "5550001112"]
    codes: list[str] = []

    def assert_hidden() -> None:
        data = _database_bytes(db_path)
        # Positive control: the searched bytes do contain the case rows.
        assert all(code.encode() in data for code in codes)
        for national_id in ids:
            assert national_id.encode("ascii") not in data
            assert national_id.encode("utf-16-le") not in data

    with caplog.at_level(logging.DEBUG):
        async with open_store(db_path, protector) as store:
            for n, national_id in enumerate(ids):
                call_id = await _new_call(store, f"call-{n}")
                case = await store.create_case(call_id, "open", national_id, "keypad")
                assert await store.national_id_of(case.id) == national_id
                codes.append(case.tracking_code)
            # While open the rows live in the -wal file.
            assert_hidden()
    for national_id in ids:
        assert national_id not in caplog.text
    # Closing checkpoints the WAL into the main file.
    assert not (db_path.parent / (db_path.name + "-wal")).exists()
    assert_hidden()


async def test_key_rotation_keeps_old_cases_readable(
    db_path: Path, protector: IdProtector
) -> None:
    async with open_store(db_path, protector) as store:
        old = await store.create_case(None, "open", NATIONAL_ID, "keypad")

    rotated = IdProtector({"k1": KEY_1, "k2": KEY_2}, "k2", PEPPER)
    async with open_store(db_path, rotated) as store:
        new = await store.create_case(None, "open", "1112223334", "keypad")
        assert await store.national_id_of(old.id) == NATIONAL_ID
        assert await store.national_id_of(new.id) == "1112223334"
    rows = _raw(db_path, "SELECT id, national_id_key_id, national_id_hmac FROM cases ORDER BY id")
    assert rows == [
        (old.id, "k1", protector.lookup_hash(NATIONAL_ID)),
        (new.id, "k2", rotated.lookup_hash("1112223334")),
    ]

    retired = IdProtector({"k2": KEY_2}, "k2", PEPPER)
    async with open_store(db_path, retired) as store:
        assert await store.national_id_of(new.id) == "1112223334"
        with pytest.raises(StoreError, match="k1"):
            await store.national_id_of(old.id)


async def test_tampered_ciphertext_is_reported(store: Store, db_path: Path) -> None:
    case = await store.create_case(None, "open", NATIONAL_ID, "keypad")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE cases SET national_id_key_id = 'k9' WHERE id = ?", (case.id,))
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
        await store.create_case(999, "open", None, "none")
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
    await store.create_case(call_id, "open", None, "none")
    with pytest.raises(Conflict):
        await store.create_case(call_id, "open", None, "none")
    await store.end_call(call_id, 130.0, "completed", ["a"])
    with pytest.raises(Conflict):
        await store.end_call(call_id, 131.0, "completed", ["b"])
    assert (await store.get_call(call_id)).ivr_path == ("a",)


async def test_attach_leaves_recordings_of_other_cases_alone(store: Store) -> None:
    call_id = await _new_call(store)
    other = await store.create_case(None, "open", None, "none")
    case = await store.create_case(call_id, "open", None, "none")
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
    store: Store, db_path: Path, national_id: str | None, id_source: str
) -> None:
    with pytest.raises(ValueError):
        await store.create_case(None, "open", national_id, id_source)
    assert _raw(db_path, "SELECT count(*) FROM cases") == [(0,)]


async def test_tracking_code_collision_is_retried(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = iter(["123456782", "123456782", "234567891"])
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: next(codes))
    first = await store.create_case(None, "open", None, "none")
    second = await store.create_case(None, "open", None, "none")
    assert (first.tracking_code, second.tracking_code) == ("123456782", "234567891")


async def test_persistent_collisions_give_up(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: "123456782")
    await store.create_case(None, "open", None, "none")
    with pytest.raises(Conflict):
        await store.create_case(None, "open", None, "none")


async def test_disk_full_raises_storage_full(store: Store) -> None:
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


async def test_case_for_someone_else_is_filed_under_the_subject(store: Store, db_path: Path) -> None:
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
    raw = _database_bytes(db_path)
    assert subject_id.encode() not in raw and caller_id.encode() not in raw


async def test_unverified_and_to_transcribe_statuses(store: Store) -> None:
    unverified = await store.create_case(None, "received", "1234567890", "speech", id_status="unverified")
    assert unverified.id_status == "unverified" and unverified.subject_is_caller
    audio_only = await store.create_case(None, "received", None, "speech")
    assert audio_only.id_status == "to_transcribe"
    with pytest.raises(ValueError, match="id_status"):
        await store.create_case(None, "received", None, "none", id_status="maybe")
