"""The replicated ACD: hosts' replicas on one real PostgreSQL database keep one queue and one set of agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from softswitch.config import QueueConfig
from softswitch.control.shared_acd import ReplicatedAcd
from softswitch.domain.acd import AgentState, DayFact
from storage.store import Store, open_store
from tests.support.postgres import PostgresServer
from tests.unit.conftest import store_protector
from tests.unit.test_acd import agents_config

pytestmark = pytest.mark.xdist_group("postgres")

Host = Callable[..., Awaitable[ReplicatedAcd]]


@pytest.fixture
async def hosts(postgres_server: PostgresServer) -> AsyncIterator[Host]:
    """Starts a host's replica (its own store connection) on one fresh database; each is closed after the test."""
    name = await postgres_server.create_database()
    async with AsyncExitStack() as stack:
        started: list[ReplicatedAcd] = []

        async def start(host: str, *ids: str, journal: list[DayFact] | None = None, **options: Any) -> ReplicatedAcd:
            store: Store = await stack.enter_async_context(open_store(postgres_server.url(name), store_protector()))
            acd = ReplicatedAcd(agents_config(*(ids or ("a1", "a2")), wrap_up_s=options.pop("wrap_up_s", 0.0)),
                                QueueConfig(), store.acd_changes, host,
                                journal=(journal.append if journal is not None else lambda fact: None), **options)
            await acd.start()
            started.append(acd)
            return acd

        try:
            yield start
        finally:
            for acd in started:
                acd.close()
    await postgres_server.drop_database(name)


def view(acd: ReplicatedAcd) -> tuple[Any, ...]:
    """What must be the same on every host: agents' states and calls, the queue and who it is offered to."""
    snapshot = acd.snapshot()
    return (tuple((a["id"], a["state"], a["call_key"], a["pause_reason"]) for a in snapshot["agents"]),
            tuple((e["key"], e["offered_to"]) for e in snapshot["queue"]),
            {k: v for k, v in snapshot["today"].items() if k != "per_hour"})


async def settled(*replicas: ReplicatedAcd) -> None:
    for acd in replicas:
        await acd._catch_up()


async def test_a_caller_on_one_host_gets_the_agent_who_logged_in_on_another(hosts: Host) -> None:
    a, b = await hosts("a"), await hosts("b")
    await b.submit("login", agent_id="a1")
    await a._catch_up()
    assert a.agent("a1").state is AgentState.READY  # B's change, seen by A
    entry = await a.submit("join", key="call-1", caller_number="*******4567", host="a")
    agent = await asyncio.wait_for(a.next_agent(entry), 5)
    assert agent.id == "a1"
    await settled(b)
    assert b.agent("a1").state is AgentState.RINGING and b.agent("a1").call_key == "call-1"
    await a.submit("connected", key="call-1", agent_id="a1")
    await a.submit("call_ended", agent_id="a1")
    await settled(a, b)
    assert b.agent("a1").state is AgentState.READY
    assert view(a) == view(b)
    assert b.snapshot()["today"]["answered"] == 1 and b.snapshot()["queue"] == []


async def test_one_agent_two_callers_on_two_hosts_the_first_in_line_gets_it(hosts: Host) -> None:
    a, b = await hosts("a", "a1"), await hosts("b", "a1")
    first = await a.submit("join", key="a-call", caller_number="1234", host="a")
    await b._catch_up()
    second = await b.submit("join", key="b-call", caller_number="5678", host="b")
    await a._catch_up()
    waits = [asyncio.ensure_future(a.next_agent(first)), asyncio.ensure_future(b.next_agent(second))]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waits)
    await b.submit("login", agent_id="a1")  # the agent's console is on B
    got = await asyncio.wait_for(waits[0], 5)
    assert got.id == "a1" and not waits[1].done()  # B's own caller is second: it waits
    await a.submit("connected", key="a-call", agent_id="a1")
    await a.submit("call_ended", agent_id="a1")
    assert (await asyncio.wait_for(waits[1], 5)).id == "a1"
    await settled(a, b)
    assert view(a) == view(b)


async def test_hosts_reserving_at_once_never_share_an_agent(hosts: Host) -> None:
    replicas = [await hosts(name, "a1", "a2", "a3") for name in ("a", "b", "c")]
    for agent_id in ("a1", "a2", "a3"):
        await replicas[0].submit("login", agent_id=agent_id)
    entries = []
    for index, acd in enumerate(replicas * 2):
        await acd._catch_up()
        entries.append((acd, await acd.submit("join", key=f"call-{index}", caller_number="1", host=acd.host)))
    waits = [asyncio.ensure_future(acd.next_agent(entry)) for acd, entry in entries]
    done, pending = await asyncio.wait(waits, timeout=3)
    taken = [w.result().id for w in done]
    assert sorted(taken) == ["a1", "a2", "a3"]  # three agents, three callers, each agent once
    # The first three in line got them, whatever their hosts.
    assert {entries[waits.index(w)][1].key for w in done} == {"call-0", "call-1", "call-2"}
    for w in pending:
        w.cancel()
    await settled(*replicas)
    assert view(replicas[0]) == view(replicas[1]) == view(replicas[2])


async def test_a_refused_change_is_refused_on_every_host(hosts: Host) -> None:
    a, b = await hosts("a"), await hosts("b")
    await a.submit("login", agent_id="a1")
    entry = await a.submit("join", key="call-1", caller_number="1", host="a")
    await a.next_agent(entry)
    await b._catch_up()
    with pytest.raises(ValueError):
        await b.submit("logout", agent_id="a1")  # ringing: the ACD refuses it
    with pytest.raises(KeyError):
        await b.submit("login", agent_id="nobody")
    await settled(a, b)
    assert a.agent("a1").state is b.agent("a1").state is AgentState.RINGING


async def test_the_wrap_up_ends_by_the_call_s_host_on_every_host(hosts: Host) -> None:
    a, b = await hosts("a", "a1", wrap_up_s=0.3), await hosts("b", "a1", wrap_up_s=0.3)
    await b.submit("login", agent_id="a1")
    await a._catch_up()
    entry = await a.submit("join", key="call-1", caller_number="1", host="a")
    await a.next_agent(entry)
    await a.submit("connected", key="call-1", agent_id="a1")
    await a.submit("call_ended", agent_id="a1")
    await settled(b)
    assert b.agent("a1").state is AgentState.WRAP_UP
    for _ in range(50):
        await asyncio.sleep(0.05)
        await settled(b)
        if b.agent("a1").state is AgentState.READY:
            break
    assert b.agent("a1").state is AgentState.READY
    # One change ended it (A's timer); B ran none.
    changes = await a._changes.after(0)
    assert [(c.host, c.name) for c in changes].count(("a", "end_wrap_up")) == 1
    assert not any(c.name == "end_wrap_up" and c.host == "b" for c in changes)


async def test_a_dead_host_s_callers_leave_and_its_agents_are_freed(hosts: Host) -> None:
    a, b = await hosts("a"), await hosts("b")
    await b.submit("login", agent_id="a1")
    await b.submit("login", agent_id="a2")
    await a._catch_up()
    ringing = await a.submit("join", key="a-ringing", caller_number="1", host="a")
    await a.next_agent(ringing)
    talking = await a.submit("join", key="a-talking", caller_number="2", host="a")
    talker = await a.next_agent(talking)
    await a.submit("connected", key="a-talking", agent_id=talker.id)
    await a.submit("join", key="a-waiting", caller_number="3", host="a")
    await b.submit("join", key="b-waiting", caller_number="4", host="b")
    a.close()  # A dies
    assert await b.take_over("a") == 2  # the ringing and the waiting caller; the talking one left already
    assert [e["key"] for e in b.snapshot()["queue"]] == ["b-waiting"]
    # Both agents are free again: one was rung for, one talked to a call of A.
    assert {agent.state for agent in b.agents()} == {AgentState.READY}
    assert b.snapshot()["today"]["left_other"] == 2


async def test_a_host_started_later_has_the_same_queue_from_the_snapshot(hosts: Host) -> None:
    journal_a: list[DayFact] = []
    a = await hosts("a", journal=journal_a, snapshot_every=5, keep_changes=2)
    await a.submit("login", agent_id="a1")
    for n in range(4):
        await a.submit("join", key=f"call-{n}", caller_number="*****9876", host="a")
    entry = a._entry("call-0")
    assert entry is not None
    await a.next_agent(entry)
    await a.submit("connected", key="call-0", agent_id="a1")
    await a.submit("leave", key="call-1", reason="abandoned")
    for _ in range(20):  # the snapshot is written in the background
        if await a._changes.latest_snapshot() is not None:
            break
        await asyncio.sleep(0.05)
    assert (await a._changes.latest_snapshot()) is not None
    assert (await a._changes.after(0))[0].id > 1  # changes before the snapshot were pruned
    journal_b: list[DayFact] = []
    b = await hosts("b", journal=journal_b)
    assert view(b) == view(a)
    assert b.snapshot()["queue"][0]["caller"] == "*****9876"
    assert [f.kind for f in journal_a] == ["offered"] * 4 + ["answered", "left"]
    assert journal_b == []  # B counted A's facts, but only A stored them


async def test_a_host_restarting_ends_its_own_calls_of_before(hosts: Host) -> None:
    a = await hosts("a")
    await a.submit("login", agent_id="a1")
    entry = await a.submit("join", key="call-1", caller_number="1", host="a")
    await a.next_agent(entry)
    a.close()
    again = await hosts("a")  # the same host, restarted
    assert again.snapshot()["queue"] == []
    assert again.agent("a1").state is AgentState.READY


async def test_an_offer_chosen_on_a_stale_replica_is_refused_where_it_is_applied(hosts: Host) -> None:
    """A host that had not yet seen a caller ahead, or another host's reservation, chose its offer on old
    state: the order refuses it on every host, and its caller waits on."""
    a, b = await hosts("a", "a1"), await hosts("b", "a1")
    await a.submit("login", agent_id="a1")
    await a.submit("join", key="a-first", caller_number="1", host="a")
    await b._catch_up()
    await b.submit("join", key="b-second", caller_number="2", host="b")
    # As if B had not seen A's caller: an offer for its own, second caller.
    assert await b.submit("offer", key="b-second", agent_id="a1") is None
    assert await a.submit("offer", key="a-first", agent_id="a1") is not None
    await a.submit("join", key="a-third", caller_number="3", host="a")
    # As if A had not seen its agent taken: refused too.
    assert await a.submit("offer", key="a-third", agent_id="a1") is None
    await settled(a, b)
    assert view(a) == view(b)
    assert [(e["key"], e["offered_to"]) for e in b.snapshot()["queue"]] == [
        ("a-first", "a1"), ("b-second", None), ("a-third", None)]
