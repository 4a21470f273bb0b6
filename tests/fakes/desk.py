"""Test fakes for the web console: a FakeDesk around the real ACD, with scripted calls and cases.

The ACD (``softswitch.domain.acd.Acd``) is the real one: it is pure logic without I/O, so
the console is tested against the agent states and snapshots it will really
get. What the control process would do around it (calls ringing agents,
screen-pops, the case store) is scripted here. Call everything from the event
loop that serves the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softswitch.config import Agency, AgentAccount, AgentsConfig, Config, QueueConfig
from softswitch.domain.acd import Acd, QueueEntry
from softswitch.domain.cases import FiledCase
from softswitch.domain.fanout import Fanout
from softswitch.domain.tracking_code import new_tracking_code
from softswitch.web.console import ReasonRequired
from storage.reports import RatingSummary, rating_summaries

DEFAULTS = Config()


def fake_account(agent_id: str, name: str, supervisor: bool = False) -> AgentAccount:
    """An account whose SIP and console hashes are placeholders: FakeDesk checks passwords itself."""
    return AgentAccount(id=agent_id, name=name, sip_ha1="0" * 32, console_password="scrypt$fake",
                        supervisor=supervisor)


class FakeDesk:
    """Implements softswitch.web.console.Desk over a real Acd; ``calls`` lists what the console asked for."""

    def __init__(self, accounts: Sequence[tuple[AgentAccount, str]], *,
                 agencies: Sequence[Agency] = DEFAULTS.agencies, categories: Sequence[str] = DEFAULTS.categories,
                 wrap_up_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.agencies = tuple(agencies)
        self.categories = tuple(categories)
        self.skill_labels = {"lang:en": "انگلیسی"}
        self.accounts = {account.id: account for account, _ in accounts}
        self.passwords = {account.id: password for account, password in accounts}
        self.acd = Acd(AgentsConfig(accounts=tuple(self.accounts.values()), wrap_up_s=wrap_up_s),
                       QueueConfig(), clock=clock, wall=wall)
        self.calls: list[tuple[Any, ...]] = []
        self.offers: dict[str, dict[str, Any]] = {}  # agent id -> screen-pop of its current call
        self.desk_hosts: dict[str, str] = {}  # agent id -> the other host whose desk holds its call
        self.call_hosts: dict[str, str] = {}  # call key -> the other host whose desk holds it
        self.cases: dict[str, dict[str, Any]] = {}  # tracking code -> case
        self.call_cases: dict[str, str] = {}  # call key -> tracking code
        self.linked: set[str] = set()  # call keys linked to an earlier case as duplicates
        self.recordings: dict[int, Path] = {}
        self.queued: dict[str, tuple[QueueEntry, str]] = {}  # call key -> (entry, agent rung)
        self.subscribers: dict[str, Fanout] = {}
        self.ratings: list[tuple[str | None, int]] = []  # today's survey ratings: (agent id or None, score)
        self.monitors: dict[str, dict[str, Any]] = {}  # supervisor id -> what ControlDesk.monitoring answers
        self.monitor_refusal: str | None = None  # the next monitor() fails with this (Persian) message
        self._forwarder: asyncio.Task[None] | None = None

    # -- the Desk protocol -------------------------------------------------------------

    def verify_agent(self, agent_id: str, password: str) -> bool:
        self.calls.append(("verify_agent", agent_id))
        expected = self.passwords.get(agent_id)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def agent_account(self, agent_id: str) -> AgentAccount | None:
        return self.accounts.get(agent_id)

    def desk_host(self, agent_id: str) -> str | None:
        return self.desk_hosts.get(agent_id)

    def call_desk_host(self, call_key: str) -> str | None:
        return self.call_hosts.get(call_key)

    def current_offer(self, agent_id: str) -> dict[str, Any] | None:
        pop = self.offers.get(agent_id)
        if pop is None:
            return None
        code = self.call_cases.get(pop["call_key"])
        return {**pop, "case": {"tracking_code": code, "duplicate": pop["call_key"] in self.linked} if code else None}

    def subscribe(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        if self._forwarder is None:
            self._forwarder = asyncio.ensure_future(self._forward_agent_events())
        return self.subscribers.setdefault(agent_id, Fanout(1000)).subscribe()

    def unsubscribe(self, agent_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        if agent_id in self.subscribers:
            self.subscribers[agent_id].unsubscribe(q)

    async def file_case(self, agent_id: str, call_key: str, agency_id: str, category: str, summary: str,
                        override_reason: str | None = None) -> FiledCase:
        self.calls.append(("file_case", agent_id, call_key, agency_id, category, summary)
                          + (() if override_reason is None else (override_reason,)))
        self._check_call(agent_id, call_key)
        if agency_id not in {agency.id for agency in self.agencies}:
            raise ValueError("دستگاه انتخاب‌شده معتبر نیست.")
        if category not in self.categories:
            raise ValueError("نوع درخواست معتبر نیست.")
        if not summary.strip():
            raise ValueError("خلاصه درخواست خالی است.")
        # The one duplicate rule, simplified: an open case filed here for the same subject, agency and category.
        pop = self.offers[agent_id]
        subject = pop.get("subject_id") or pop.get("national_id")
        earlier = next((code for code, case in self.cases.items()
                        if subject and case.get("subject") == subject and case.get("agency_id") == agency_id
                        and case.get("category") == category and case["status"] != "closed"), None)
        if earlier is not None and override_reason is None:
            code = earlier
            self.linked.add(call_key)
        else:
            code = new_tracking_code()
            agency = next(a.name for a in self.agencies if a.id == agency_id)
            self.cases[code] = {"tracking_code": code, "created_at": time.time(), "status": "referred",
                                "agency": agency, "category": category, "summary": summary, "subject": subject,
                                "agency_id": agency_id, "override_reason": override_reason}
            self.linked.discard(call_key)
        self.call_cases[call_key] = code
        duplicate = call_key in self.linked
        self.publish(agent_id, {"type": "case_filed", "call_key": call_key, "tracking_code": code,
                                "duplicate": duplicate})
        return FiledCase(code, duplicate)

    async def refer_case(self, agent_id: str, tracking_code: str, agency_id: str) -> str:
        self.calls.append(("refer_case", agent_id, tracking_code, agency_id))
        pop = self.offers.get(agent_id)
        visible = {case["tracking_code"] for case in [*(pop or {}).get("history", ()),
                                                       *(pop or {}).get("subject_history", ())]}
        if pop is not None and pop["call_key"] in self.call_cases:
            visible.add(self.call_cases[pop["call_key"]])
        if tracking_code not in visible:
            raise PermissionError(tracking_code)
        if agency_id not in {agency.id for agency in self.agencies}:
            raise ValueError("دستگاه انتخاب‌شده معتبر نیست.")
        if tracking_code not in self.cases:
            raise LookupError(tracking_code)
        agency = next(a.name for a in self.agencies if a.id == agency_id)
        self.cases[tracking_code].update(agency=agency, agency_id=agency_id, status="referred")
        return tracking_code

    async def attach_case(self, agent_id: str, call_key: str, tracking_code: str, reason: str | None = None) -> str:
        self.calls.append(("attach_case", agent_id, call_key, tracking_code) + (() if reason is None else (reason,)))
        self._check_call(agent_id, call_key)
        if tracking_code not in self.cases:
            raise LookupError(tracking_code)
        # Owned: one of the screen-pop's histories (the caller's and the subject's cases), or filed for either.
        pop = self.offers[agent_id]
        owners = {pop.get("national_id"), pop.get("subject_id")} - {None}
        owned = (tracking_code in {case["tracking_code"] for case in [*pop.get("history", ()),
                                                                       *pop.get("subject_history", ())]}
                 or self.cases[tracking_code].get("subject") in owners)
        if not owned and not (reason or "").strip():
            raise ReasonRequired(tracking_code)
        if not owned:
            self.cases[tracking_code].setdefault("attach_reasons", []).append(reason)
        self.call_cases[call_key] = tracking_code
        self.publish(agent_id, {"type": "case_filed", "call_key": call_key, "tracking_code": tracking_code})
        return tracking_code

    async def transfer(self, agent_id: str, call_key: str, to_agent: str, consult: bool = False) -> None:
        self.calls.append(("transfer", agent_id, call_key, to_agent, consult))
        self._check_call(agent_id, call_key)
        lines = {f"agency:{a.id}" for a in self.agencies if a.phone is not None}
        if (to_agent not in self.accounts and to_agent not in lines) or to_agent == agent_id:
            raise LookupError(to_agent)
        self.publish(agent_id, {"type": "transfer", "call_key": call_key, "state": "ringing", "to": to_agent,
                                "consult": consult})

    async def end_consultation(self, agent_id: str, call_key: str, complete: bool) -> None:
        self.calls.append(("end_consultation", agent_id, call_key, complete))
        self._check_call(agent_id, call_key)

    async def give_tracking_code(self, agent_id: str, call_key: str) -> str:
        self.calls.append(("give_tracking_code", agent_id, call_key))
        self._check_call(agent_id, call_key)
        code = self.call_cases.get(call_key)
        if code is None:
            raise LookupError(call_key)
        self.publish(agent_id, {"type": "tracking_code_read", "call_key": call_key, "tracking_code": code})
        return code

    async def recording_path(self, agent_id: str, recording_id: int) -> Path | None:
        pop = self.offers.get(agent_id)
        if pop is None or recording_id not in [*pop.get("id_audio", ()), *pop.get("subject_id_audio", ())]:
            return None
        return self.recordings.get(recording_id)

    async def ratings_today(self) -> list[RatingSummary]:
        """The real summaries (storage.reports) of the ratings the test gave."""
        return rating_summaries((agent, score, 1) for agent, score in self.ratings)

    def monitoring(self, supervisor_id: str) -> dict[str, Any] | None:
        return self.monitors.get(supervisor_id)

    async def monitor(self, supervisor_id: str, call_key: str, mode: str) -> dict[str, Any]:
        """As ControlDesk's, without phones: a supervisor joins any call an agent is on, at once."""
        self.calls.append(("monitor", supervisor_id, call_key, mode))
        if not self.accounts[supervisor_id].supervisor:
            raise PermissionError(supervisor_id)
        refusal, self.monitor_refusal = self.monitor_refusal, None
        if refusal is not None:
            raise ValueError(refusal)
        agent_id = next((a for a, pop in self.offers.items() if pop["call_key"] == call_key), None)
        if agent_id is None:
            raise LookupError(call_key)
        self.monitors[supervisor_id] = {"call_key": call_key, "agent_id": agent_id, "mode": mode, "state": "joined"}
        return self.monitors[supervisor_id]

    async def stop_monitor(self, supervisor_id: str) -> None:
        self.calls.append(("stop_monitor", supervisor_id))
        if self.monitors.pop(supervisor_id, None) is None:
            raise LookupError(supervisor_id)
        self.publish(supervisor_id, {"type": "monitor", "monitor": None})

    # -- scripting the calls -----------------------------------------------------------

    def publish(self, agent_id: str, event: dict[str, Any]) -> None:
        if agent_id in self.subscribers:
            self.subscribers[agent_id].publish(event)

    def offer(self, agent_id: str, pop: dict[str, Any]) -> None:
        """Show a screen-pop to an agent, without the ACD (whatever the agent's state)."""
        self.offers[agent_id] = pop
        self.publish(agent_id, {"type": "offer", **self.current_offer(agent_id)})  # type: ignore[dict-item]

    async def ring(self, pop: dict[str, Any], caller_number: str = "09121234567") -> str:
        """A caller joins the ACD queue and rings the next agent, who gets the screen-pop; returns the agent id."""
        entry = self.acd.join(pop["call_key"], caller_number)
        status = await self.acd.next_agent(entry)
        self.queued[pop["call_key"]] = (entry, status.id)
        self.offer(status.id, {**pop, "state": "ringing"})
        return status.id

    def answer(self, call_key: str) -> None:
        entry, agent_id = self.queued.pop(call_key)
        self.acd.connected(entry, agent_id)
        self.offers[agent_id]["state"] = "connected"
        self.publish(agent_id, {"type": "connected", "call_key": call_key})

    def hang_up(self, agent_id: str) -> None:
        pop = self.offers.pop(agent_id)
        self.acd.call_ended(agent_id)
        self.publish(agent_id, {"type": "call_ended", "call_key": pop["call_key"]})

    async def close(self) -> None:
        self.acd.close()
        if self._forwarder is not None:
            self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder

    def _check_call(self, agent_id: str, call_key: str) -> None:
        pop = self.offers.get(agent_id)
        if pop is None or pop["call_key"] != call_key:
            raise PermissionError(call_key)

    async def _forward_agent_events(self) -> None:
        """What the control process does: each agent hears of its own state changes."""
        events = self.acd.subscribe()
        try:
            while True:
                event = await events.get()
                if event.get("type") == "agent":
                    self.publish(event["agent"]["id"], event)
        finally:
            self.acd.unsubscribe(events)
