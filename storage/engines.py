"""Storage layer: one small SQL interface over SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQL is written once with ``?`` placeholders (PostgreSQL gets ``$1, $2, ...``;
so PostgreSQL's own ``?`` operators cannot be used, nor a ``?`` in a comment);
rows read by column name or position; driver errors leave this module only as
``storage.errors``. Any module may run its own SQL on an :class:`Engine`; the
case store is one such user.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg

from storage.errors import (ConstraintViolation, ForeignKeyViolation, StorageFull, StoreDamaged, StoreError,
                            StoreUnavailable, UniqueViolation)

BUSY_TIMEOUT_MS = 5000
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Connections the control process keeps to PostgreSQL; its writes are short transactions.
POOL_SIZE = 10
CONNECT_TIMEOUT_S = 10.0
# A statement (a lock wait included) taking longer than this has met a server in trouble.
COMMAND_TIMEOUT_S = 30.0


class Row(Protocol):
    """A result row (sqlite3.Row or asyncpg.Record): by column name or position, iterable over its values."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Executor(ABC):
    """Runs SQL with ``?`` placeholders: on its own (each statement committed) or inside a transaction."""

    dialect: ClassVar[str]
    # An SQL expression of the database's own time, in Unix epoch seconds: what hosts sharing the
    # database agree on, whatever their clocks say.
    clock: ClassVar[str]

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return how many rows it changed."""

    @abstractmethod
    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT into a table with an ``id`` key; return the new row's id."""

    @abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction, committed when the block ends and rolled back when it raises. Inside one, a
        savepoint: what the block did is undone alone when it raises, and the transaction goes on."""


class Transaction(Executor):
    """Statements on one connection, committed together."""

    # Appended to a SELECT of rows the transaction will change: takes their locks on PostgreSQL.
    for_update: ClassVar[str]

    @abstractmethod
    async def lock(self, key: str) -> None:
        """Wait until no other transaction (of any process or host) holds ``key``, then hold it until commit."""

    async def notify(self, channel: str) -> None:
        """Wake the listeners of ``channel`` (``Engine.listen``) once this transaction commits."""


class Engine(Executor):
    """One database: statements outside a transaction each commit on their own."""

    # Where the database is, for messages: a path, or the URL without its password.
    location: str

    @asynccontextmanager
    async def listen(self, channel: str, callback: Callable[[], None]) -> AsyncIterator[bool]:
        """While the block runs, ``callback()`` follows each committed ``Transaction.notify(channel)``, from
        any process or host. Yields False where the engine has no such thing (SQLite): poll instead."""
        yield False


# -- SQLite -----------------------------------------------------------------------------------------------


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        # Errors raised by the sqlite3 module itself carry no code; extended
        # result codes keep the primary code in the low byte.
        code = getattr(exc, "sqlite_errorcode", 0) or 0
        if code in (sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY):
            # "UNIQUE constraint failed: cases.tracking_code": SQLite names the column only in the text.
            raise UniqueViolation(str(exc).rpartition(": ")[2]) from exc
        if code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
            raise ForeignKeyViolation(str(exc)) from exc
        match code & 0xFF:
            case sqlite3.SQLITE_CONSTRAINT:
                raise ConstraintViolation(str(exc)) from exc
            case sqlite3.SQLITE_FULL:
                raise StorageFull(str(exc)) from exc
            case sqlite3.SQLITE_CORRUPT | sqlite3.SQLITE_NOTADB:
                # "file is not a database", "database disk image is malformed": say which file.
                raise StoreDamaged(f"{path}: {exc}") from exc
        raise StoreError(f"{path}: {exc}") from exc


class _SqliteExecutor(Executor):
    dialect = "sqlite"
    clock = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def _turn(self) -> AbstractAsyncContextManager[Any]:
        return nullcontext()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._turn():
            with _sqlite_errors(self._path):
                async with self._db.execute(sql, params) as cursor:
                    return cursor.rowcount

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._turn():
            with _sqlite_errors(self._path):
                async with self._db.execute(sql, params) as cursor:
                    row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._turn():
            with _sqlite_errors(self._path):
                async with self._db.execute(sql, params) as cursor:
                    row: Row | None = await cursor.fetchone()
                    return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._turn():
            with _sqlite_errors(self._path):
                async with self._db.execute(sql, params) as cursor:
                    return list(await cursor.fetchall())


class SqliteTransaction(_SqliteExecutor, Transaction):
    for_update = ""

    async def lock(self, key: str) -> None:
        # BEGIN IMMEDIATE took the database's one write lock: every writer of any process waits already.
        pass

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        # Savepoints of one name nest: each ROLLBACK TO and RELEASE takes the innermost.
        await self.execute("SAVEPOINT nested")
        try:
            yield self
        except BaseException:
            await self.execute("ROLLBACK TO nested")
            await self.execute("RELEASE nested")
            raise
        await self.execute("RELEASE nested")


class SqliteEngine(_SqliteExecutor, Engine):
    """A SQLite file on one connection in autocommit mode."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        super().__init__(db, path)
        self.location = str(path)
        # One connection holds one transaction: the coroutines sharing it take turns while one is open.
        # Across processes SQLite's own write lock (BEGIN IMMEDIATE) decides.
        self._in_turn = asyncio.Lock()

    def _turn(self) -> AbstractAsyncContextManager[Any]:
        return self._in_turn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._in_turn:
            with _sqlite_errors(self._path):
                # IMMEDIATE takes the write lock before the first read, so a read-then-write
                # cannot be overtaken by another process's write in between.
                await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(self._db, self._path)
            except BaseException:
                if self._db.in_transaction:
                    with _sqlite_errors(self._path):
                        await self._db.execute("ROLLBACK")
                raise
            with _sqlite_errors(self._path):
                await self._db.execute("COMMIT")


async def _switch_to_wal(db: aiosqlite.Connection) -> sqlite3.Row | None:
    """Switching a new file to WAL needs its exclusive lock, and SQLite answers "database is locked"
    at once, without its busy handler, while another connection holds any lock on it (hosts or
    processes opening a fresh store together). Retried for as long as the busy timeout allows."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                row: sqlite3.Row | None = await cursor.fetchone()
                return row
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


async def _configure_sqlite(db: aiosqlite.Connection) -> None:
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    row = await _switch_to_wal(db)
    # SQLite silently keeps the old mode where WAL is unsupported (e.g. some network filesystems).
    mode = None if row is None else str(row[0]).lower()
    if mode != "wal":
        raise StoreError(f"could not enable WAL mode (journal_mode is {mode!r})")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = ON")


async def _check_integrity(db: aiosqlite.Connection, path: Path) -> None:
    """SQLite's quick check of every page at start: a damaged store is refused before it takes calls,
    not found out when a case cannot be written. Linear in the file's size (~1 s per GB)."""
    async with db.execute("PRAGMA quick_check") as cursor:
        problems = [str(row[0]) for row in await cursor.fetchall()]
    if problems != ["ok"]:
        raise StoreDamaged(f"{path}: integrity check failed: {'; '.join(problems[:3])}")


def _private_files(path: Path) -> None:
    """The database and its WAL and shared-memory files are the operator's only (0600): they hold
    encrypted IDs, hashes and everyone's cases. Created so when missing, tightened when found open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file == path and not file.exists():
            os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))
        with suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


@asynccontextmanager
async def _open_sqlite(path: Path) -> AsyncIterator[SqliteEngine]:
    # isolation_level=None: autocommit, so each write is committed on return and
    # transactions are the engine's own BEGIN IMMEDIATE. In WAL mode
    # synchronous=NORMAL survives a process crash; a power cut may lose the
    # last commits.
    _private_files(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        with _sqlite_errors(path):
            await _configure_sqlite(db)
            await _check_integrity(db, path)
        # SQLite gives the WAL and shared-memory files the main file's mode.
        _private_files(path)
        yield SqliteEngine(db, path)
    finally:
        await db.close()


# -- PostgreSQL -------------------------------------------------------------------------------------------

_PLACEHOLDER_OR_LITERAL = re.compile(r"'(?:[^']|'')*'|\?")
_KEY_COLUMNS = re.compile(r"Key \((?P<columns>[^)]*)\)=")
# The server is gone, refuses or cannot be reached.
_UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, OSError)


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """``?`` -> ``$1, $2, ...``, leaving quoted literals alone."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() != "?":
            return match.group()
        count += 1
        return f"${count}"

    return _PLACEHOLDER_OR_LITERAL.sub(number, sql)


def _unique_where(exc: asyncpg.UniqueViolationError) -> str:
    # The detail reads "Key (tracking_code)=(123456782) already exists.": the column, never the value, goes on.
    found = _KEY_COLUMNS.match(exc.detail or "")
    return f"{exc.table_name}.{found['columns'] if found else exc.constraint_name}"


@contextmanager
def _postgres_errors(location: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise UniqueViolation(_unique_where(exc)) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise ForeignKeyViolation(f"foreign key constraint failed: {exc.constraint_name}") from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        # The message only: the detail repeats the row's values.
        raise ConstraintViolation(f"constraint failed: {exc.constraint_name or exc.sqlstate}") from exc
    except asyncpg.DiskFullError as exc:
        raise StorageFull(f"{location}: {exc}") from exc
    except _UNREACHABLE as exc:
        raise StoreUnavailable(
            f"{location}: the database server cannot be reached ({type(exc).__name__}: {exc})") from exc
    except asyncpg.InterfaceError as exc:
        if isinstance(exc, ValueError):
            # A query argument of the wrong type: a bug here, not the server's state. Its text quotes the value.
            raise StoreError(f"{location}: a query argument does not fit its column") from exc
        raise StoreError(f"{location}: {exc}") from exc  # e.g. the pool was closed
    except asyncpg.PostgresError as exc:
        raise StoreError(f"{location}: {exc}") from exc


def _rowcount(status: str) -> int:
    # The command tag: "UPDATE 3", "INSERT 0 1", "CREATE TABLE".
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class _PostgresExecutor(Executor):
    dialect = "postgresql"
    # clock_timestamp(), not now(): now() stands still for the whole transaction.
    clock = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"

    # A pool and a connection take the same calls.
    def __init__(self, conn: asyncpg.Pool | asyncpg.Connection, location: str) -> None:
        self._conn = conn
        self._location = location

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _postgres_errors(self._location):
            return _rowcount(await self._conn.execute(_numbered(sql), *params))

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _postgres_errors(self._location):
            row_id = await self._conn.fetchval(_numbered(sql) + " RETURNING id", *params)
        return int(row_id)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with _postgres_errors(self._location):
            row: Row | None = await self._conn.fetchrow(_numbered(sql), *params)
            return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _postgres_errors(self._location):
            return list(await self._conn.fetch(_numbered(sql), *params))


class PostgresTransaction(_PostgresExecutor, Transaction):
    for_update = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection, location: str) -> None:
        super().__init__(conn, location)
        self._connection = conn

    async def lock(self, key: str) -> None:
        # A transaction-level advisory lock: released by COMMIT or ROLLBACK, also when the connection drops.
        await self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    async def notify(self, channel: str) -> None:
        await self.execute("SELECT pg_notify(?, '')", (channel,))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        # Nested, asyncpg's transaction is a savepoint. A failed statement spoils the whole transaction
        # on PostgreSQL (not on SQLite): a step that may fail and be retried runs in one.
        with _postgres_errors(self._location):
            async with self._connection.transaction():
                yield self


class PostgresEngine(_PostgresExecutor, Engine):
    """A PostgreSQL database through a pool of connections."""

    def __init__(self, pool: asyncpg.Pool, location: str) -> None:
        super().__init__(pool, location)
        self._pool = pool
        self.location = location

    @asynccontextmanager
    async def listen(self, channel: str, callback: Callable[[], None]) -> AsyncIterator[bool]:
        # A connection of its own, held for as long as the block runs: LISTEN belongs to a session.
        with _postgres_errors(self.location):
            conn = await self._pool.acquire()
        def heard(*_: Any) -> None:
            callback()

        try:
            with _postgres_errors(self.location):
                await conn.add_listener(channel, heard)
            yield True
        finally:
            with suppress(asyncpg.InterfaceError, *_UNREACHABLE):
                await conn.remove_listener(channel, heard)
            await self._pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        with _postgres_errors(self.location):
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    yield PostgresTransaction(conn, self.location)
                except BaseException:
                    # A connection the server dropped has rolled back already; its error is the one to tell.
                    with suppress(asyncpg.InterfaceError):
                        await transaction.rollback()
                    raise
                await transaction.commit()


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def is_postgres_url(target: Path | str) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


@asynccontextmanager
async def _open_postgres(url: str) -> AsyncIterator[PostgresEngine]:
    location = redacted(url)
    with _postgres_errors(location):
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S,
            server_settings={"application_name": "softswitch-111"})
    try:
        yield PostgresEngine(pool, location)
    finally:
        await pool.close()


def open_engine(target: Path | str) -> AbstractAsyncContextManager[Engine]:
    """The database at ``target``: a ``postgresql://`` URL, or the path of a SQLite file (created if missing)."""
    if is_postgres_url(target):
        assert isinstance(target, str)
        return _open_postgres(target)
    return _open_sqlite(Path(target))
