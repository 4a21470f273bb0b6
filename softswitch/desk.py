"""Control process: the agents' desk, between live calls (ivr/live.py) and the web console.

Live mode tells the desk when an agent is offered a call, connected, and done
(``ivr.live.LiveDesk``); the console asks it for the screen-pop and files cases
through it (``softswitch.console.Desk``). It keeps, per agent, the call they are
handling (and, through wrap-up, the one they just handled) so that only that
agent sees the caller's full national ID and spoken-ID audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr.acd import Acd
from ivr.call_flow import Session
from ivr.channel import LiveChannel, RecordingResult
from ivr.recorded_message import read_tracking_code
from softswitch.config import Agency, AgentAccount, Config
from softswitch.credentials import verify_password
from storage.errors import NotFound
from storage.models import Case, PersonId
from storage.store import Store

log = logging.getLogger("softswitch.desk")

SUBSCRIBER_QUEUE = 100
ID_AUDIO_KINDS = {"national_id_utterance": "caller", "subject_id_utterance": "subject"}


@dataclass
class DeskCall:
    """A caller known to the desk: tracked from answer to the end of the agent's handling."""

    key: str
    call_id: int
    caller_number: str
    session: Session
    agent_id: str | None = None
    state: str = "queued"  # queued | ringing | connected | ended
    queued_s: float = 0.0
    channel: LiveChannel | None = None
    case: Case | None = None
    reading: asyncio.Task[None] | None = None
    id_audio: dict[str, list[int]] = field(default_factory=dict)
    pop: dict[str, Any] | None = None  # the screen-pop as last sent

    def current_pop(self) -> dict[str, Any] | None:
        if self.pop is None:
            return None
        return {**self.pop, "state": self.state,
                "case": {"tracking_code": self.case.tracking_code} if self.case else None}


class ControlDesk:
    def __init__(self, config: Config, store: Store, acd: Acd, prompts: Any) -> None:
        self.config = config
        self.store = store
        self.acd = acd
        self.prompts = prompts
        self.agencies: Sequence[Agency] = config.agencies
        self.categories: Sequence[str] = config.categories
        self._accounts = {a.id: a for a in config.agents.accounts}
        self._calls: dict[str, DeskCall] = {}
        self._by_agent: dict[str, DeskCall] = {}
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._acd_events = acd.subscribe()
        self._forwarder = asyncio.ensure_future(self._forward_agent_events())

    async def close(self) -> None:
        self._forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._forwarder
        self.acd.unsubscribe(self._acd_events)

    # -- calls (from the control process) ------------------------------------
    def track(self, key: str, call_id: int, caller_number: str, session: Session) -> None:
        self._calls[key] = DeskCall(key, call_id, caller_number, session)

    def untrack(self, key: str) -> None:
        call = self._calls.pop(key, None)
        if call is not None and call.agent_id is not None and call.state != "ended":
            call.state = "ended"

    # -- ivr.live.LiveDesk ---------------------------------------------------
    async def offer(self, key: str, agent_id: str, queued_s: float) -> None:
        call = self._calls[key]
        call.agent_id, call.state, call.queued_s = agent_id, "ringing", queued_s
        self._by_agent[agent_id] = call
        recordings = await self.store.recordings_for_call(call.call_id)
        call.id_audio = {whose: [r.id for r in recordings if ID_AUDIO_KINDS.get(r.kind) == whose]
                         for whose in ID_AUDIO_KINDS.values()}
        self._publish(agent_id, {"type": "offer", **await self.screen_pop(call)})

    def withdraw(self, key: str, agent_id: str) -> None:
        call = self._calls.get(key)
        if call is not None and self._by_agent.get(agent_id) is call:
            del self._by_agent[agent_id]
            call.agent_id, call.state = None, "queued"
        self._publish(agent_id, {"type": "call_ended", "call_key": key, "reason": "not_answered"})

    def connected(self, key: str, agent_id: str, channel: LiveChannel) -> None:
        call = self._calls[key]
        call.state, call.channel = "connected", channel
        asyncio.ensure_future(self.store.set_call_agent(call.call_id, agent_id))
        self._publish(agent_id, {"type": "connected", "call_key": key})

    async def finished(self, key: str, agent_id: str, conversation: RecordingResult | None) -> None:
        """The conversation is over: keep the tape, and make sure the matter is a case."""
        call = self._calls.get(key)
        if call is None:
            return
        call.state, call.channel = "ended", None
        if conversation is not None:
            await self.store.add_recording(call.call_id, None, conversation.kind, str(conversation.path),
                                           conversation.duration_s, conversation.sha256, conversation.complete)
        if call.case is None:
            # The agent filed nothing during the call: the matter still becomes a case, which
            # the agent completes during wrap-up (or the back office later).
            call.case = await self._new_case(call, "ivr")
        await self.store.attach_recordings(call.call_id, call.case.id)
        self._publish(agent_id, {"type": "call_ended", "call_key": key,
                                 "tracking_code": call.case.tracking_code})

    # -- softswitch.console.Desk ---------------------------------------------
    def verify_agent(self, agent_id: str, password: str) -> bool:
        account = self._accounts.get(agent_id)
        return account is not None and verify_password(password, account.console_password)

    def agent_account(self, agent_id: str) -> AgentAccount | None:
        return self._accounts.get(agent_id)

    def current_offer(self, agent_id: str) -> dict[str, Any] | None:
        call = self._by_agent.get(agent_id)
        return None if call is None else call.current_pop()

    def subscribe(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.setdefault(agent_id, set()).add(queue)
        return queue

    def unsubscribe(self, agent_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.get(agent_id, set()).discard(queue)

    async def file_case(self, agent_id: str, call_key: str, agency_id: str, category: str, summary: str) -> str:
        call = self._agents_call(agent_id, call_key)
        if agency_id not in {a.id for a in self.agencies}:
            raise ValueError("نهاد مسئول معتبر نیست.")
        if category not in self.categories:
            raise ValueError("دسته‌بندی معتبر نیست.")
        summary = summary.strip()
        if not summary:
            raise ValueError("خلاصه درخواست را بنویسید.")
        actor = f"agent:{agent_id}"
        if call.case is None:
            call.case = await self._new_case(call, actor)
            await self.store.attach_recordings(call.call_id, call.case.id)
        call.case = await self.store.file_case(call.case.id, agency_id, category, summary, actor)
        self._publish(agent_id, {"type": "case_filed", "call_key": call_key,
                                 "tracking_code": call.case.tracking_code})
        return call.case.tracking_code

    async def attach_case(self, agent_id: str, call_key: str, tracking_code: str) -> str:
        call = self._agents_call(agent_id, call_key)
        if call.case is not None:
            raise ValueError("برای این تماس پرونده ثبت شده است.")
        try:
            case = await self.store.get_case(tracking_code.strip())
        except NotFound:
            raise LookupError("پرونده‌ای با این کد پیگیری نیست.") from None
        call.case = case
        await self.store.attach_recordings(call.call_id, case.id)
        await self.store.add_case_event(case.id, f"agent:{agent_id}", "contact", call_id=call.call_id)
        self._publish(agent_id, {"type": "case_filed", "call_key": call_key, "tracking_code": case.tracking_code})
        return case.tracking_code

    async def give_tracking_code(self, agent_id: str, call_key: str) -> str:
        """The IVR reads the code to the caller, digit by digit, while the agent stays on the line."""
        call = self._agents_call(agent_id, call_key)
        if call.case is None:
            raise LookupError("ابتدا پرونده را ثبت کنید.")
        channel = call.channel
        if channel is None or call.state != "connected":
            raise ValueError("تماس پایان یافته است.")
        code = call.case.tracking_code
        if call.reading is None or call.reading.done():
            call.reading = asyncio.ensure_future(
                read_tracking_code(channel, self.prompts, code, self.config.ivr.tracking_code_repeats))
        await self.store.add_case_event(call.case.id, f"agent:{agent_id}", "tracking_code_read", call_id=call.call_id)
        self._publish(agent_id, {"type": "tracking_code_read", "call_key": call_key, "tracking_code": code})
        return code

    async def recording_path(self, agent_id: str, recording_id: int) -> Path | None:
        call = self._by_agent.get(agent_id)
        if call is None:
            return None
        try:
            recording = await self.store.get_recording(recording_id)
        except NotFound:
            return None
        return Path(recording.path) if recording.call_id == call.call_id else None

    # -- helpers -------------------------------------------------------------
    def _agents_call(self, agent_id: str, call_key: str) -> DeskCall:
        call = self._by_agent.get(agent_id)
        if call is None or call.key != call_key:
            raise PermissionError("این تماس به شما واگذار نشده است.")
        return call

    async def _new_case(self, call: DeskCall, actor: str) -> Case:
        s = call.session
        nobody = PersonId(None, "none", "none")
        caller = s.caller or nobody
        subject, on_behalf_of = (s.subject, caller) if s.subject is not None else (caller, None)
        return await self.store.create_case(call.call_id, "received", subject.national_id, subject.source,
                                            id_status=subject.status, caller=on_behalf_of, actor=actor)

    async def screen_pop(self, call: DeskCall) -> dict[str, Any]:
        s = call.session
        caller, subject = s.caller, s.subject
        pop = {
            "call_key": call.key, "state": call.state, "caller_number": call.caller_number,
            "national_id": caller.national_id if caller else None,
            "id_status": caller.status if caller else "none",
            "id_audio": call.id_audio.get("caller", []) if not caller or caller.status != "verified" else [],
            "subject_id": subject.national_id if subject else None,
            "subject_id_status": subject.status if subject else None,
            "subject_id_audio": (call.id_audio.get("subject", [])
                                 if subject is not None and subject.status != "verified" else []),
            "history": await self._history(caller),
            "subject_history": await self._history(subject),
            "queued_s": round(call.queued_s, 1),
            "case": {"tracking_code": call.case.tracking_code} if call.case else None,
        }
        call.pop = pop
        return pop

    async def _history(self, person: PersonId | None) -> list[dict[str, Any]]:
        if person is None or person.national_id is None:
            return []
        names = {a.id: a.name for a in self.agencies}
        return [{"tracking_code": c.tracking_code, "created_at": c.created_at, "status": c.status,
                 "agency": names.get(c.agency or "", c.agency), "category": c.category, "summary": c.summary}
                for c in reversed(await self.store.cases_for_national_id(person.national_id))]

    def _publish(self, agent_id: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(agent_id, ()):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def _forward_agent_events(self) -> None:
        """The ACD's agent-state changes reach that agent's console too."""
        while True:
            event = await self._acd_events.get()
            agent = event.get("agent")
            if event.get("type") == "agent" and isinstance(agent, dict) and "id" in agent:
                self._publish(str(agent["id"]), event)
