"""The live queue and agent states (softswitch/domain/acd.py), with injected clocks and no I/O."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from softswitch.config import AgentAccount, AgentsConfig, QueueConfig
from softswitch.domain.acd import SUBSCRIBER_QUEUE_SIZE, TEHRAN, Acd, AgentState, AgentStatus, NotQueued, QueueEntry

pytestmark = pytest.mark.unit

CALLER = "09121234567"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def agents_config(*ids: str, wrap_up_s: float = 0.0) -> AgentsConfig:
    return AgentsConfig(wrap_up_s=wrap_up_s, accounts=tuple(
        AgentAccount(id=i, name=f"Agent {i}", sip_ha1="0" * 32, console_password="scrypt$x") for i in ids))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(datetime(2026, 3, 20, 10, 0, tzinfo=TEHRAN).timestamp())


def make_acd(clock: FakeClock, wall: FakeClock, *ids: str, wrap_up_s: float = 0.0, **queue: Any) -> Acd:
    return Acd(agents_config(*ids, wrap_up_s=wrap_up_s), QueueConfig(**queue), clock=clock, wall=wall)


@pytest.fixture
def acd(clock: FakeClock, wall: FakeClock) -> Iterator[Acd]:
    made = make_acd(clock, wall, "a", "b", "c")
    yield made
    made.close()


async def settle() -> None:
    """Let every task that can run do so."""
    for _ in range(5):
        await asyncio.sleep(0)


async def take(acd: Acd, entry: QueueEntry) -> AgentStatus:
    return await asyncio.wait_for(acd.next_agent(entry), 2)


async def answered(acd: Acd, clock: FakeClock, key: str, talk_s: float = 0.0) -> str:
    """One caller joins, is connected to the next agent, talks for talk_s; returns the agent's id."""
    entry = acd.join(key, CALLER)
    agent = await take(acd, entry)
    acd.connected(entry, agent.id)
    clock.advance(talk_s)
    return agent.id


def login_in_order(acd: Acd, clock: FakeClock, *ids: str) -> None:
    for agent_id in ids:
        acd.login(agent_id)
        clock.advance(1)


async def test_longest_idle_agent_is_offered_first(acd: Acd, clock: FakeClock) -> None:
    login_in_order(acd, clock, "b", "c", "a")
    assert await answered(acd, clock, "k1", talk_s=5) == "b"
    assert await answered(acd, clock, "k2") == "c"
    acd.call_ended("b")  # ready again, now the most recently idle
    assert acd.agent("b").state is AgentState.READY
    assert await answered(acd, clock, "k3") == "a"
    assert await answered(acd, clock, "k4") == "b"
    assert acd.agent("b").answered_today == 2
    assert [a.state for a in acd.agents()] == [AgentState.ON_CALL] * 3


async def test_ties_go_to_the_configured_order(acd: Acd) -> None:
    for agent_id in ("c", "b", "a"):
        acd.login(agent_id)  # the clock does not move: equal idle times
    assert (await take(acd, acd.join("k1", CALLER))).id == "a"


async def test_offers_follow_queue_order(acd: Acd) -> None:
    first, second = acd.join("k1", CALLER), acd.join("k2", CALLER)
    acd.login("a")
    second_wait = asyncio.ensure_future(acd.next_agent(second))
    await settle()
    assert not second_wait.done()  # the head has not been offered an agent yet

    ringing = await take(acd, first)
    assert (ringing.id, ringing.state, ringing.call_key) == ("a", AgentState.RINGING, "k1")
    assert acd.position(first) == 1 and acd.position(second) == 2  # the head stays queued until connected
    await settle()
    assert not second_wait.done()  # no agent left while the first caller's agent rings

    acd.no_answer(first, "a")
    first_wait = asyncio.ensure_future(acd.next_agent(first))
    acd.login("b")
    assert (await asyncio.wait_for(first_wait, 2)).id == "b"  # the head gets the next agent, not the older waiter
    await settle()
    assert not second_wait.done()

    acd.login("c")  # the head is being offered "b": the caller behind may take another agent
    assert (await asyncio.wait_for(second_wait, 2)).id == "c"
    acd.connected(second, "c")
    acd.connected(first, "b")
    assert acd.snapshot()["queue"] == []


async def test_no_answer_pauses_the_agent_and_the_next_agent_is_offered(acd: Acd, clock: FakeClock) -> None:
    login_in_order(acd, clock, "a", "b")
    entry = acd.join("k1", CALLER)
    assert (await take(acd, entry)).id == "a"
    acd.no_answer(entry, "a")
    status = acd.agent("a")
    assert (status.state, status.pause_reason, status.call_key) == (AgentState.PAUSED, "no_answer", None)
    assert acd.position(entry) == 1
    assert (await take(acd, entry)).id == "b"
    with pytest.raises(ValueError):
        acd.no_answer(entry, "a")  # not ringing for this caller any more
    acd.set_ready("a")
    assert acd.agent("a").state is AgentState.READY


async def test_dial_failure_tries_the_other_agents_first(clock: FakeClock, wall: FakeClock) -> None:
    acd = Acd(agents_config("a", "b"), QueueConfig(), clock=clock, wall=wall, dial_retry_s=0.05)
    login_in_order(acd, clock, "a", "b")
    entry = acd.join("k1", CALLER)
    assert (await take(acd, entry)).id == "a"
    acd.dial_failed(entry, "a")
    assert acd.agent("a").state is AgentState.READY
    assert acd.agent("a").idle_since == 1000.0  # not the agent's fault: keeps its place in the idle order
    assert (await take(acd, entry)).id == "b"
    acd.dial_failed(entry, "b")

    retry = asyncio.ensure_future(acd.next_agent(entry))
    await asyncio.sleep(0.1)
    assert not retry.done()  # every READY agent failed just now: no redial in a tight loop
    clock.advance(1)
    assert (await asyncio.wait_for(retry, 2)).id == "a"
    acd.close()


async def test_wrap_up_then_ready_by_itself(clock: FakeClock, wall: FakeClock) -> None:
    acd = make_acd(clock, wall, "a", wrap_up_s=0.1)
    acd.login("a")
    await answered(acd, clock, "k1", talk_s=42)
    events = acd.subscribe()
    started = time.monotonic()
    acd.call_ended("a")
    assert acd.agent("a").state is AgentState.WRAP_UP
    while (await asyncio.wait_for(events.get(), 2)).get("agent", {}).get("state") != "ready":
        pass
    assert time.monotonic() - started >= 0.09
    assert acd.agent("a").state is AgentState.READY
    assert acd.mean_handle_time_s() == 42

    await answered(acd, clock, "k2")
    acd.call_ended("a")
    acd.set_ready("a")  # ends the wrap-up early
    assert acd.agent("a").state is AgentState.READY
    await answered(acd, clock, "k3")
    acd.call_ended("a")
    acd.close()  # no timer left behind: the agent stays in wrap-up
    await asyncio.sleep(0.15)
    assert acd.agent("a").state is AgentState.WRAP_UP


async def test_pause_during_a_call_takes_effect_after_it(clock: FakeClock, wall: FakeClock) -> None:
    acd = make_acd(clock, wall, "a", wrap_up_s=30)
    acd.login("a")
    await answered(acd, clock, "k1")
    acd.pause("a")
    status = acd.agent("a")
    assert (status.state, status.pause_requested) == (AgentState.ON_CALL, "manual")
    acd.call_ended("a")
    status = acd.agent("a")
    assert (status.state, status.pause_reason, status.pause_requested) == (AgentState.PAUSED, "manual", None)
    acd.set_ready("a")

    await answered(acd, clock, "k2")
    acd.pause("a", "break")
    acd.set_ready("a")  # changed their mind
    acd.call_ended("a")
    assert acd.agent("a").state is AgentState.WRAP_UP
    acd.close()


async def test_pause_while_ringing_applies_when_the_ring_ends(acd: Acd) -> None:
    acd.login("a")
    entry = acd.join("k1", CALLER)
    await take(acd, entry)
    acd.pause("a")
    assert acd.agent("a").state is AgentState.RINGING
    acd.dial_failed(entry, "a")
    assert (acd.agent("a").state, acd.agent("a").pause_reason) == (AgentState.PAUSED, "manual")


def test_agent_commands_refused_in_the_wrong_state(acd: Acd) -> None:
    with pytest.raises(KeyError):
        acd.login("nobody")
    with pytest.raises(KeyError):
        acd.agent("nobody")
    with pytest.raises(ValueError):
        acd.set_ready("a")  # logged out
    with pytest.raises(ValueError):
        acd.pause("a")
    with pytest.raises(ValueError):
        acd.call_ended("a")
    acd.login("a")
    acd.login("a")  # no effect on an agent already logged in
    acd.pause("a")
    acd.logout("a")
    assert acd.agent("a").state is AgentState.LOGGED_OUT


async def test_logout_refused_while_ringing_or_on_a_call(acd: Acd) -> None:
    acd.login("a")
    entry = acd.join("k1", CALLER)
    await take(acd, entry)
    with pytest.raises(ValueError):
        acd.logout("a")
    acd.connected(entry, "a")
    with pytest.raises(ValueError):
        acd.logout("a")


def test_available_means_logged_in_and_not_paused(acd: Acd) -> None:
    assert not acd.available()
    acd.login("a")
    assert acd.available()
    acd.pause("a")
    assert not acd.available()
    acd.set_ready("a")
    acd.logout("a")
    assert not acd.available()


async def test_estimated_wait_from_handling_samples(clock: FakeClock, wall: FakeClock) -> None:
    acd = make_acd(clock, wall, "a", "b", "c", handle_time_samples=2, default_handle_time_s=180)
    login_in_order(acd, clock, "a", "b", "c")
    acd.pause("c")  # paused agents do not count
    entries = [acd.join(f"k{i}", CALLER) for i in range(3)]
    assert acd.estimated_wait_s(entries[0]) == 0
    assert acd.estimated_wait_s(entries[2]) == 180 * 2 / 2
    assert acd.estimated_wait_s(4) == 180 * 3 / 2

    for talk_s in (60, 120, 300):
        entry = entries.pop(0)
        agent = await take(acd, entry)
        acd.connected(entry, agent.id)
        clock.advance(talk_s)
        acd.call_ended(agent.id)
    assert acd.mean_handle_time_s() == (120 + 300) / 2  # the last two calls only
    assert acd.estimated_wait_s(3) == 210 * 2 / 2
    assert acd.snapshot()["today"]["average_handle_time_s"] == 160  # every call of the day


async def test_overflow_reasons(clock: FakeClock, wall: FakeClock) -> None:
    acd = make_acd(clock, wall, "a", max_length=3, max_wait_s=60, max_estimated_wait_s=100,
                   default_handle_time_s=90)
    assert acd.overflow_reason() == "no_agents"
    acd.login("a")
    assert acd.overflow_reason() is None
    first = acd.join("k1", CALLER)
    assert acd.overflow_reason() is None  # 90 s ahead
    second = acd.join("k2", CALLER)
    assert acd.overflow_reason() == "estimated_wait"  # 180 s ahead
    assert acd.overflow_reason(first) is None
    assert acd.overflow_reason(second) is None
    acd.join("k3", CALLER)
    assert acd.overflow_reason() == "queue_full"
    clock.advance(61)
    assert acd.overflow_reason(first) == "max_wait"
    acd.leave(first, "to_message")
    acd.pause("a")
    assert acd.overflow_reason() == "no_agents"


async def test_abandon_frees_a_ringing_agent(acd: Acd, clock: FakeClock) -> None:
    login_in_order(acd, clock, "a")
    entry = acd.join("k1", CALLER)
    await take(acd, entry)
    clock.advance(5)
    acd.leave(entry, "abandoned")
    status = acd.agent("a")
    assert (status.state, status.call_key, status.idle_since) == (AgentState.READY, None, 1000.0)
    with pytest.raises(NotQueued):
        acd.position(entry)
    acd.leave(entry, "abandoned")  # no effect the second time
    assert acd.snapshot()["today"]["abandoned"] == 1


async def test_leaving_while_waiting_ends_next_agent(acd: Acd) -> None:
    entry = acd.join("k1", CALLER)
    waiting = asyncio.ensure_future(acd.next_agent(entry))
    await settle()
    acd.leave(entry, "abandoned")
    with pytest.raises(NotQueued):
        await asyncio.wait_for(waiting, 2)


async def test_cancelled_next_agent_leaves_nothing_reserved(acd: Acd) -> None:
    entry = acd.join("k1", CALLER)
    waiting = asyncio.ensure_future(acd.next_agent(entry))
    await settle()
    waiting.cancel()
    acd.login("a")  # becomes READY in the same turn the cancellation is delivered
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert acd.agent("a").state is AgentState.READY
    assert entry.offered_to is None
    assert (await take(acd, entry)).id == "a"  # another wait still works


async def test_service_level_and_per_hour_across_tehran_midnight(
        acd: Acd, clock: FakeClock, wall: FakeClock) -> None:
    wall.now = datetime(2026, 3, 20, 23, 58, tzinfo=TEHRAN).timestamp()  # 20:28 UTC
    acd.login("a")
    entry = acd.join("k1", CALLER)
    clock.advance(20)  # within service_level_s (20)
    acd.connected(entry, (await take(acd, entry)).id)
    acd.call_ended("a")
    entry = acd.join("k2", CALLER)
    clock.advance(21)
    acd.connected(entry, (await take(acd, entry)).id)
    acd.call_ended("a")
    acd.leave(acd.join("k3", CALLER), "to_message")
    acd.count_recorded()

    today = acd.snapshot()["today"]
    assert today["date"] == "2026-03-20"
    assert (today["offered"], today["answered"], today["to_message"], today["recorded"]) == (3, 2, 1, 1)
    assert (today["service_level"], today["answered_within_s"]) == (0.5, 20)
    assert today["per_hour"][23] == 3 and sum(today["per_hour"]) == 3
    assert acd.agent("a").answered_today == 2

    wall.advance(3 * 60)  # 00:01 local on the 21st, still the 20th in UTC
    today = acd.snapshot()["today"]
    assert today["date"] == "2026-03-21"
    assert (today["offered"], today["answered"], today["service_level"]) == (0, 0, None)
    assert today["per_hour"] == [0] * 24
    assert acd.agent("a").answered_today == 0
    acd.join("k4", CALLER)
    assert acd.snapshot()["today"]["per_hour"][0] == 1


async def test_snapshot_masks_callers_and_is_json(acd: Acd, clock: FakeClock) -> None:
    acd.login("a")
    clock.advance(3)
    first = acd.join("k1", CALLER)
    acd.join("k2", "1234")
    await take(acd, first)
    clock.advance(7.5)
    snapshot = json.loads(json.dumps(acd.snapshot()))
    assert snapshot["queue"] == [
        {"key": "k1", "caller": "*******4567", "waited_s": 7.5, "position": 1, "offered_to": "a", "skills": [],
         "priority": 0, "callback": False},
        {"key": "k2", "caller": "****", "waited_s": 7.5, "position": 2, "offered_to": None, "skills": [],
         "priority": 0, "callback": False},
    ]
    assert snapshot["longest_wait_s"] == 7.5
    agent = snapshot["agents"][0]
    assert (agent["id"], agent["state"], agent["seconds_in_state"]) == ("a", "ringing", 7.5)
    assert CALLER not in json.dumps(snapshot)


async def test_subscribers_get_every_change(acd: Acd) -> None:
    events = acd.subscribe()
    acd.login("a")
    entry = acd.join("k1", CALLER)
    await take(acd, entry)
    acd.leave(entry, "abandoned")
    got = [events.get_nowait() for _ in range(events.qsize())]
    json.dumps(got)
    assert [e["type"] for e in got] == ["agent", "queue", "today", "agent", "agent", "queue", "today"]
    assert [e["agent"]["state"] for e in got if e["type"] == "agent"] == ["ready", "ringing", "ready"]
    assert got[-2] == {"type": "queue", "event": "left", "key": "k1", "length": 0, "reason": "abandoned",
                       "seq": got[-2]["seq"]}
    assert [e["seq"] for e in got] == list(range(got[0]["seq"], got[0]["seq"] + len(got)))
    acd.unsubscribe(events)
    acd.pause("a")
    assert events.empty()


def test_a_slow_subscriber_loses_the_oldest_events_marked(acd: Acd) -> None:
    events = acd.subscribe()
    for _ in range(SUBSCRIBER_QUEUE_SIZE // 2 + 2):
        acd.login("a")
        acd.logout("a")
    assert events.qsize() == SUBSCRIBER_QUEUE_SIZE
    got = [events.get_nowait() for _ in range(SUBSCRIBER_QUEUE_SIZE)]
    assert got[0]["seq"] == 5  # four dropped
    assert "missed" not in got[-5] and got[-1]["missed"] == 4


async def test_agent_state_follows_the_phones_registration(acd: Acd) -> None:
    acd.set_registered({"a", "b"})  # "c" has no phone at the front
    acd.login("c")
    status = acd.agent("c")
    assert (status.state, status.pause_reason, status.registered) == (AgentState.PAUSED, "not_registered", False)
    with pytest.raises(ValueError, match="no phone registered"):
        acd.set_ready("c")
    acd.set_registered({"a", "b", "c"})  # its phone registers: ready by itself
    assert acd.agent("c").state is AgentState.READY

    acd.login("a")
    acd.set_registered({"b", "c"})  # a's phone stops answering the front's probes
    assert (acd.agent("a").state, acd.agent("a").pause_reason) == (AgentState.PAUSED, "not_registered")
    entry = acd.join("k1", CALLER)
    assert (await take(acd, entry)).id == "c"  # never offered to the unreachable agent


async def test_a_phone_lost_during_a_call_pauses_the_agent_after_it(acd: Acd) -> None:
    acd.set_registered({"a"})
    acd.login("a")
    entry = acd.join("k1", CALLER)
    await take(acd, entry)
    acd.connected(entry, "a")
    acd.set_registered(set())
    assert (acd.agent("a").state, acd.agent("a").pause_requested) == (AgentState.ON_CALL, "not_registered")
    acd.call_ended("a")
    assert (acd.agent("a").state, acd.agent("a").pause_reason) == (AgentState.PAUSED, "not_registered")
    acd.logout("a")  # nothing holds it
    assert acd.agent("a").state is AgentState.LOGGED_OUT


def test_a_manual_pause_outlasts_a_phone_that_comes_back(acd: Acd) -> None:
    acd.set_registered({"a"})
    acd.login("a")
    acd.pause("a", "break")
    acd.set_registered(set())
    acd.set_registered({"a"})
    assert (acd.agent("a").state, acd.agent("a").pause_reason) == (AgentState.PAUSED, "break")


def skilled_acd(clock: Any, wall: Any, skill_wait_s: float = 60.0) -> Acd:
    """Agent fa speaks Persian, en English (and Persian); callers ask for lang:fa or lang:en."""
    return Acd(agents_config("fa", "en"), QueueConfig(skill_wait_s=skill_wait_s), clock=clock, wall=wall,
               skills={"fa": {"lang:fa"}, "en": {"lang:en", "lang:fa"}})


async def test_a_caller_gets_an_agent_with_the_skill_before_one_idle_longer(clock: FakeClock, wall: FakeClock) -> None:
    acd = skilled_acd(clock, wall)
    login_in_order(acd, clock, "fa", "en")  # fa has been idle longest
    entry = acd.join("k1", CALLER, skills=["lang:en"])
    assert (await take(acd, entry)).id == "en"
    assert acd.snapshot()["queue"][0]["skills"] == ["lang:en"]
    acd.close()


async def test_a_caller_waits_for_the_skill_then_takes_any_agent(wall: FakeClock) -> None:
    acd = skilled_acd(time.monotonic, wall, skill_wait_s=0.3)
    acd.login("fa")
    entry = acd.join("k1", CALLER, skills=["lang:en"])
    started = time.monotonic()
    waiting = asyncio.ensure_future(acd.next_agent(entry))
    await asyncio.sleep(0.15)
    assert not waiting.done()  # only a Persian agent is ready: not yet
    agent = await asyncio.wait_for(waiting, 2)  # woken by its own wait ending, no change needed
    assert agent.id == "fa" and time.monotonic() - started >= 0.3
    acd.close()


async def test_a_caller_behind_one_who_needs_another_skill_is_not_held_back(clock: FakeClock,
                                                                          wall: FakeClock) -> None:
    acd = skilled_acd(clock, wall)
    acd.login("fa")
    english = acd.join("k1", CALLER, skills=["lang:en"])
    english_wait = asyncio.ensure_future(acd.next_agent(english))
    persian = acd.join("k2", CALLER, skills=["lang:fa"])
    # The Persian agent cannot serve the first caller (yet): the second takes it.
    assert (await take(acd, persian)).id == "fa"
    acd.login("en")
    assert (await asyncio.wait_for(english_wait, 2)).id == "en"
    acd.close()


async def test_a_caller_ahead_who_could_take_the_agent_keeps_it(clock: FakeClock, wall: FakeClock) -> None:
    acd = skilled_acd(clock, wall)
    acd.login("en")
    first = acd.join("k1", CALLER, skills=["lang:fa"])
    second = acd.join("k2", CALLER, skills=["lang:en"])
    # The only agent speaks both: the first caller's, though the second needs it more.
    assert acd.offer(second, "en") is None
    assert (await take(acd, first)).id == "en"
    clock.advance(61)  # the first caller's skill wait is over: it could take any agent
    acd.no_answer(first, "en")
    acd.login("fa")
    # The Persian agent would serve both now; the first caller, still waiting, is first.
    assert acd.offer(second, "fa") is None
    assert acd.offer(first, "fa") is not None
    acd.close()


def test_skills_survive_export_and_load(clock: FakeClock, wall: FakeClock) -> None:
    acd = skilled_acd(clock, wall)
    acd.join("k1", CALLER, skills=["lang:en"])
    state = json.loads(json.dumps(acd.export_state()))
    replica = skilled_acd(clock, wall)
    replica.load_state(state)
    assert replica.snapshot()["queue"][0]["skills"] == ["lang:en"]
    with pytest.raises(ValueError, match="not the string"):
        acd.join("k2", CALLER, skills="lang:en")


async def test_a_caller_of_a_higher_priority_is_queued_ahead_and_served_first(acd: Acd) -> None:
    plain = acd.join("k1", CALLER)
    second = acd.join("k2", CALLER)
    repeat = acd.join("k3", CALLER, priority=1)
    later_repeat = acd.join("k4", CALLER, priority=1)
    assert [acd.position(e) for e in (repeat, later_repeat, plain, second)] == [1, 2, 3, 4]
    acd.login("a")
    assert (await take(acd, repeat)).id == "a"
    acd.login("b")
    assert acd.offer(plain, "b") is None  # the other repeat caller is still ahead
    assert acd.offer(later_repeat, "b") is not None
    state = json.loads(json.dumps(acd.export_state()))
    assert [e["priority"] for e in state["queue"]] == [1, 1, 0, 0]


async def test_a_transfer_rings_a_ready_agent_and_hands_the_call_over(acd: Acd, clock: FakeClock) -> None:
    login_in_order(acd, clock, "a", "b")
    assert await answered(acd, clock, "k1", talk_s=30.0) == "a"
    assert acd.transfer_offer("c", "k1") is None  # logged out
    ringing = acd.transfer_offer("b", "k1", host="h1")
    assert ringing is not None and ringing.state is AgentState.RINGING and ringing.call_key == "k1"
    assert acd.call_host("b") == "h1"
    clock.advance(5.0)
    acd.transfer_answered("b", from_agent="a")
    assert acd.agent("b").state is AgentState.ON_CALL and acd.agent("a").state is AgentState.READY
    clock.advance(20.0)
    acd.call_ended("b")
    # Each agent's own part is its handling time; the caller was answered once.
    assert list(acd._handle_times) == [35.0, 20.0]
    assert acd.snapshot()["today"]["answered"] == 1


async def test_a_transfer_unanswered_pauses_the_agent_who_let_it_ring_and_frees_one_not_reached(acd: Acd) -> None:
    acd.login("b")
    acd.login("c")
    acd.transfer_offer("b", "k1")
    acd.transfer_unanswered("b", no_answer=True)
    assert acd.agent("b").state is AgentState.PAUSED and acd.agent("b").pause_reason == "no_answer"
    idle_since = acd.agent("c").idle_since
    acd.transfer_offer("c", "k1")
    acd.transfer_unanswered("c", no_answer=False)
    assert acd.agent("c").state is AgentState.READY and acd.agent("c").idle_since == idle_since
    with pytest.raises(ValueError, match="not ringing for a transfer"):
        acd.transfer_answered("c", from_agent="a")


async def test_a_colleague_consulted_is_on_call_from_the_answer_and_free_again_if_let_go(acd: Acd,
                                                                                         clock: FakeClock) -> None:
    login_in_order(acd, clock, "a", "b")
    assert await answered(acd, clock, "k1", talk_s=30.0) == "a"
    acd.transfer_offer("b", "k1")
    clock.advance(2.0)
    acd.transfer_consulting("b")  # answered: talking with the first agent, the caller holds
    assert acd.agent("b").state is AgentState.ON_CALL and acd.agent("a").state is AgentState.ON_CALL
    clock.advance(10.0)
    acd.transfer_answered("b", from_agent="a")  # put through: its handling counts from the consultation
    acd.call_ended("b")
    assert list(acd._handle_times)[-1] == 10.0
    assert acd.agent("a").state is AgentState.READY  # no wrap-up in this fixture
    # A consultation given up: the colleague is ready again, never paused.
    acd.transfer_offer("a", "k2")
    acd.transfer_consulting("a")
    acd.transfer_unanswered("a", no_answer=True)
    assert acd.agent("a").state is AgentState.READY
    with pytest.raises(ValueError, match="not ringing"):
        acd.transfer_consulting("a")


async def test_a_caller_sent_back_to_the_queue_is_counted_once(acd: Acd, clock: FakeClock) -> None:
    login_in_order(acd, clock, "a", "b")
    assert await answered(acd, clock, "k1", talk_s=10.0) == "a"
    acd.call_ended("a")
    waiting = acd.join("k0", CALLER)
    again = acd.join("k1", CALLER, priority=10, again=True)
    assert acd.position(again) == 1 and acd.position(waiting) == 2  # at the head
    assert (await take(acd, again)).id == "b"
    acd.connected(again, "b")
    acd.leave(waiting, "abandoned")
    today = acd.snapshot()["today"]
    assert (today["offered"], today["answered"], today["abandoned"]) == (2, 1, 1)
    assert json.loads(json.dumps(acd.export_state()))["queue"] == []
