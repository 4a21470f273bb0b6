"""Fixtures of the unit tests that more than one module uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from storage.crypto import IdProtector
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase

# The national-ID key and pepper of stores that several tests (and processes) open alike.
KEY, PEPPER = bytes(range(32)), b"p" * 32


def store_protector() -> IdProtector:
    return IdProtector({"k1": KEY}, "k1", PEPPER)


@pytest.fixture
async def two_stores(store_database: StoreDatabase) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database, each with its own connection (SQLite) or pool (PostgreSQL), as two hosts."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_store(store_database.target, store_protector()))
        second = await stack.enter_async_context(open_store(store_database.target, store_protector()))
        yield first, second
