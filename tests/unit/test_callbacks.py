"""Callbacks: the queue keeps a callback's place (softswitch/domain/acd.py), the store keeps callbacks
(storage/callbacks.py, both engines), and the control process's service makes their attempts
(softswitch/control/callbacks.py) over a real queue and store, with a fake of the call itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ivr.live import CallbackRequest
from softswitch.config import AgentAccount, AgentsConfig, CallbackConfig, ConfigError, QueueConfig, load_config
from softswitch.control.callbacks import ANSWERED, CallbackService
from softswitch.domain.acd import Acd, AgentState, AgentStatus, QueueEntry
from storage.callbacks import DONE, PENDING, UNREACHED, Callback
from storage.crypto import IdProtector
from storage.errors import Conflict
from storage.models import PersonId
from storage.store import Store, open_store
from tests.support.postgres import StoreDatabase
from tests.unit.test_acd import FakeClock, make_acd, take

pytestmark = pytest.mark.unit

NUMBER = "09121234567"
NATIONAL_ID = "0499370899"
CALLER = PersonId(NATIONAL_ID, "keypad", "verified")


# -- the queue ---------------------------------------------------------------------------------

@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


async def test_a_callback_keeps_the_callers_place_and_frees_nothing_it_did_not_hold(clock: FakeClock) -> None:
    acd = make_acd(clock, FakeClock(1.7e9), "a")
    first, second, third = (acd.join(key, NUMBER) for key in ("c1", "c2", "c3"))
    acd.to_callback(second, "callback-1")
    assert [e["key"] for e in acd.snapshot()["queue"]] == ["c1", "callback-1", "c3"]
    assert [e["callback"] for e in acd.snapshot()["queue"]] == [False, True, False]
    assert acd.position(second) == 2 and acd.snapshot()["today"]["abandoned"] == 0
    with pytest.raises(ValueError):
        acd.to_callback(third, "callback-1")  # one key, one entry


async def test_an_unanswered_callback_frees_its_agent_and_lets_callers_behind_go_first_until_due(
        clock: FakeClock) -> None:
    acd = make_acd(clock, FakeClock(1.7e9), "a", "b")
    acd.login("a")
    callback = acd.join("callback-1", NUMBER, callback=True)
    behind = acd.join("c2", NUMBER)
    offered = await take(acd, callback)
    clock.advance(30.0)  # the caller's phone rang out
    acd.callback_missed(callback, offered.id, retry_s=300.0)
    assert acd.agent("a").state is AgentState.READY
    # Not due: the caller behind takes the agent the callback would have had.
    assert (await take(acd, behind)).id == "a"
    acd.login("b")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(acd.next_agent(callback), 0.05)
    clock.advance(300.0)
    third = acd.join("c3", NUMBER)
    # Due again, it is ahead of the caller who came after it: b is its, not c3's.
    assert acd.offer(third, "b") is None
    assert (await take(acd, callback)).id == "b"


async def test_a_callback_and_its_due_time_survive_export_and_load(clock: FakeClock) -> None:
    acd = make_acd(clock, FakeClock(1.7e9), "a")
    entry = acd.join("callback-3", NUMBER, callback=True, hold_s=60.0)
    other = make_acd(clock, FakeClock(1.7e9), "a")
    other.load_state(acd.export_state())
    (loaded,) = other.snapshot()["queue"]
    assert loaded["callback"] and other.export_state()["queue"][0]["due"] == entry.due == 1060.0


def test_a_callback_needs_the_outbound_trunk_and_a_key_of_its_own() -> None:
    with pytest.raises(ConfigError, match="outbound_trunk"):
        load_config(overrides={"queue.callback.enabled": True})
    with pytest.raises(ValueError, match="must differ"):
        QueueConfig(overflow_key="3", callback=CallbackConfig(enabled=True))
    with pytest.raises(ValueError, match="regular expression"):
        CallbackConfig(number_pattern="(")
    cfg = CallbackConfig()
    assert cfg.callable_number(NUMBER) and cfg.callable_number("02188776655")
    assert not cfg.callable_number("111") and not cfg.callable_number("anonymous")


def test_a_bad_callback_config_is_refused_naming_the_field(tmp_path: Any) -> None:
    path = tmp_path / "softswitch.yaml"
    path.write_text("queue:\n  callback:\n    enabled: true\n")
    with pytest.raises(ConfigError, match="callback"):
        load_config(path)


# -- the store (both engines) -------------------------------------------------------------------

@pytest.fixture
async def store(store_database: StoreDatabase) -> AsyncIterator[Store]:
    async with open_store(store_database.target, IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as opened:
        yield opened


async def test_a_callback_is_stored_with_its_ids_encrypted_and_one_per_number(
        store: Store, store_database: StoreDatabase) -> None:
    booked = await store.callbacks.book(NUMBER, "h1", None, priority=2, skills=["lang:fa"], language="fa",
                                        caller=CALLER)
    assert (booked.status, booked.attempts, booked.skills, booked.priority) == (PENDING, 0, ("lang:fa",), 2)
    assert booked.caller == CALLER and booked.subject is None and booked.queue_key == f"callback-{booked.id}"
    raw = await store_database.raw("SELECT * FROM callbacks")
    assert NATIONAL_ID not in repr(raw)
    with pytest.raises(Conflict):
        await store.callbacks.book(NUMBER, "h2", None)
    assert await store.callbacks.calling(booked.id) == 1
    await store.callbacks.finish(booked.id, DONE, ANSWERED)
    again = await store.callbacks.book(NUMBER, "h2", None)  # the first is over: the number may have another
    assert [c.id for c in await store.callbacks.open_for("h2")] == [again.id]
    assert await store.callbacks.open_for("h1") == []


# -- the service --------------------------------------------------------------------------------

class FakePlace:
    """Fake of the control process's attempt (the SIP call and its flow): answers per ``outcomes``; an
    answered one is connected to its agent and ended, as the flow would."""

    def __init__(self, acd: Acd, outcomes: list[str]) -> None:
        self.acd = acd
        self.outcomes = outcomes
        self.attempts: list[tuple[int, str, int]] = []
        self.done = asyncio.Event()

    async def __call__(self, callback: Callback, entry: QueueEntry, agent: AgentStatus, attempt: int) -> str:
        self.attempts.append((callback.id, agent.id, attempt))
        outcome = self.outcomes.pop(0)
        if outcome == ANSWERED:
            self.acd.connected(entry, agent.id)
            self.acd.call_ended(agent.id)
        if not self.outcomes:
            self.done.set()
        return outcome


def one_agent_acd() -> Acd:
    accounts = (AgentAccount(id="a", name="A", sip_ha1="0" * 32, console_password="scrypt$x"),)
    acd = Acd(AgentsConfig(accounts=accounts, wrap_up_s=0.0), QueueConfig())
    acd.login("a")
    return acd


def request() -> CallbackRequest:
    return CallbackRequest(NUMBER, 0, (), None, "health", CALLER, None)


async def book(service: CallbackService, acd: Acd) -> QueueEntry:
    entry = await acd.submit("join", key="call-1", caller_number="*******4567")
    assert await service.book(NUMBER, entry, request())
    return entry


async def test_an_answered_callback_is_done_after_one_attempt(store: Store) -> None:
    acd = one_agent_acd()
    place = FakePlace(acd, [ANSWERED])
    service = CallbackService(CallbackConfig(), store, acd, "h1", place, lambda key: None)
    entry = await book(service, acd)
    assert entry.key.startswith("callback-") and entry.callback
    await asyncio.wait_for(place.done.wait(), 5)
    await asyncio.sleep(0.05)
    (stored,) = [await store.callbacks.get(cid) for cid, _, _ in place.attempts]
    assert (stored.status, stored.attempts, stored.outcome) == (DONE, 1, ANSWERED)
    assert service.pending() == 0 and not acd.snapshot()["queue"]
    await service.close()


async def test_a_callback_never_answered_is_tried_again_then_becomes_a_case_saying_so(store: Store) -> None:
    acd = one_agent_acd()
    place = FakePlace(acd, ["no_answer", "busy", "no_answer"])
    counted: list[str] = []
    service = CallbackService(CallbackConfig(attempts=3, retry_after_s=0.05), store, acd, "h1", place,
                              lambda key: None, counted=counted.append)
    await book(service, acd)
    await asyncio.wait_for(place.done.wait(), 5)
    for _ in range(50):
        if service.pending() == 0:
            break
        await asyncio.sleep(0.02)
    assert [attempt for _, _, attempt in place.attempts] == [1, 2, 3]
    (stored,) = {await store.callbacks.get(cid) for cid, _, _ in place.attempts}
    assert (stored.status, stored.outcome) == (UNREACHED, "no_answer") and stored.case_id is not None
    case = await store.get_case_by_id(stored.case_id)
    assert case.national_id_masked is not None and case.status == "received"
    (event,) = [e for e in await store.case_events(case.id) if e.kind == "callback_unreached"]
    assert event.detail["attempts"] == 3 and event.detail["topic"] == "health"
    assert acd.agent("a").state is AgentState.READY and not acd.snapshot()["queue"]
    assert acd.snapshot()["today"]["left_other"] == 1
    assert counted == ["booked", "no_answer", "busy", "no_answer", "unreached"]
    await service.close()


async def test_an_attempt_without_a_worker_is_not_counted(store: Store) -> None:
    acd = one_agent_acd()
    place = FakePlace(acd, [ANSWERED])
    workers = {"up": False}
    service = CallbackService(CallbackConfig(), store, acd, "h1", place, lambda key: None,
                              can_place=lambda: workers["up"])
    await book(service, acd)
    await asyncio.sleep(0.05)
    assert place.attempts == [] and acd.agent("a").state is AgentState.READY
    workers["up"] = True
    await service.close()  # no more attempts now: stored, for the next start


async def test_a_stored_callback_is_queued_again_after_a_restart_and_made(store: Store) -> None:
    first_acd = one_agent_acd()
    first_acd.pause("a")  # nobody to take it before the "restart"
    first = CallbackService(CallbackConfig(), store, first_acd, "h1", FakePlace(first_acd, []), lambda key: None)
    await book(first, first_acd)
    await first.close()
    assert not first_acd.snapshot()["queue"]  # nobody serves it now: it holds no place in a shared queue
    acd = one_agent_acd()
    place = FakePlace(acd, [ANSWERED])
    second = CallbackService(CallbackConfig(), store, acd, "h1", place, lambda key: None)
    assert await second.resume() == 1
    await asyncio.wait_for(place.done.wait(), 5)
    await asyncio.sleep(0.05)
    assert [attempt for _, _, attempt in place.attempts] == [1]
    assert await store.callbacks.open_for("h1") == []
    await second.close()


async def test_a_lost_hosts_callbacks_are_adopted_by_the_survivor_and_made_there(store: Store) -> None:
    lost_acd = one_agent_acd()
    lost_acd.pause("a")
    lost = CallbackService(CallbackConfig(), store, lost_acd, "h1", FakePlace(lost_acd, []), lambda key: None)
    await book(lost, lost_acd)
    await lost.close()  # (a host that died simply stops: its callback stays stored as h1's)
    acd = one_agent_acd()
    place = FakePlace(acd, [ANSWERED])
    survivor = CallbackService(CallbackConfig(), store, acd, "h2", place, lambda key: None)
    assert await survivor.resume() == 0  # none of its own
    assert await survivor.adopt("h1") == 1
    await asyncio.wait_for(place.done.wait(), 5)
    await asyncio.sleep(0.05)
    (stored,) = [await store.callbacks.get(cid) for cid, _, _ in place.attempts]
    assert (stored.host, stored.status) == ("h2", DONE)
    assert await store.callbacks.open_for("h1") == [] and await survivor.adopt("h1") == 0
    await survivor.close()
