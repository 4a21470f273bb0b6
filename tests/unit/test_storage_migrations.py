"""Unit tests for the storage layer's schema migrations and connection setup."""

import sqlite3
from pathlib import Path

import pytest

from storage import migrations
from storage.crypto import IdProtector
from storage.errors import StoreError
from storage.migrations import MIGRATIONS, Migration
from storage.store import open_store

pytestmark = pytest.mark.unit


@pytest.fixture
def protector() -> IdProtector:
    return IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)


def _raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def _schema(path: Path) -> list[tuple[object, ...]]:
    return _raw(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


async def test_reopening_is_idempotent(tmp_path: Path, protector: IdProtector) -> None:
    path = tmp_path / "store.db"
    async with open_store(path, protector) as store:
        call_id = await store.add_call("c1@host", "sip:a@x", "sip:111@y", "pstn", 1, 10.0)
    schema = _schema(path)
    assert {"calls", "cases", "recordings"} <= {row[1] for row in schema}
    for _ in range(2):
        async with open_store(path, protector) as store:
            assert (await store.get_call(call_id)).sip_call_id == "c1@host"
        assert _raw(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert _schema(path) == schema


async def test_only_missing_migrations_are_applied(
    tmp_path: Path, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    async with open_store(path, protector):
        pass
    extra = Migration(
        version=len(MIGRATIONS) + 1,
        description="test table",
        statements=("CREATE TABLE extra (x INTEGER)",),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, extra])
    # Re-running migration 1 would fail on its CREATE TABLE statements.
    async with open_store(path, protector):
        pass
    assert _raw(path, "PRAGMA user_version") == [(extra.version,)]
    assert _raw(path, "SELECT count(*) FROM extra") == [(0,)]


async def test_failed_migration_rolls_back(
    tmp_path: Path, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    async with open_store(path, protector):
        pass
    broken = Migration(
        version=len(MIGRATIONS) + 1,
        description="fails halfway",
        statements=("CREATE TABLE half (x INTEGER)", "CREATE TABLE calls (x INTEGER)"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        async with open_store(path, protector):
            pass
    assert _raw(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert _raw(path, "SELECT name FROM sqlite_master WHERE name = 'half'") == []


async def test_newer_schema_is_refused(tmp_path: Path, protector: IdProtector) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        async with open_store(path, protector):
            pass


async def test_wal_mode_and_connection_pragmas(tmp_path: Path, protector: IdProtector) -> None:
    path = tmp_path / "store.db"
    async with open_store(path, protector) as store:
        await store.add_call("c1@host", "sip:a@x", "sip:111@y", "pstn", None, 1.0)
        assert (tmp_path / "store.db-wal").exists()
        # synchronous, foreign_keys and busy_timeout are per connection, so
        # only the store's own connection can show them.
        for pragma, expected in [("synchronous", 1), ("foreign_keys", 1), ("busy_timeout", 5000)]:
            async with store._db.execute(f"PRAGMA {pragma}") as cursor:
                assert tuple(await cursor.fetchone() or ()) == (expected,), pragma
    assert _raw(path, "PRAGMA journal_mode") == [("wal",)]


async def test_v4_adds_answers_to_existing_cases(
    tmp_path: Path, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
    async with open_store(path, protector):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO cases (tracking_code, status, created_at, updated_at, id_source, agency, category)"
                     " VALUES ('123456782', 'received', 1.0, 1.0, 'none', 'health', 'شکایت')")
    monkeypatch.undo()
    async with open_store(path, protector) as store:
        case = await store.get_case("123456782")
        assert (case.status, case.agency, case.answer_text, case.answer_audio, case.answered_by) == (
            "received", "health", None, None, None)
        answered = await store.set_answer(case.id, "agency:health/u1", text="پاسخ")
        assert answered.answer_text == "پاسخ" and answered.status == "answered"
    assert _raw(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    indexes = {row[0] for row in _raw(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"cases_open_by_subject", "cases_agency_created_at", "cases_created_at", "calls_arrived_at"} <= indexes
