"""How the suite is spread over pytest-xdist's processes (``-n 2 --dist loadgroup``, in setup.cfg).

Each SIP test module runs whole in one process, since its softswitch, ports and
phones are its own (module or session fixtures); modules that share a
softswitch or a port plan share a group. Unit and browser tests are spread
one by one. Without xdist the groups mean nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.crypto import IdProtector
from storage.store import Store, open_store
# The storage suites' databases: `store_database` is each test on SQLite, then on PostgreSQL.
from tests.support.postgres import postgres_server, store_database  # noqa: F401


def fixed_protector() -> IdProtector:
    """A fixed ID key and pepper for tests."""
    return IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)


@pytest.fixture
async def web_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real store (a SQLite file) for what the web pages keep there: sessions and login counts."""
    async with open_store(tmp_path / "web-store.db", fixed_protector()) as store:
        yield store

# Modules that share a running softswitch or ports with another module.
SHARED = {
    "test_national_id_capture": "shared_softswitch",  # both use tests/sip/conftest.py's `softswitch`
    "test_recorded_message": "shared_softswitch",
    "test_console_browser": "test_live",  # takes test_live's softswitch and phones
}


def pytest_itemcollected(item: pytest.Item) -> None:
    # As each test is collected: xdist reads the groups in its collection_modifyitems.
    module = getattr(item, "module", None)
    package, _, name = (module.__name__ if module is not None else "").rpartition(".")
    if package == "tests.sip":
        item.add_marker(pytest.mark.xdist_group(SHARED.get(name, name)))
    elif package == "tests.browser":
        item.add_marker(pytest.mark.xdist_group("browser"))  # one Chromium for them all
