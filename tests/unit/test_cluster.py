"""Several hosts on one store: heartbeats, a dead host taken over by exactly one survivor, a live one never.

The store's part runs on SQLite and on PostgreSQL (two stores with their own
connection or pool, as two hosts have); the watch (``ClusterMember``) runs on
PostgreSQL with timers of a tenth of a second, with real recording files in a
real shared directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from softswitch.config import ClusterConfig, ConfigError, load_config
from softswitch.control.cluster import ClusterMember, cluster_hosts
from storage.models import PersonId, TakeOver
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase
from tests.unit.conftest import store_protector

pytestmark = pytest.mark.unit

TIMEOUT_S = 5.0


async def _silence(db: StoreDatabase, host: str, seconds: float) -> None:
    """As if the host had stopped beating ``seconds`` ago."""
    await db.raw("UPDATE hosts SET last_seen = last_seen - ? WHERE name = ?", seconds, host)


def _noting(taken: list[TakeOver]) -> Callable[[TakeOver], Awaitable[None]]:
    async def note(done: TakeOver) -> None:
        taken.append(done)
    return note


async def _call(store: Store, name: str, host: str | None) -> int:
    return await store.add_call(f"{name}@test", "sip:caller@trunk", "sip:111@switch", "127.0.0.1", 0, time.time(),
                                host=host)


def test_the_cluster_section_defaults_and_refusals() -> None:
    config = load_config()
    assert (config.cluster.heartbeat_s, config.cluster.host_timeout_s) == (1.0, 5.0)
    assert config.cluster.host_name == config.recordings_store.host_name  # both the machine's name
    named = load_config(overrides={"cluster.name": "host-a"})
    assert named.cluster.host_name == "host-a" and named.recordings_store.host_name == "host-a"
    apart = load_config(overrides={"cluster.name": "host-a", "recordings_store.host": "folder-a"})
    assert apart.recordings_store.host_name == "folder-a"
    with pytest.raises(ConfigError, match="cluster.name"):
        load_config(overrides={"cluster.name": "../up"})
    with pytest.raises(ConfigError, match="at least twice heartbeat_s"):
        load_config(overrides={"cluster.heartbeat_s": 2, "cluster.host_timeout_s": 3})
    # Where the other hosts' consoles relay to: derived from the web server's address, or as configured.
    assert config.console_url == "http://127.0.0.1:8111"
    assert load_config(overrides={"http.host": "::1"}).console_url == "http://[::1]:8111"
    assert load_config(overrides={"cluster.console_url": "https://a.example:8443/"}).console_url == \
        "https://a.example:8443"
    with pytest.raises(ConfigError, match="cluster.console_url"):
        load_config(overrides={"cluster.console_url": "ftp://a.example/x"})


async def test_a_live_host_is_never_taken_over_a_silent_one_once(
        two_stores: tuple[Store, Store], store_database: StoreDatabase) -> None:
    a, b = two_stores
    assert await a.join_cluster("a", "/var/a/recordings", "a") is None
    assert await b.join_cluster("b", "/var/b/recordings", None) is None
    lost = await _call(b, "lost", "b")
    assert await a.take_over("b", "a", TIMEOUT_S) is None  # alive
    assert await a.take_over("a", "a", 0.0) is None  # nobody takes itself over
    assert await b.heartbeat("b")
    await _silence(store_database, "b", TIMEOUT_S - 1)
    assert await a.take_over("b", "a", TIMEOUT_S) is None  # late, not yet dead
    [alive_a, alive_b] = await a.hosts()
    assert (alive_a.name, alive_b.name) == ("a", "b") and alive_b.silent_s == pytest.approx(TIMEOUT_S - 1, abs=0.5)

    await _silence(store_database, "b", 2)
    done = await a.take_over("b", "a", TIMEOUT_S)
    assert done is not None and done.calls_closed == (lost,) and done.host.name == "b"
    assert await a.take_over("b", "a", TIMEOUT_S) is None  # once
    cdr = await a.get_call(lost)
    assert cdr.disposition == "host_lost" and cdr.ended_at == pytest.approx(done.host.last_seen)
    [_, taken] = await a.hosts()
    assert taken.taken_over_by == "a" and taken.taken_over_at is not None
    assert not await b.heartbeat("b")  # it learns that it was taken over

    # Back with the same name: alive again, and told what happened while it was down.
    before = await b.join_cluster("b", "/var/b/recordings", None)
    assert before is not None and before.taken_over_by == "a"
    assert await b.heartbeat("b")
    assert await a.take_over("b", "a", TIMEOUT_S) is None
    assert [c.id for c in await b.calls_lost_with_host("b", since=before.started_at - 60)] == [lost]
    assert await b.unfinished_calls("b") == []  # nothing of its own to close again

    # A host that stops cleanly is not taken over, however long it stays away; back, it is alive again.
    await b.leave_cluster("b")
    await _silence(store_database, "b", TIMEOUT_S + 1)
    assert await a.take_over("b", "a", TIMEOUT_S) is None
    [_, left] = await a.hosts()
    assert left.left_at is not None and left.taken_over_by is None
    assert not await b.heartbeat("b")
    assert (await b.join_cluster("b", "/var/b/recordings", None)).left_at is not None  # type: ignore[union-attr]
    [_, back] = await a.hosts()
    assert back.left_at is None and await b.heartbeat("b")


async def test_the_takeover_files_cut_messages_and_keeps_every_other_host_s_calls(
        two_stores: tuple[Store, Store], store_database: StoreDatabase) -> None:
    a, b = two_stores
    for store, name in ((a, "a"), (b, "b")):
        await store.join_cluster(name, f"/var/{name}/recordings", name)
    in_menu = await _call(b, "menu", "b")
    # A message whose tape died on the host's disk: only the fact that it started is in the store.
    messaging = await _call(b, "message", "b")
    await b.message_started(messaging, time.time())
    await b.add_recording(messaging, None, "national_id_utterance", "/var/b/recordings/id.wav", 1.5, "0" * 64, True)
    # A call whose case was opened, its tape stored after that.
    read_back = await _call(b, "read-back", "b")
    case = await b.open_call_case(read_back, PersonId("0499370899", "keypad", "verified"))
    await b.add_recording(read_back, None, "message", "/var/b/recordings/m.wav", 4.0, "1" * 64, True)
    others = [await _call(a, "a-call", "a"), await _call(a, "single", None)]

    await _silence(store_database, "b", TIMEOUT_S + 1)
    done = await a.take_over("b", "a", TIMEOUT_S)
    assert done is not None and sorted(done.calls_closed) == sorted([in_menu, messaging, read_back])
    [(cut_call, code)] = done.cases_opened
    cut = await a.get_case(code)
    assert cut_call == messaging and cut.status == "received_incomplete"
    assert (cut.id_source, cut.id_status, cut.national_id_masked) == ("speech", "to_transcribe", None)
    assert [r.kind for r in await a.recordings_for_case(cut.id)] == ["national_id_utterance"]
    assert [r.kind for r in await a.recordings_for_case(case.id)] == ["message"]
    assert await a.case_for_call(in_menu) is None  # no message, no case
    assert {c.disposition for c in [await a.get_call(i) for i in done.calls_closed]} == {"host_lost"}
    # Host a's calls, and those from before several hosts, are not b's.
    assert [c.id for c in await a.unfinished_calls()] == others
    assert [c.id for c in await a.unfinished_calls("a")] == others
    assert [c.id for c in await a.unfinished_calls("b")] == [others[1]]


async def test_two_survivors_racing_for_a_dead_host_one_wins(store_database: StoreDatabase) -> None:
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(open_store(store_database.target, store_protector()))
                  for _ in range(3)]
        dead, *survivors = stores
        for round_ in range(3):
            name = f"dead-{round_}"
            await dead.join_cluster(name, f"/var/{name}", None)
            for n in range(5):
                call = await _call(dead, f"{name}-{n}", name)
                await dead.message_started(call, time.time())
            await _silence(store_database, name, TIMEOUT_S + 1)
            results = await asyncio.gather(*(store.take_over(name, f"survivor-{i}", TIMEOUT_S)
                                             for i, store in enumerate(survivors) for _ in range(3)))
            won = [r for r in results if r is not None]
            assert len(won) == 1 and len(won[0].calls_closed) == 5 and len(won[0].cases_opened) == 5
            [(cases,)] = await store_database.raw(
                "SELECT count(*) FROM cases JOIN calls ON calls.id = cases.call_id WHERE calls.host = ?", name)
            assert cases == 5


@pytest.mark.parametrize("store_database", ["postgresql"], indirect=True)
async def test_a_member_whose_peer_stops_beating_takes_it_over_within_the_timeout(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    settings = ClusterConfig(name="a", heartbeat_s=0.1, host_timeout_s=0.4)
    shared = tmp_path / "shared"
    b_recordings = tmp_path / "b" / "recordings"
    # Host b's two stored tapes: one copied to the share before it died (its row not yet moved), one not.
    tapes = {}
    for name in ("copied", "local"):
        tape = b_recordings / "2026" / f"{name}.wav"
        tape.parent.mkdir(parents=True, exist_ok=True)
        tape.write_bytes(name.encode() * 100)
        tapes[name] = tape
    copy = shared / "b" / "2026" / "copied.wav"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(tapes["copied"].read_bytes())
    taken: list[TakeOver] = []
    async with open_store(store_database.target, store_protector()) as a_store, \
            open_store(store_database.target, store_protector()) as b_store:
        b = ClusterMember(b_store, ClusterConfig(name="b", heartbeat_s=0.1, host_timeout_s=0.4), b_recordings,
                          shared, "b", taken_over=_noting(taken))
        a = ClusterMember(a_store, settings, tmp_path / "a" / "recordings", shared, "a", taken_over=_noting(taken))
        call = await _call(b_store, "b-call", "b")
        rows = {name: await b_store.add_recording(call, None, "message", str(tape), 1.0,
                                                  hashlib.sha256(tape.read_bytes()).hexdigest(), True)
                for name, tape in tapes.items()}
        for member in (a, b):
            await member.join()
            member.start()
        try:
            await asyncio.sleep(1.0)  # both beat: neither is taken over
            assert taken == [] and a.up() == 2
            health = cluster_hosts(a)
            assert health is not None and health["host"] == "a" and health["hosts_up"] == 2
            await b.close()  # dies: it does not leave
            stopped = time.monotonic()
            while not taken and time.monotonic() - stopped < 3:
                await asyncio.sleep(0.05)
            waited = time.monotonic() - stopped
            # Its last heartbeat was up to one interval before it stopped.
            assert [t.host.name for t in taken] == ["b"] and 0.3 <= waited < 1.5, waited
            assert taken[0].host.silent_s > 0.4
            cdr = await a_store.get_call(call)
            assert cdr.disposition == "host_lost"
            # The finished copy is adopted (just after the take-over is told); the tape only on b's disk
            # keeps its row there.
            for _ in range(40):
                moved = await a_store.get_recording(rows["copied"].id)
                if moved.path == str(copy):
                    break
                await asyncio.sleep(0.05)
            assert moved.path == str(copy)
            assert (await a_store.get_recording(rows["local"].id)).path == str(tapes["local"])
            await asyncio.sleep(0.3)
            assert a.up() == 1 and len(taken) == 1
        finally:
            await a.close()


@pytest.mark.parametrize("store_database", ["postgresql"], indirect=True)
async def test_a_member_takes_nobody_over_before_its_own_heartbeats_have_held_for_the_timeout(
        store_database: StoreDatabase, tmp_path: Path) -> None:
    """As after an outage of the store: every other host's heartbeat is old until it beats again."""
    taken: list[TakeOver] = []
    async with open_store(store_database.target, store_protector()) as store:
        await store.join_cluster("c", "/var/c/recordings", None)
        await _silence(store_database, "c", 100)
        a = ClusterMember(store, ClusterConfig(name="a", heartbeat_s=0.1, host_timeout_s=0.5),
                          tmp_path / "recordings", None, None, taken_over=_noting(taken))
        await a.join()
        a.start()
        started = time.monotonic()
        try:
            await asyncio.sleep(0.3)
            assert taken == [] and a.hosts and a.up() == 1  # c read as dead, not yet taken over
            while not taken and time.monotonic() - started < 3:
                await asyncio.sleep(0.05)
            assert [t.host.name for t in taken] == ["c"] and time.monotonic() - started >= 0.5
        finally:
            await a.close()
