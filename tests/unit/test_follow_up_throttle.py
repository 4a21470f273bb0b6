"""The follow-up throttle (ivr.follow_up.FailureThrottle) on the store's counts: two hosts, parallel calls, restarts.

On SQLite and PostgreSQL; two stores on one database stand for two hosts' control processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from ivr.follow_up import CASE_FAILURE_FACTOR, FailureThrottle
from storage.store import Store, open_store
from tests.conftest import fixed_protector
from tests.support.postgres import StoreDatabase

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

NUMBER, TRUNK, CODE = "09121234567", "192.0.2.10", "123456782"


@pytest.fixture
async def two_hosts(store_database: StoreDatabase) -> AsyncIterator[tuple[FailureThrottle, FailureThrottle]]:
    async with AsyncExitStack() as stack:
        stores: list[Store] = [await stack.enter_async_context(open_store(store_database.target, fixed_protector()))
                               for _ in range(2)]
        yield FailureThrottle(stores[0].counters, 2, 3600.0), FailureThrottle(stores[1].counters, 2, 3600.0)


async def test_misses_on_one_host_block_the_number_on_the_other(
        two_hosts: tuple[FailureThrottle, FailureThrottle]) -> None:
    a, b = two_hosts
    for _ in range(2):
        assert await a.attempt(NUMBER, TRUNK, CODE) is not None  # looked up: nobody's case
    assert await b.blocked(NUMBER, TRUNK)
    assert await b.attempt(NUMBER, TRUNK, CODE) is None
    assert not await b.blocked("09129999999", "198.51.100.1")


async def test_parallel_calls_on_two_hosts_try_a_code_no_more_than_its_limit(
        two_hosts: tuple[FailureThrottle, FailureThrottle]) -> None:
    tries = await asyncio.gather(*(two_hosts[n % 2].attempt(f"0912000{n:04d}", f"203.0.113.{n}", CODE)
                                   for n in range(40)))
    assert sum(t is not None for t in tries) == 2 * CASE_FAILURE_FACTOR


async def test_a_right_code_is_not_held_against_the_caller(
        two_hosts: tuple[FailureThrottle, FailureThrottle]) -> None:
    a, b = two_hosts
    for _ in range(5):
        counted = await a.attempt(NUMBER, TRUNK, CODE)
        assert counted is not None
        await a.succeeded(counted)
    assert not await b.blocked(NUMBER, TRUNK)


async def test_the_counts_survive_a_restart(store_database: StoreDatabase) -> None:
    async with open_store(store_database.target, fixed_protector()) as store:
        throttle = FailureThrottle(store.counters, 2, 3600.0)
        for _ in range(2):
            await throttle.attempt(NUMBER, TRUNK, CODE)
    async with open_store(store_database.target, fixed_protector()) as restarted:
        assert await FailureThrottle(restarted.counters, 2, 3600.0).blocked(NUMBER, TRUNK)
