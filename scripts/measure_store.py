"""Measures the case store's create_case and intake throughput, a console request's session check, a login
attempt's throttle step, and the one write a message call adds for several hosts (message_started), on
SQLite and PostgreSQL; and on PostgreSQL a change of the replicated ACD, one host alone and two hosts at
once (not a test).

Usage: PYTHONPATH=. .venv/bin/python scripts/measure_store.py [--cases N] [--concurrency C] [--url URL]
Without --url a throwaway PostgreSQL server is started (tests/support/postgres.py, fsync off: the
numbers are an upper bound for a server that syncs). SQLite runs on a temporary file, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from softswitch.config import AgentAccount, AgentsConfig, QueueConfig
from softswitch.control.shared_acd import ReplicatedAcd
from storage.crypto import IdProtector
from storage.models import PersonId
from storage.store import Store, open_store
from tests.support.postgres import PostgresServer

PROTECTOR = IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)
SUBJECTS = ("0499370899", "0790419904", "0084575948", "1234567891")


async def _rate(store: Store, count: int, concurrency: int, one: Callable[[Store, int], Awaitable[object]]) -> float:
    """Operations per second, ``count`` of them, ``concurrency`` at a time."""
    numbers = iter(range(count))

    async def runner() -> None:
        for n in numbers:  # shared: each number is taken once
            await one(store, n)

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def _create(store: Store, n: int) -> object:
    return await store.create_case(None, "received", SUBJECTS[n % len(SUBJECTS)], "keypad")


async def _intake(store: Store, n: int) -> object:
    # A category per request: every intake opens a case (the duplicate rule's lock and lookup included).
    return await store.intake(PersonId(SUBJECTS[n % len(SUBJECTS)], "keypad", "verified"), channel="sms",
                              agency="health", category=f"c{n}", summary="x", actor="measure", window_s=3600.0)


async def _latencies_ms(count: int, one: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    """Median and 99th percentile of ``count`` calls, one at a time, in milliseconds."""
    times = []
    for n in range(count):
        started = time.perf_counter()
        await one(n)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 3),
            "p99_ms": round(statistics.quantiles(times, n=100)[98], 3)}


async def _web_state(store: Store, count: int) -> dict[str, dict[str, float]]:
    """A request's session check among 1,000 live sessions (one read by the token's unique index), and a login
    attempt's check-and-count of its three throttle keys (one transaction)."""
    now, idle_s = time.time(), 8 * 3600.0
    tokens = [(await store.sessions.open("agent_id", f"agent{n}", now=now, lifetime_s=12 * 3600.0,
                                         idle_s=idle_s))[0] for n in range(1000)]
    checks = await _latencies_ms(count, lambda n: store.sessions.find(tokens[n % len(tokens)], now=now + 1,
                                                                      idle_s=idle_s))
    attempts = await _latencies_ms(count, lambda n: store.counters.attempt(
        [f"source 10.0.{n % 250}.1", f"pair id{n}", f"id id{n}"], now=now, window_s=300.0,
        refuse=lambda counts: False))
    return {"session_check": checks, "login_attempt": attempts}


async def _message_started_ms(store: Store, count: int, concurrency: int) -> dict[str, float]:
    """Median and 99th percentile of ``message_started``, ``concurrency`` at a time, in milliseconds."""
    calls = [await store.add_call(f"m{n}@measure", "sip:c@t", "sip:111@s", "127.0.0.1", 0, time.time(), host="h")
             for n in range(count)]
    pending = iter(calls)
    took: list[float] = []

    async def runner() -> None:
        for call in pending:
            started = time.perf_counter()
            await store.message_started(call, time.time())
            took.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    took.sort()
    return {"message_started_median_ms": round(took[len(took) // 2], 3),
            "message_started_p99_ms": round(took[int(len(took) * 0.99)], 3)}


async def _acd_change_ms(target: str, count: int, concurrency: int) -> dict[str, dict[str, float]]:
    """A replicated ACD's change as its caller waits for it (appended under the lock, notified, applied):
    one host alone, and ``concurrency`` agents' changes at once, half from each of two hosts' replicas."""
    accounts = tuple(AgentAccount(id=f"a{n}", name=f"a{n}", sip_ha1="0" * 32, console_password="scrypt$x")
                     for n in range(concurrency + 1))  # a0 alone, then a1.. at once
    async with open_store(target, PROTECTOR) as store_a, open_store(target, PROTECTOR) as store_b:
        replicas = [ReplicatedAcd(AgentsConfig(accounts=accounts), QueueConfig(), store.acd_changes, host)
                    for host, store in (("a", store_a), ("b", store_b))]
        for acd in replicas:
            await acd.start()
        try:
            for account in accounts:
                await replicas[0].submit("login", agent_id=account.id)  # ready; then paused and ready in turn

            async def toggle(acd: ReplicatedAcd, agent_id: str, n: int) -> object:
                if n % 2 == 0:
                    return await acd.submit("pause", agent_id=agent_id, reason="break")
                return await acd.submit("set_ready", agent_id=agent_id)
            alone = await _latencies_ms(count, lambda n: toggle(replicas[0], "a0", n))
            took: list[float] = []

            async def runner(i: int) -> None:
                for n in range(count // concurrency):
                    started = time.perf_counter()
                    await toggle(replicas[i % 2], f"a{i + 1}", n)
                    took.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await asyncio.gather(*(runner(i) for i in range(concurrency)))
            rate = len(took) / (time.perf_counter() - started)
        finally:
            for acd in replicas:
                acd.close()
    took.sort()
    return {"acd_change_one_host": alone,
            "acd_change_two_hosts": {"median_ms": round(took[len(took) // 2], 3),
                                     "p99_ms": round(took[int(len(took) * 0.99)], 3), "per_s": round(rate, 1)}}


async def measure(target: Path | str, count: int, concurrency: int) -> dict[str, object]:
    async with open_store(target, PROTECTOR) as store:
        rates: dict[str, object] = {name: await _rate(store, count, concurrency, one) for name, one in
                                    (("create_case", _create), ("intake", _intake))}
        found = rates | await _web_state(store, count) | await _message_started_ms(store, count, concurrency)
    if isinstance(target, str):  # only PostgreSQL replicates the ACD
        found |= await _acd_change_ms(target, count, concurrency)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", help="a postgresql:// URL of an empty database to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print("sqlite", asyncio.run(measure(Path(scratch) / "store.db", args.cases, args.concurrency)))
    if args.url:
        print("postgresql", asyncio.run(measure(args.url, args.cases, args.concurrency)))
        return
    server = PostgresServer.start()
    try:
        print("postgresql (fsync off)", asyncio.run(measure(server.url(), args.cases, args.concurrency)))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
