"""Unit tests for the storage layer's engines: one SQL and one set of errors over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage.engines import Engine, _numbered, _postgres_errors, open_engine, redacted
from storage.errors import ConstraintViolation, ForeignKeyViolation, StorageFull, StoreUnavailable, UniqueViolation
from storage.migrations import migrate
from tests.support.postgres import PostgresServer, StoreDatabase, _free_port

pytestmark = pytest.mark.unit


@pytest.fixture
async def engine(store_database: StoreDatabase) -> AsyncIterator[Engine]:
    async with open_engine(store_database.target) as opened:
        await migrate(opened)
        yield opened


def test_placeholders_are_numbered_outside_literals() -> None:
    assert _numbered("SELECT ? , '?', 'it''s ?', ? FROM t WHERE x = ?") == \
        "SELECT $1 , '?', 'it''s ?', $2 FROM t WHERE x = $3"


def test_the_password_never_leaves_in_a_message() -> None:
    assert redacted("postgresql://softswitch:s3cret@db.example:5432/cases?sslmode=verify-full") == \
        "postgresql://softswitch:***@db.example:5432/cases?sslmode=verify-full"
    assert redacted("postgresql://softswitch@db.example/cases") == "postgresql://softswitch@db.example/cases"


async def test_rows_by_name_and_position_ids_and_counts(engine: Engine) -> None:
    first = await engine.insert("INSERT INTO calls (sip_call_id, from_uri, to_uri, source, arrived_at)"
                                " VALUES (?, ?, ?, ?, ?)", ("a", "sip:x", "sip:111", "pstn", 1.5))
    second = await engine.insert("INSERT INTO calls (sip_call_id, from_uri, to_uri, source, arrived_at)"
                                 " VALUES (?, ?, ?, ?, ?)", ("b", "sip:x", "sip:111", "pstn", 2))
    assert second == first + 1
    row = await engine.fetchone("SELECT id, sip_call_id, arrived_at FROM calls WHERE id = ?", (first,))
    assert row is not None and (row["id"], row[1], row["arrived_at"]) == (first, "a", 1.5)
    assert tuple(row) == (first, "a", 1.5)
    assert await engine.execute("UPDATE calls SET ended_at = ? WHERE ended_at IS NULL", (3.0,)) == 2
    assert [r["sip_call_id"] for r in await engine.fetchall("SELECT sip_call_id FROM calls ORDER BY id")] == ["a", "b"]
    assert await engine.fetchone("SELECT id FROM calls WHERE id = ?", (second + 1,)) is None


_NEW_CASE = ("INSERT INTO cases (tracking_code, status, created_at, updated_at, id_source)"
             " VALUES (?, 'received', 1.0, 1.0, 'none')")


async def test_a_failed_transaction_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(ConstraintViolation):
        async with engine.transaction() as tx:
            await tx.lock("some key")
            await tx.insert(_NEW_CASE, ("123456782",))
            await tx.insert("INSERT INTO cases (tracking_code, status, created_at, updated_at, id_source)"
                            " VALUES ('234567891', 'received', 1.0, 1.0, 'voice')")
    assert await engine.fetchall("SELECT id FROM cases") == []


async def test_a_failed_savepoint_is_undone_alone(engine: Engine) -> None:
    async with engine.transaction() as tx:
        await tx.insert(_NEW_CASE, ("123456782",))
        with pytest.raises(UniqueViolation):
            async with tx.transaction() as savepoint:
                await savepoint.insert(_NEW_CASE, ("234567891",))
                await savepoint.insert(_NEW_CASE, ("123456782",))
        # The transaction goes on (on PostgreSQL too, where a failed statement would spoil it).
        await tx.insert(_NEW_CASE, ("345678910",))
    codes = [row["tracking_code"] for row in await engine.fetchall("SELECT tracking_code FROM cases ORDER BY id")]
    assert codes == ["123456782", "345678910"]


async def test_constraint_violations_name_the_constraint_never_the_value(engine: Engine) -> None:
    insert_case = ("INSERT INTO cases (tracking_code, status, created_at, updated_at, id_source, call_id)"
                   " VALUES (?, 'received', 1.0, 1.0, ?, ?)")
    await engine.insert(insert_case, ("987654329", "none", None))
    with pytest.raises(UniqueViolation) as unique:
        await engine.insert(insert_case, ("987654329", "none", None))
    assert unique.value.where == "cases.tracking_code" and "987654329" not in str(unique.value)
    with pytest.raises(ForeignKeyViolation):
        await engine.insert(insert_case, ("123456782", "none", 999))
    with pytest.raises(ConstraintViolation) as check:
        await engine.insert(insert_case, ("234567891", "voice", None))
    assert not isinstance(check.value, (UniqueViolation, ForeignKeyViolation))


@pytest.fixture
async def postgres_engine(postgres_server: PostgresServer) -> AsyncIterator[Engine]:
    name = await postgres_server.create_database()
    try:
        async with open_engine(postgres_server.url(name)) as opened:
            await migrate(opened)
            yield opened
    finally:
        await postgres_server.drop_database(name)


async def test_a_lost_server_connection_is_a_store_error(postgres_engine: Engine) -> None:
    engine = postgres_engine
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        async with engine.transaction() as tx:
            await tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    # The pool replaces the connection.
    assert await engine.fetchall("SELECT id FROM calls") == []


async def test_an_unreachable_server_is_named_without_its_password(postgres_server: PostgresServer) -> None:
    url = f"postgresql://softswitch:s3cret@127.0.0.1:{_free_port()}/cases"
    with pytest.raises(StoreUnavailable, match="cannot be reached") as excinfo:
        async with open_engine(url):
            pass
    assert "s3cret" not in str(excinfo.value) and "softswitch:***@127.0.0.1" in str(excinfo.value)


def test_a_full_disk_on_postgresql_is_storage_full() -> None:
    # Constructed, not provoked: filling the test server's disk would fill the machine's.
    full = asyncpg.DiskFullError("could not extend file: No space left on device")
    with pytest.raises(StorageFull) as excinfo, _postgres_errors("postgresql://db/cases"):
        raise full
    assert excinfo.value.__cause__ is full
