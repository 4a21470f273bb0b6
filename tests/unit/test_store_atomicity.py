"""The store's read-then-write steps hold across connections and processes, as across hosts: on SQLite and PostgreSQL.

Each store below has its own connection (SQLite) or pool (PostgreSQL), the way
two hosts share one database; the last test runs two OS processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

import storage.store
from storage.models import PersonId
from storage.store import Store
from tests.support.postgres import StoreDatabase
from tests.unit.conftest import KEY, PEPPER

pytestmark = pytest.mark.unit

SUBJECT = "0499370899"
PROCESS_TIMEOUT_S = 60.0

REQUEST: dict[str, Any] = {"channel": "sms", "agency": "health", "category": "شکایت", "summary": "نوبت جراحی",
                           "actor": "api:sms-gateway", "window_s": 3600.0}


async def test_same_request_on_two_hosts_opens_one_case(
    two_stores: tuple[Store, Store], store_database: StoreDatabase
) -> None:
    subject = PersonId(SUBJECT, "keypad", "verified")
    for round_ in range(3):
        category = f"category-{round_}"
        results = await asyncio.gather(*(store.intake(subject, **{**REQUEST, "category": category})
                                         for _ in range(4) for store in two_stores))
        assert sorted(r.duplicate for r in results) == [False] + [True] * 7
        assert len({r.case.id for r in results}) == 1
        [(cases,)] = await store_database.raw("SELECT count(*) FROM cases WHERE category = ?", category)
        assert cases == 1
        [(contacts,)] = await store_database.raw(
            "SELECT count(*) FROM case_events WHERE case_id = ? AND kind = 'contact'", results[0].case.id)
        assert contacts == 7


async def test_changes_from_two_hosts_keep_a_true_history(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    case = await first.create_case(None, "received", SUBJECT, "keypad")
    agencies = [f"agency-{n}" for n in range(10)]
    await asyncio.gather(*(two_stores[n % 2].refer_case(case.id, agency, f"agent:{n}")
                           for n, agency in enumerate(agencies)))
    referrals = [e.detail for e in await second.case_events(case.id) if e.kind == "referred"]
    # Each change's "from" is what the one before it left: no two read the same case.
    assert [r["from"] for r in referrals] == [None] + [r["to"] for r in referrals[:-1]]
    assert sorted(r["to"] for r in referrals) == agencies
    assert (await first.get_case_by_id(case.id)).agency == referrals[-1]["to"]


async def test_tracking_codes_are_unique_across_hosts(
    two_stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both hosts draw the same code first: the database's constraint sends one of them to draw again.
    codes = iter(["123456782", "123456782", "234567891"])
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: next(codes))
    cases = await asyncio.gather(*(store.create_case(None, "received", None, "none") for store in two_stores))
    assert sorted(c.tracking_code for c in cases) == ["123456782", "234567891"]


# Opens the store, says "ready", waits for "go", then runs the same intake several times at once.
_HOST = f"""
import asyncio, json, sys
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.store import open_store

async def main() -> None:
    async with open_store(sys.argv[1], IdProtector({{"k1": {KEY!r}}}, "k1", {PEPPER!r})) as store:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        subject = PersonId({SUBJECT!r}, "keypad", "verified")
        results = await asyncio.gather(*(store.intake(subject, **{REQUEST!r}) for _ in range(4)))
        print(json.dumps([[r.case.id, r.duplicate] for r in results]), flush=True)

asyncio.run(main())
"""


async def test_same_request_in_two_processes_opens_one_case(store_database: StoreDatabase) -> None:
    hosts = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOST, str(store_database.target), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=os.environ.copy()) for _ in range(2)]
    try:
        for host in hosts:
            assert host.stdout is not None
            assert await asyncio.wait_for(host.stdout.readline(), PROCESS_TIMEOUT_S) == b"ready\n"
        for host in hosts:
            assert host.stdin is not None
            host.stdin.write(b"go\n")
            await host.stdin.drain()
        outputs = await asyncio.wait_for(asyncio.gather(*(host.communicate() for host in hosts)), PROCESS_TIMEOUT_S)
    finally:
        for host in hosts:
            if host.returncode is None:
                host.kill()
                await host.wait()
    assert [host.returncode for host in hosts] == [0, 0]
    results = [tuple(r) for out, _ in outputs for r in json.loads(out)]
    assert len({case_id for case_id, _ in results}) == 1
    assert sorted(duplicate for _, duplicate in results) == [False] + [True] * 7
    assert await store_database.raw("SELECT count(*) FROM cases") == [(1,)]


async def test_a_tracking_code_collision_inside_intake_is_retried(
    two_stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_stores
    codes = iter(["123456782", "123456782", "234567891"])
    monkeypatch.setattr(storage.store, "new_tracking_code", lambda: next(codes))
    await first.create_case(None, "received", None, "none")
    # The second draw collides inside intake's transaction: only that insert is undone, then it draws again.
    result = await second.intake(PersonId(SUBJECT, "keypad", "verified"), **REQUEST)
    assert result.case.tracking_code == "234567891"
    assert [e.kind for e in await first.case_events(result.case.id)] == ["created"]
