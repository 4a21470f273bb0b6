"""A real PostgreSQL server for the storage tests: initdb in a temporary directory, one per test process.

It runs as an unprivileged user (the tests may run as root, which PostgreSQL
refuses: then as the `postgres` system user of Debian's package), listens only
on 127.0.0.1 on a free port with its Unix socket in its own directory, and is
stopped by its PID. Durability is off (fsync): the data is thrown away.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.engines import open_engine

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# A port taken between choosing it and the server binding it: try another, this many times.
PORT_ATTEMPTS = 5
READY = "database system is ready to accept connections"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed (scripts/setup.sh --test installs them)."""


def bindir() -> Path:
    """Where initdb and postgres are: ``pg_config --bindir``, else Debian's newest versioned directory."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name),
                         reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise PostgresMissing("PostgreSQL's initdb and postgres were not found (apt-get install postgresql)")


def _as_unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that drops root, and the user it becomes (None: already unprivileged)."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("running as root, and there is no 'postgres' user to run the server as") from None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise PostgresMissing("setpriv (util-linux) is needed to run the server as 'postgres'")
    # setpriv execs the server itself, so the PID we hold is the postmaster's.
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"], user


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running server; :meth:`start` and :meth:`stop` own its process."""

    directory: Path
    durable: bool = False
    port: int = 0
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        """A new cluster in a temporary directory. ``durable``: fsync and full-page writes on, as a
        deployment runs it (commits still asynchronous, the promise of the SQLite store's WAL with
        synchronous=NORMAL: a crash may lose the last commits, never corrupt); off for tests' speed."""
        binaries = bindir()
        prefix, user = _as_unprivileged()
        server = cls(Path(tempfile.mkdtemp(prefix="softswitch-pg-")), durable=durable)
        if user is not None:
            os.chown(server.directory, user.pw_uid, user.pw_gid)
        subprocess.run([*prefix, str(binaries / "initdb"), "-D", str(server.data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, text=True, timeout=120)
        try:
            for _ in range(PORT_ATTEMPTS):
                if server._run(prefix, binaries, _free_port()):
                    return server
            raise RuntimeError("PostgreSQL did not start:\n" + "".join(server.log[-20:]))
        except BaseException:
            server.stop()
            raise

    def _run(self, prefix: list[str], binaries: Path, port: int) -> bool:
        """Start the server on ``port``; False when it exited (the port was taken meanwhile)."""
        self.port = port
        self.process = subprocess.Popen(
            [*prefix, str(binaries / "postgres"), "-D", str(self.data), "-p", str(port), "-k", str(self.directory),
             "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if self.durable else 'off'}",
             "-c", "synchronous_commit=off", "-c", f"full_page_writes={'on' if self.durable else 'off'}",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        settled = threading.Event()
        ready = threading.Event()

        def read_log(stream: Iterator[str]) -> None:
            # Also after start-up: a full pipe would stop the server's logging, and then the server.
            for line in stream:
                self.log.append(line)
                if READY in line:
                    ready.set()
                    settled.set()
            settled.set()

        assert self.process.stderr is not None
        threading.Thread(target=read_log, args=(self.process.stderr,), daemon=True).start()
        if not settled.wait(START_TIMEOUT_S):
            raise RuntimeError(f"PostgreSQL not ready after {START_TIMEOUT_S:g} s:\n" + "".join(self.log[-20:]))
        if ready.is_set():
            return True
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None
        return False

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT: roll back, disconnect, stop), then remove its directory."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    async def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"test_{next(self._names)}"
        conn = await asyncpg.connect(self.url())
        try:
            # template0: nothing another test left in template1; FILE_COPY: a few ms for an empty database.
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    async def stored_bytes(self, name: str) -> bytes:
        """Everything the server wrote for one database: its files and the write-ahead log, checkpointed."""
        conn = await asyncpg.connect(self.url(name))
        try:
            await conn.execute("CHECKPOINT")
            oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
        finally:
            await conn.close()
        files = [*(self.data / "base" / str(oid)).iterdir(), *(self.data / "pg_wal").glob("0*")]
        return b"".join(path.read_bytes() for path in sorted(files) if path.is_file())


@dataclass
class StoreDatabase:
    """The database one test's store lives in, on either engine, with a second connection for raw looks."""

    engine: str
    target: Path | str
    server: PostgresServer | None = None
    name: str = ""

    async def raw(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL (``?`` placeholders) on a connection of its own, committed on return."""
        async with open_engine(self.target) as engine:
            if sql.lstrip().upper().startswith(("SELECT", "EXPLAIN", "PRAGMA", "WITH")):
                return [tuple(row) for row in await engine.fetchall(sql, params)]
            await engine.execute(sql, params)
            return []

    async def stored_bytes(self) -> bytes:
        """Every byte the engine keeps of this database on disk."""
        if self.server is not None:
            return await self.server.stored_bytes(self.name)
        path = Path(self.target)
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per test process (xdist worker), started on first use."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreDatabase]:
    """A fresh, empty store database: a SQLite file, then a database on the test server."""
    if request.param == "sqlite":
        yield StoreDatabase("sqlite", tmp_path / "store.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = await server.create_database()
    try:
        yield StoreDatabase("postgresql", server.url(name), server, name)
    finally:
        await server.drop_database(name)
