"""What hosts share and a restart keeps, on SQLite and PostgreSQL: web sessions, throttle counts, the ACD's day.

Two stores on one database stand for two hosts (each its own connection or
pool); closing a store and opening another is a restart.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from softswitch.config import AgentAccount, AgentsConfig, QueueConfig
from softswitch.domain.acd import TEHRAN, Acd, DayFact
from storage import counters, web_sessions
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase
from tests.unit.conftest import store_protector

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

IDLE_S, LIFETIME_S = 3600.0, 8 * 3600.0


@pytest.fixture
def two_hosts(two_stores: tuple[Store, Store]) -> tuple[Store, Store]:
    return two_stores


# -- sessions ------------------------------------------------------------------------------------


async def test_a_session_opened_on_one_host_works_on_the_other_and_ends_on_both(
        two_hosts: tuple[Store, Store], store_database: StoreDatabase) -> None:
    a, b = two_hosts
    token, opened = await a.sessions.open("agent_id", "maryam", now=1000.0, lifetime_s=LIFETIME_S, idle_s=IDLE_S)
    other_token, _ = await a.sessions.open("agent_id", "ali", now=1000.0, lifetime_s=LIFETIME_S, idle_s=IDLE_S)
    found = await b.sessions.find(token, now=1001.0, idle_s=IDLE_S)
    assert found == opened and found.csrf and found.role == "agent_id"
    assert await b.sessions.find(token + "x", now=1001.0, idle_s=IDLE_S) is None
    # Only the token's hash is stored: the database opens nothing by itself.
    rows = await store_database.raw("SELECT token_hash FROM web_sessions")
    assert token not in {row[0] for row in rows} and web_sessions.token_hash(token) in {row[0] for row in rows}
    assert await b.sessions.end_all("agent_id", "maryam") == 1
    assert await a.sessions.find(token, now=1002.0, idle_s=IDLE_S) is None
    assert await a.sessions.find(other_token, now=1002.0, idle_s=IDLE_S) is not None


async def test_a_session_survives_a_restart(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, store_protector()) as store:
        token, opened = await store.sessions.open("agency_user", "health/u1", now=10.0, lifetime_s=LIFETIME_S,
                                                  idle_s=IDLE_S)
    async with open_store(store_database.target, store_protector()) as restarted:
        assert await restarted.sessions.find(token, now=20.0, idle_s=IDLE_S) == opened


async def test_idle_timeout_and_lifetime(two_hosts: tuple[Store, Store]) -> None:
    a, b = two_hosts
    token, _ = await a.sessions.open("agent_id", "maryam", now=0.0, lifetime_s=LIFETIME_S, idle_s=IDLE_S)
    # Seen every 50 minutes (on either host), it stays live past one idle timeout...
    for step in range(1, 9):
        store = (a, b)[step % 2]
        assert await store.sessions.find(token, now=step * 3000.0, idle_s=IDLE_S) is not None, step
    # ...until its lifetime is over, however busy.
    assert await a.sessions.find(token, now=LIFETIME_S + 1, idle_s=IDLE_S) is None
    idle, _ = await a.sessions.open("agent_id", "ali", now=0.0, lifetime_s=LIFETIME_S, idle_s=IDLE_S)
    assert await b.sessions.find(idle, now=IDLE_S + 1, idle_s=IDLE_S) is None  # not seen for the idle time


async def test_ended_sessions_are_purged_and_a_user_keeps_the_newest(two_hosts: tuple[Store, Store],
                                                                     store_database: StoreDatabase) -> None:
    a, _ = two_hosts
    for i in range(web_sessions.PURGE_BATCH + 50):
        await a.sessions.open("agent_id", f"user{i}", now=0.0, lifetime_s=10.0, idle_s=IDLE_S)
    tokens = [(await a.sessions.open("agent_id", "maryam", now=100.0, lifetime_s=LIFETIME_S, idle_s=IDLE_S))[0]
              for _ in range(web_sessions.MAX_PER_USER + 3)]
    [(left,)] = await store_database.raw("SELECT count(*) FROM web_sessions")
    assert left == web_sessions.MAX_PER_USER  # the expired ones went, each new session took up to a batch
    assert await a.sessions.find(tokens[0], now=101.0, idle_s=IDLE_S) is None
    assert await a.sessions.find(tokens[-1], now=101.0, idle_s=IDLE_S) is not None


# -- throttle counts -------------------------------------------------------------------------------


def _over(limit: int) -> Any:
    return lambda counts: any(n >= limit for n in counts.values())


async def test_parallel_attempts_on_two_hosts_get_no_more_than_the_limit(two_hosts: tuple[Store, Store]) -> None:
    results = await asyncio.gather(*(two_hosts[n % 2].counters.attempt(
        ["login:pair:maryam:10.0.0.1"], now=100.0, window_s=300.0, refuse=_over(5)) for n in range(50)))
    assert sum(r is not None for r in results) == 5
    for store in two_hosts:
        assert await store.counters.counts(["login:pair:maryam:10.0.0.1"], 101.0) == {
            "login:pair:maryam:10.0.0.1": 5}


async def test_counts_expire_and_can_be_taken_back(two_hosts: tuple[Store, Store],
                                                   store_database: StoreDatabase) -> None:
    a, b = two_hosts
    first = await a.counters.attempt(["k1", "k2"], now=0.0, window_s=10.0, refuse=_over(3))
    second = await b.counters.attempt(["k1", "k2"], now=5.0, window_s=10.0, refuse=_over(3))
    assert first is not None and second is not None
    assert await a.counters.counts(["k1", "k2", "k3"], 6.0) == {"k1": 2, "k2": 2, "k3": 0}
    assert await b.counters.counts(["k1"], 10.5) == {"k1": 1}  # the first has left its window
    await b.counters.forget(second)
    assert await a.counters.counts(["k1", "k2"], 6.0) == {"k1": 1, "k2": 1}
    await a.counters.clear("k2")
    assert await b.counters.counts(["k1", "k2"], 6.0) == {"k1": 1, "k2": 0}
    # Keys are stored hashed, and expired rows go as new ones come.
    assert ("k1",) not in await store_database.raw("SELECT key_hash FROM throttle_hits")
    for i in range(counters.PURGE_BATCH + 20):
        await a.counters.attempt([f"spray{i}"], now=float(i), window_s=1.0, refuse=_over(1))
    [(left,)] = await store_database.raw("SELECT count(*) FROM throttle_hits")
    assert left <= 3


# -- the ACD's day ---------------------------------------------------------------------------------

AGENTS = AgentsConfig(wrap_up_s=0.0, accounts=tuple(
    AgentAccount(id=i, name=f"Agent {i}", sip_ha1="0" * 32, console_password="scrypt$x") for i in ("1001", "1002")))


class Clocks:
    """The ACD's monotonic and wall clocks, moved by the test: 10:00 in Tehran on a given day."""

    def __init__(self) -> None:
        self.wall = datetime(2026, 12, 2, 10, 0, tzinfo=TEHRAN).timestamp()
        self.mono = 0.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _acd(clocks: Clocks, journal: Any = lambda fact: None) -> Acd:
    return Acd(AGENTS, QueueConfig(service_level_s=20.0), clock=lambda: clocks.mono, wall=lambda: clocks.wall,
               journal=journal)


async def _a_morning(acd: Acd, clocks: Clocks) -> None:
    """Calls answered in and out of the service level, abandoned, moved to a message, recorded."""
    acd.login("1001")
    acd.login("1002")
    for n, (wait_s, talk_s) in enumerate([(5.0, 120.0), (45.0, 60.0), (10.0, 300.0)]):
        entry = acd.join(f"call-{n}", "09120000000")
        clocks.advance(wait_s)
        agent = await acd.next_agent(entry)
        acd.connected(entry, agent.id)
        clocks.advance(talk_s)
        acd.call_ended(agent.id)
        clocks.advance(3600.0)  # the next hour
    acd.leave(acd.join("gone", "0912"), "abandoned")
    acd.leave(acd.join("msg", "0912"), "to_message")
    acd.count_recorded()
    yesterday = DayFact("offered", clocks.wall - 86400.0)
    acd.restore([yesterday])  # another day's fact changes nothing


async def test_the_day_after_a_restart_is_the_day_before_it(store_database: StoreDatabase) -> None:
    clocks = Clocks()
    async with open_store(store_database.target, store_protector()) as store:
        written: list[asyncio.Task[None]] = []
        acd = _acd(clocks, lambda fact: written.append(asyncio.ensure_future(store.acd_days.add("host-a", fact))))
        await _a_morning(acd, clocks)
        await asyncio.gather(*written)
        await store.acd_days.add("host-b", DayFact("offered", clocks.wall))  # another host's queue
        before = acd.snapshot()
        acd.close()
    assert before["today"]["answered"] == 3 and before["today"]["service_level"] == pytest.approx(2 / 3)
    async with open_store(store_database.target, store_protector()) as restarted:
        again = _acd(clocks)
        facts = await restarted.acd_days.since("host-a", clocks.wall - 86400.0)
        assert again.restore(facts) == len(facts) == 3 * 3 + 2 * 2 + 1
        after = again.snapshot()
    assert after["today"] == before["today"]
    assert [a["answered_today"] for a in after["agents"]] == [a["answered_today"] for a in before["agents"]]
    assert again.mean_handle_time_s() == acd.mean_handle_time_s() == pytest.approx(160.0)


async def test_old_days_are_purged(two_hosts: tuple[Store, Store], store_database: StoreDatabase) -> None:
    a, b = two_hosts
    for at in (10.0, 20.0, 30.0):
        await a.acd_days.add("host-a", DayFact("recorded", at))
    assert await b.acd_days.purge(before=25.0) == 2
    assert [f.at for f in await b.acd_days.since("host-a", 0.0)] == [30.0]
