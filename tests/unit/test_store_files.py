"""The store's files on disk: private to the service, and a damaged one refused at start with a clear error."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from storage.crypto import IdProtector
from storage.errors import StoreDamaged
from storage.models import PersonId
from storage.store import open_store

pytestmark = pytest.mark.unit

NATIONAL_ID = "0499370899"


def _protector() -> IdProtector:
    return IdProtector({"k1": bytes(range(32))}, "k1", bytes(range(32, 64)))


async def _filled_store(path: Path, cases: int = 300) -> None:
    async with open_store(path, _protector()) as store:
        for n in range(cases):
            call_id = await store.add_call(f"c{n}@127.0.0.1", "sip:caller@127.0.0.1", "sip:111@127.0.0.1",
                                             "127.0.0.1", 0, float(n))
            await store.open_call_case(call_id, PersonId(NATIONAL_ID, "keypad", "verified"),
                                       complete=bool(n % 2))
    # Fold the WAL into the main file, so damage to the file is damage to the data.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_the_database_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "softswitch.db"
    old = os.umask(0o022)  # the store does not rely on the process's umask
    try:
        async with open_store(path, _protector()) as store:
            await store.add_call("x@127.0.0.1", "sip:a@127.0.0.1", "sip:111@127.0.0.1", "127.0.0.1", 0, 1.0)
            files = [p for p in path.parent.iterdir() if p.name.startswith("softswitch.db")]
            assert {p.name for p in files} >= {"softswitch.db", "softswitch.db-wal"}
            assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
                {p.name: oct(p.stat().st_mode) for p in files}
    finally:
        os.umask(old)


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.db"
    await _filled_store(path, cases=1)
    path.chmod(0o644)
    async with open_store(path, _protector()):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_file_that_is_not_a_database_is_named_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.db"
    path.write_bytes(b"this is a recording, not a database\n" * 200)
    with pytest.raises(StoreDamaged, match="softswitch.db"):
        async with open_store(path, _protector()):
            pass


async def test_a_damaged_page_is_found_at_start_not_when_a_case_is_written(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.db"
    await _filled_store(path)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    # Overwrite the middle of a page of the cases table's B-tree with noise (not the header page).
    for offset in range(3 * page + 100, 3 * page + 1100):
        data[offset] = (offset * 37) & 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match="integrity check failed|malformed"):
        async with open_store(path, _protector()):
            pass
