"""Unit tests for the storage layer's schema migrations and connection setup, on SQLite and PostgreSQL."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storage import migrations
from storage.crypto import IdProtector
from storage.errors import StoreError
from storage.migrations import MIGRATIONS, POSTGRESQL_MIGRATIONS, Migration
from storage.store import open_store
from tests.support.postgres import PostgresServer, StoreDatabase

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
    # The same steps on both engines.
    assert [(m.version, m.description) for m in POSTGRESQL_MIGRATIONS] == [
        (m.version, m.description) for m in MIGRATIONS]


async def _version(db: StoreDatabase) -> int:
    sql = "PRAGMA user_version" if db.engine == "sqlite" else "SELECT version FROM schema_version"
    [(version,)] = await db.raw(sql)
    return int(version)


async def _columns(db: StoreDatabase) -> set[tuple[str, str]]:
    """(table, column) of the store's own tables."""
    if db.engine == "sqlite":
        return {(table, column) for table, column in await db.raw(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'")}
    return {(table, column) for table, column in await db.raw(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name <> 'schema_version'")}


async def _indexes(db: StoreDatabase) -> set[str]:
    if db.engine == "sqlite":
        return {name for (name,) in await db.raw(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'")}
    return {name for (name,) in await db.raw(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'")}


def _steps(db: StoreDatabase) -> str:
    """The name of the engine's migration list, for monkeypatching."""
    return "MIGRATIONS" if db.engine == "sqlite" else "POSTGRESQL_MIGRATIONS"


async def test_both_engines_get_the_same_tables_columns_and_indexes(
    tmp_path: Path, protector: IdProtector, postgres_server: PostgresServer
) -> None:
    name = await postgres_server.create_database()
    try:
        sqlite = StoreDatabase("sqlite", tmp_path / "store.db")
        postgres = StoreDatabase("postgresql", postgres_server.url(name), postgres_server, name)
        for db in (sqlite, postgres):
            async with open_store(db.target, protector):
                pass
        assert await _columns(postgres) == await _columns(sqlite)
        assert await _indexes(postgres) == await _indexes(sqlite)
        assert {"calls_unfinished", "cases_call_id", "cases_open_by_subject"} <= await _indexes(postgres)
        types = {(table, column): (kind, identity) for table, column, kind, identity in await postgres.raw(
            "SELECT table_name, column_name, data_type, is_identity FROM information_schema.columns"
            " WHERE table_schema = 'public'")}
        assert types["cases", "id"] == ("bigint", "YES") and types["recordings", "call_id"] == ("bigint", "NO")
        assert types["cases", "created_at"][0] == types["calls", "arrived_at"][0] == "double precision"
        assert types["cases", "national_id_enc"][0] == types["cases", "caller_id_enc"][0] == "bytea"
    finally:
        await postgres_server.drop_database(name)


async def test_hosts_starting_together_migrate_once(store_database: StoreDatabase, protector: IdProtector) -> None:
    async def start() -> int:
        async with open_store(store_database.target, protector) as store:
            return await store.add_call("c@host", "sip:a@x", "sip:111@y", "pstn", 1, 10.0)

    # Four stores on four connections (pools), as four hosts would be.
    ids = await asyncio.gather(*(start() for _ in range(4)))
    assert len(set(ids)) == 4
    assert await _version(store_database) == len(MIGRATIONS)


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
    store_database: StoreDatabase, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store_database
    async with open_store(db.target, protector):
        pass
    extra = Migration(
        version=len(MIGRATIONS) + 1,
        description="test table",
        statements=("CREATE TABLE extra (x INTEGER)",),
    )
    monkeypatch.setattr(migrations, _steps(db), [*getattr(migrations, _steps(db)), extra])
    # Re-running migration 1 would fail on its CREATE TABLE statements.
    async with open_store(db.target, protector):
        pass
    assert await _version(db) == extra.version
    assert await db.raw("SELECT count(*) FROM extra") == [(0,)]


async def test_failed_migration_rolls_back(
    store_database: StoreDatabase, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store_database
    async with open_store(db.target, protector):
        pass
    broken = Migration(
        version=len(MIGRATIONS) + 1,
        description="fails halfway",
        statements=("CREATE TABLE half (x INTEGER)", "CREATE TABLE calls (x INTEGER)"),
    )
    monkeypatch.setattr(migrations, _steps(db), [*getattr(migrations, _steps(db)), broken])
    with pytest.raises(StoreError, match="calls"):
        async with open_store(db.target, protector):
            pass
    assert await _version(db) == len(MIGRATIONS)
    assert ("half", "x") not in await _columns(db)


async def test_newer_schema_is_refused(store_database: StoreDatabase, protector: IdProtector) -> None:
    db = store_database
    async with open_store(db.target, protector):
        pass
    if db.engine == "sqlite":
        await db.raw(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    else:
        await db.raw("UPDATE schema_version SET version = ?", len(MIGRATIONS) + 1)
    with pytest.raises(StoreError, match="newer"):
        async with open_store(db.target, protector):
            pass


async def test_wal_mode_and_connection_pragmas(tmp_path: Path, protector: IdProtector) -> None:
    path = tmp_path / "store.db"
    async with open_store(path, protector) as store:
        await store.add_call("c1@host", "sip:a@x", "sip:111@y", "pstn", None, 1.0)
        assert (tmp_path / "store.db-wal").exists()
        # synchronous, foreign_keys and busy_timeout are per connection, so
        # only the store's own connection can show them.
        for pragma, expected in [("synchronous", 1), ("foreign_keys", 1), ("busy_timeout", 5000)]:
            assert tuple(await store._db.fetchone(f"PRAGMA {pragma}") or ()) == (expected,), pragma
    assert _raw(path, "PRAGMA journal_mode") == [("wal",)]


async def test_v4_adds_answers_to_existing_cases(
    store_database: StoreDatabase, protector: IdProtector, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store_database
    monkeypatch.setattr(migrations, _steps(db), getattr(migrations, _steps(db))[:3])
    async with open_store(db.target, protector):
        pass
    await db.raw("INSERT INTO cases (tracking_code, status, created_at, updated_at, id_source, agency, category)"
                 " VALUES ('123456782', 'received', 1.0, 1.0, 'none', 'health', 'شکایت')")
    monkeypatch.undo()
    async with open_store(db.target, protector) as store:
        case = await store.get_case("123456782")
        assert (case.status, case.agency, case.answer_text, case.answer_audio, case.answered_by) == (
            "received", "health", None, None, None)
        answered = await store.set_answer(case.id, "agency:health/u1", text="پاسخ")
        assert answered.answer_text == "پاسخ" and answered.status == "answered"
    assert await _version(db) == len(MIGRATIONS)
    assert {"cases_open_by_subject", "cases_agency_created_at", "cases_created_at", "calls_arrived_at"} <= \
        await _indexes(db)
