"""IVR layer: live mode: wait in the queue (hold music, position, estimated wait), ring an agent, bridge.

The queue itself (who is next, which agent, the rules for offering a recorded
message instead) is ``softswitch.domain.acd.Acd``, shared by every call of every media worker;
this module is one caller's side of it. The caller hears hold music and, every
``announce_every_s``, their position and estimated wait. When the queue is
busy (estimated wait too long, or waited past the maximum) the announcement
offers the recorded message: pressing ``overflow_key`` leaves the queue for the
message flow, keeping the captured ID; with ``queue.callback`` on it also
offers a callback: pressing its key books one (ivr/callback.py asks which
number) and the caller's entry stays where it was, the callback's now, while
the caller hangs up. When that entry's turn comes the control process calls
the caller and ``LiveCall.call_back`` takes the call on from the agent it
was offered. An agent is rung through the SIP front
from the caller's own media worker; one who does not answer within the ring
timeout is paused and the next agent is tried. Once answered, caller and agent
are bridged and the conversation (both parties) is recorded on one tape.
The agent may hand the call on (``Transfer``, from the console or its phone's
REFER): to a colleague, back to the queue, or to an agency's line, at once or
after consulting them while the caller holds; the tape goes on with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ivr.channel import CallEnded, Leg, LiveChannel, RecordingResult
from ivr.callback import callback_number
from softswitch.config import IvrConfig, QueueConfig
from softswitch.domain.acd import Acd, AgentStatus, QueueEntry, mask_number
from softswitch.domain.tracking_code import code_tail
from softswitch.domain.transfers import TO_QUEUE, agency_line
from storage.models import PersonId

log = logging.getLogger("ivr.live")

CONVERSATION_MAX_S = 4 * 3600.0  # a bound for the tape, far beyond any conversation
# How a leg's end says its far end was lost (no RTP, a session refresh unanswered).
LEG_LOST = 408
# A caller sent back to the queue goes ahead of every waiting caller (repeat callers' priorities are 0..9).
REQUEUE_PRIORITY = 10


def _now() -> float:
    """The event loop's clock: time.monotonic in service, virtual time in the dialogue tests."""
    return asyncio.get_running_loop().time()


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...

    def cardinal(self, n: int) -> list[Path]: ...

    def number(self, digits: str) -> list[Path]: ...

    def has_own(self, name: str) -> bool: ...


@dataclass(frozen=True)
class CallbackRequest:
    """What a callback keeps of the call that asked for it: whom to file the matter under, what the queue
    entry needs (its priority, skills), the language the caller chose and the agency of their topic."""

    caller_number: str  # the caller ID (personal data)
    priority: int
    skills: tuple[str, ...]
    language: str | None
    topic: str | None
    caller: PersonId | None
    subject: PersonId | None


class CallbackBooking(Protocol):
    async def book(self, number: str, entry: QueueEntry, request: CallbackRequest) -> bool:
        """Store a callback to ``number`` and hand it the caller's queue entry (its place); False when the
        number has a callback already."""
        ...


@dataclass(frozen=True)
class Transfer:
    """What an agent asks of the call it talks on. ``hand``: ring ``to`` while the caller stays with the
    agent, and put the caller through once it answers. ``consult``: once ``to`` answers, the agent talks
    with it while the caller holds, until the agent asks ``complete`` (the caller is put through; hanging
    up does the same) or ``cancel`` (back to the caller; so does ``to`` hanging up). ``to``: an agent id,
    TO_QUEUE (hand only), or an agency's line (``agency_line``), whose ``number`` is dialled through the front
    (which sends a number out to the trunk). ``leg``: dialled already (the agent's phone REFERred the call)."""

    action: Literal["hand", "consult", "complete", "cancel"]
    to: str = ""
    number: str | None = None
    leg: Leg | None = field(default=None, compare=False)

    @property
    def agent(self) -> str | None:
        """The agent the call goes to (reserved in the ACD while rung), or None for a number."""
        return None if self.number is not None else self.to


class LiveDesk(Protocol):
    """What live mode tells the agents' side (the console) of the control process."""

    async def offer(self, key: str, agent_id: str, queued_s: float) -> None: ...

    def withdraw(self, key: str, agent_id: str) -> None: ...

    def connected(self, key: str, agent_id: str, channel: LiveChannel, leg: Leg,
                  transfer: Callable[[Transfer], None]) -> None:
        """The agent answered; ``transfer(ask)`` asks for the call to be handed on (``Transfer``)."""

    async def transfer_ringing(self, key: str, from_agent: str, to: str, consult: bool) -> None:
        """The agent (or agency) the call is handed to is being rung (an agent gets its screen-pop)."""

    def consulting(self, key: str, from_agent: str, to: str) -> None:
        """``to`` answered a consultation: it talks with the agent while the caller holds."""

    async def transfer_done(self, key: str, from_agent: str, to: str, leg: Leg) -> None:
        """The other agent (or agency) talks with the caller now; the first agent's leg is ended."""

    def transfer_failed(self, key: str, from_agent: str, to: str, reason: str) -> None:
        """The call stays with ``from_agent``: the other one was not ready, did not answer, was not reached,
        or the consultation ended without the caller being put through (``cancelled``)."""

    async def finished(self, key: str, agent_id: str | None, conversation: RecordingResult | None) -> str | None:
        """Keep the tape and make sure the matter is a case; its tracking code. ``agent_id`` None: the call
        ended with an agency's number (the agent who handed it over was told then)."""
        ...


@dataclass
class LiveResult:
    # handled | to_message | agent_lost (the agent's phone died mid-call) | callback (booked: the caller may
    # hang up) | requeued (sent back to the queue: only within LiveCall, which queues the caller again)
    outcome: str
    agent_id: str | None = None
    conversation: RecordingResult | None = None
    tracking_code: str | None = None  # the case the conversation became (told to the caller after agent_lost)


@dataclass
class LiveService:
    acd: Acd
    desk: LiveDesk
    queue: QueueConfig
    ring_timeout_s: float
    agent_uri: Callable[[str], str]
    host: str = ""  # this host's cluster name: whose calls a replicated queue's entries are
    callbacks: CallbackBooking | None = None  # with queue.callback enabled
    agency_lines: Mapping[str, str] = field(default_factory=dict)  # agencies' phone numbers -> their ids
    ivr: IvrConfig = field(default_factory=IvrConfig)  # menu attempts and timeouts of the callback's number step


def wait_prompts(prompts: Prompts, position: int, estimate_s: float, offer: bool,
                 offer_callback: bool = False) -> list[Path]:
    """'You are number N in the queue; estimated wait about M minutes' (+ the recorded-message offer,
    + the callback's)."""
    files = [prompts.path("queue_position"), *prompts.cardinal(position), prompts.path("queue_in_line")]
    minutes = math.ceil(estimate_s / 60)
    if minutes <= 1:
        files.append(prompts.path("queue_wait_under_minute"))
    else:
        files += [prompts.path("queue_wait_about"), *prompts.cardinal(minutes), prompts.path("minutes")]
    if offer:
        files.append(prompts.path("queue_offer_message"))
        if offer_callback:
            files.append(prompts.path("queue_offer_callback"))
    return files


class _Player:
    """Plays hold music or announcements until a digit, another event or a timeout comes first."""

    def __init__(self, channel: LiveChannel) -> None:
        self.channel = channel
        self.pending_digit: str | None = None

    async def play_until(self, files: list[Path], other: asyncio.Future[Any] | None,
                         timeout_s: float | None) -> None:
        play = asyncio.ensure_future(self.channel.play(files))
        digit = asyncio.ensure_future(self.channel.next_digit(None))
        waits: list[asyncio.Future[Any]] = [play, digit] + ([other] if other is not None else [])
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if play in done:
                play.result()  # raises CallEnded once the call is gone
                return
            await self.channel.stop_play()
            with contextlib.suppress(CallEnded):
                await play  # settles when the worker confirms the stop
        finally:
            # A digit that came as the wait ended (even while stopping the play) is
            # already off the channel's queue: keep it, or the key press is lost.
            if digit.done() and not digit.cancelled() and digit.exception() is None:
                self.pending_digit = self.pending_digit or digit.result()
            digit.cancel()
            if not play.done():
                play.cancel()

    def take_digit(self) -> str | None:
        digit, self.pending_digit = self.pending_digit, None
        return digit


class LiveCall:
    """One caller's way through the queue to an agent."""

    def __init__(self, channel: LiveChannel, prompts: Prompts, live: LiveService, key: str) -> None:
        self.channel = channel
        self.prompts = prompts
        self.live = live
        self.key = key
        self.entry: QueueEntry | None = None  # set while the caller is in the queue
        self.player = _Player(channel)
        self._transfers: asyncio.Queue[Transfer] = asyncio.Queue()  # what the agent asks of the call
        self.callback: CallbackRequest | None = None  # while the caller may book a callback: what it keeps

    async def run(self, caller_number: str, skills: Sequence[str] = (), priority: int = 0,
                  callback: CallbackRequest | None = None) -> LiveResult:
        """Queue the caller, connect them to an agent and return when the conversation is over.
        ``skills``: what the agent should have (the caller's language), preferred for a while (the ACD's);
        ``priority``: queued ahead of callers of a lower one; ``callback``: what a callback would keep, when
        the caller may book one (outcome "callback": booked, the caller's entry is the callback's)."""
        acd = self.live.acd
        reason = acd.overflow_reason(None)
        if reason in ("queue_full", "no_agents"):
            log.info("queue refused (%s)", reason, extra={"event": "queue_refused", "reason": reason})
            await self.channel.play([self.prompts.path("live_unavailable")])
            return LiveResult("to_message")
        # The queue (replicated: every host's database rows) keeps only the masked number it shows.
        joining = {"key": self.key, "caller_number": mask_number(caller_number), "host": self.live.host,
                   "skills": sorted(skills)}
        self.callback = callback if self.live.callbacks is not None and self.live.queue.callback.enabled else None
        self.entry = await acd.submit("join", **joining, priority=priority)
        return await self._until_done(joining)

    async def call_back(self, entry: QueueEntry, agent: AgentStatus) -> LiveResult:
        """A callback's call, answered by the caller: ring the agent its entry was offered, then on as for
        any caller (waiting again in its place when that agent does not answer)."""
        self.entry, self.callback = entry, None
        joining = {"key": entry.key, "caller_number": entry.caller_number, "host": entry.host,
                   "skills": sorted(entry.skills)}
        return await self._until_done(joining, agent)

    async def _until_done(self, joining: dict[str, Any], agent: AgentStatus | None = None) -> LiveResult:
        acd = self.live.acd
        try:
            while (result := await self._wait(agent)).outcome == "requeued":
                # An agent sent the caller back: at the head of the queue, its conversation a case already.
                agent = None
                self.entry = await acd.submit("join", **joining, priority=REQUEUE_PRIORITY, again=True)
            return result
        except CallEnded:
            await self._leave("abandoned")
            raise
        finally:
            await self._leave("error")

    async def _leave(self, reason: str) -> None:
        if self.entry is not None:
            entry, self.entry = self.entry, None
            await self.live.acd.submit("leave", key=entry.key, reason=reason)

    async def _wait(self, offered: AgentStatus | None = None) -> LiveResult:
        """Wait for an agent (first ring ``offered``, already reserved for this entry) and talk with it."""
        acd, cfg = self.live.acd, self.live.queue
        assert self.entry is not None
        entry = self.entry
        self.channel.clear_digits()
        if offered is not None and (result := await self._ring(entry, offered)) is not None:
            return result
        await self.channel.play([self.prompts.path("queue_please_wait")])
        next_announce = 0.0
        agent_task: asyncio.Future[AgentStatus] | None = None
        try:
            while True:
                if agent_task is None:
                    agent_task = asyncio.ensure_future(acd.next_agent(entry))
                now = _now()
                if not agent_task.done() and now >= next_announce:
                    next_announce = now + cfg.announce_every_s
                    files = wait_prompts(self.prompts, acd.position(entry), acd.estimated_wait_s(entry),
                                         offer=acd.overflow_reason(entry) is not None,
                                         offer_callback=self.callback is not None)
                    await self.player.play_until(files, agent_task, timeout_s=None)
                elif not agent_task.done():
                    await self.player.play_until([self.prompts.path("hold_music")], agent_task,
                                                 timeout_s=max(0.1, next_announce - _now()))
                digit = self.player.take_digit()
                if digit == cfg.overflow_key:
                    await self._leave("to_message")
                    return LiveResult("to_message")
                if (digit == cfg.callback.key and self.callback is not None and not agent_task.done()
                        and acd.overflow_reason(entry) is not None):
                    if await self._book_callback(entry, agent_task):
                        return LiveResult("callback")
                    next_announce = _now() + cfg.announce_every_s
                    if agent_task.cancelled():
                        agent_task = None  # waited for again from the top
                        continue
                if agent_task.done():
                    agent = agent_task.result()
                    agent_task = None
                    result = await self._ring(entry, agent)
                    if result is not None:
                        return result
        finally:
            if agent_task is not None:
                agent_task.cancel()

    async def _book_callback(self, entry: QueueEntry, agent_task: asyncio.Future[AgentStatus]) -> bool:
        """The caller asked to be called back: ask the number while the entry still waits for an agent.
        True once booked (the entry is the callback's); False to go on waiting (no number, one booked for
        that number already, or an agent came free meanwhile, who is rung at once)."""
        assert self.callback is not None and self.live.callbacks is not None
        number = await callback_number(self.channel, self.prompts, self.live.queue.callback, self.live.ivr,
                                       self.callback.caller_number)
        if number is None or agent_task.done():
            return False
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task
        if not await self.live.callbacks.book(number, entry, self.callback):
            log.info("callback not booked: the number has one already", extra={"event": "callback_refused"})
            await self.channel.play([self.prompts.path("callback_already_booked")])
            return False
        self.entry = None  # the callback's now: this call no longer leaves it
        return True

    async def _ring(self, entry: QueueEntry, agent: AgentStatus) -> LiveResult | None:
        """Ring one agent while the caller hears hold music; None when the agent was not reached."""
        live = self.live
        await live.desk.offer(self.key, agent.id, _now() - entry.joined)
        leg = self.channel.dial(live.agent_uri(agent.id))
        answered = asyncio.ensure_future(leg.wait_answered(live.ring_timeout_s))
        try:
            while not answered.done():
                await self.player.play_until([self.prompts.path("hold_music")], answered, timeout_s=None)
            reached = answered.result()
        except BaseException:
            answered.cancel()
            await _drop(leg)
            live.desk.withdraw(self.key, agent.id)
            raise
        if not reached:
            await _drop(leg)
            live.desk.withdraw(self.key, agent.id)
            if leg.end_status == 503:  # our worker had no slot for the leg: not the agent's fault
                await live.acd.submit("dial_failed", key=entry.key, agent_id=agent.id)
            else:
                log.info("agent %s did not answer (%s)", agent.id, leg.end_status or "timeout",
                         extra={"event": "agent_no_answer", "agent": agent.id})
                await live.acd.submit("no_answer", key=entry.key, agent_id=agent.id)
            return None
        await live.acd.submit("connected", key=entry.key, agent_id=agent.id)
        self.entry = None
        return await self._converse(agent.id, leg)

    async def _converse(self, agent_id: str, leg: Leg) -> LiveResult:
        """Caller and agent talk (one tape) until either hangs up, handing the call on as the agent asks.
        After a hand-over to an agency's number the call has no agent (``party`` None) but goes on."""
        live, channel = self.live, self.channel
        party: str | None = agent_id  # the agent on the call now
        conversation: RecordingResult | None = None
        tracking_code: str | None = None
        requeued = False
        try:
            channel.bridge(leg)
            log.info("bridged to agent %s", agent_id, extra={"event": "bridged", "agent": agent_id})
            live.desk.connected(self.key, agent_id, channel, leg, self._transfers.put_nowait)
            tape = asyncio.ensure_future(channel.record_conversation(leg, CONVERSATION_MAX_S))
            caller_gone = asyncio.ensure_future(channel.wait_ended())
            while True:
                party_gone = asyncio.ensure_future(leg.wait_ended())
                asked = asyncio.ensure_future(self._transfers.get())
                referred = asyncio.ensure_future(leg.wait_referred())
                await asyncio.wait([caller_gone, party_gone, tape, asked, referred],
                                   return_when=asyncio.FIRST_COMPLETED)
                party_gone.cancel()
                if referred.done():
                    if asked.done():
                        self._transfers.put_nowait(asked.result())  # asked of the console: next
                    ask = self._referred_to(*referred.result())
                elif asked.done():
                    referred.cancel()
                    ask = asked.result()
                else:
                    asked.cancel()
                    referred.cancel()
                    break
                if party is None or ask.action not in ("hand", "consult"):
                    if ask.leg is not None:
                        await _drop(ask.leg)  # a REFER from an agency's line: not ours to follow
                    continue  # (or a consultation's last word, come after it was over)
                if ask.to == TO_QUEUE:
                    requeued = not channel.ended
                    break
                taken = await self._transfer(party, leg, ask)
                if taken is not None:
                    old = leg
                    agent_id = party  # the last agent who talked with the caller
                    party, leg = taken
                    await _drop(old)
            caller_gone.cancel()
            if not tape.done():
                await channel.stop_record()
            conversation = await tape
        finally:
            # Either side hanging up ends the other leg.
            await _drop(leg)
            if party is not None:
                agent_id = party
                await live.acd.submit("call_ended", agent_id=party)
            tracking_code = await live.desk.finished(self.key, party, conversation)
            log.info("conversation with %s over, ended on the %s leg%s",
                     f"agent {party}" if party else "an agency", "caller's" if channel.ended else "other",
                     f"; its case is {code_tail(tracking_code)}" if tracking_code else "",
                     extra={"event": "bridge_end", "agent": party,
                            "tracking_code_tail": code_tail(tracking_code) if tracking_code else None})
        if leg.end_status == LEG_LOST and not channel.ended:
            # The agent's (or agency's) phone went silent or its session timer ran out: no hang-up
            # of theirs. The caller is told, and keeps the case the call became.
            log.warning("lost %s mid-call", f"agent {party}" if party else "the agency",
                        extra={"event": "agent_lost", "agent": party})
            if party is not None:
                with contextlib.suppress(ValueError):
                    await live.acd.submit("pause", agent_id=party, reason="agent_lost")
            return LiveResult("agent_lost", agent_id, conversation, tracking_code)
        if requeued and not channel.ended:
            log.info("agent %s sent the caller back to the queue", agent_id,
                     extra={"event": "requeued", "agent": agent_id})
            return LiveResult("requeued", agent_id, conversation, tracking_code)
        return LiveResult("handled", agent_id, conversation, tracking_code)

    def _referred_to(self, user: str, new: Leg) -> Transfer:
        """What the agent's phone asked with its REFER (to an agent or an agency's line; the worker refuses
        anyone else): handing the call over, on the leg the worker dials already."""
        agency = self.live.agency_lines.get(user)
        if agency is not None:
            return Transfer("hand", agency_line(agency), user, leg=new)
        return Transfer("hand", user, leg=new)

    async def _transfer(self, from_agent: str, leg: Leg, ask: Transfer) -> tuple[str | None, Leg] | None:
        """Ring ``ask.to`` while the caller stays with ``from_agent`` (a consultation: then they talk while
        the caller holds); once the caller is put through to it (the tape goes on), (the agent or None for
        an agency, its leg) is returned. None: the call stays as it was. A first agent who hangs up
        meanwhile leaves the caller to the other one, on hold music."""
        live, to, agent = self.live, ask.to, ask.agent
        if agent is not None and await live.acd.submit("transfer_offer", agent_id=agent, call_key=self.key,
                                                       host=live.host) is None:
            if ask.leg is not None:
                await _drop(ask.leg)
            live.desk.transfer_failed(self.key, from_agent, to, "not_ready")
            return None
        consult = ask.action == "consult"
        await live.desk.transfer_ringing(self.key, from_agent, to, consult)
        new = ask.leg if ask.leg is not None else self.channel.dial(live.agent_uri(ask.number or to))
        try:
            rung = await self._ring_other(leg, new)
            picked_up, reason = rung is True, "cancelled"
            if picked_up and consult and not leg.ended and not self.channel.ended:
                if agent is not None:
                    await live.acd.submit("transfer_consulting", agent_id=agent)
                picked_up = await self._consult(from_agent, leg, to, new)
                if not picked_up and not leg.ended and not self.channel.ended:
                    self.channel.bridge(leg)  # back to the agent
            elif not picked_up:
                # Rang out (or refused): the agent's doing, as with a queued caller; a 503 is our worker's.
                reason = "no_answer" if rung is False and new.end_status != 503 else "not_reached"
        except BaseException:
            await _drop(new)
            if agent is not None:
                with contextlib.suppress(Exception):
                    await live.acd.submit("transfer_unanswered", agent_id=agent, no_answer=False)
            live.desk.transfer_failed(self.key, from_agent, to, "not_reached")
            raise
        if not picked_up or self.channel.ended:
            await _drop(new)
            if agent is not None:
                await live.acd.submit("transfer_unanswered", agent_id=agent, no_answer=reason == "no_answer")
            live.desk.transfer_failed(self.key, from_agent, to, reason)
            return None
        self.channel.bridge(new)
        if agent is not None:
            await live.acd.submit("transfer_answered", agent_id=agent, from_agent=from_agent)
        else:
            await live.acd.submit("call_ended", agent_id=from_agent)  # its wrap-up: the call goes on without it
        await live.desk.transfer_done(self.key, from_agent, to, new)
        log.info("handed from agent %s to %s", from_agent, to,
                 extra={"event": "transferred", "agent": agent, "from_agent": from_agent, "to": to})
        return agent, new

    async def _ring_other(self, leg: Leg, new: Leg) -> bool | None:
        """Wait for ``new`` to answer while the caller talks on ``leg`` (on hold music once it hangs up).
        True: answered; False: rang out or refused; None: the caller hung up first."""
        answered = asyncio.ensure_future(new.wait_answered(self.live.ring_timeout_s))
        caller_gone, first_gone = asyncio.ensure_future(self.channel.wait_ended()), asyncio.ensure_future(leg.wait_ended())
        try:
            await asyncio.wait([answered, caller_gone, first_gone], return_when=asyncio.FIRST_COMPLETED)
            while first_gone.done() and not answered.done() and not caller_gone.done():
                await self.player.play_until([self.prompts.path("hold_music")], answered, timeout_s=None)
        finally:
            caller_gone.cancel()
            first_gone.cancel()
            if not answered.done():
                answered.cancel()
        return answered.result() if answered.done() and not answered.cancelled() else None

    async def _consult(self, from_agent: str, leg: Leg, to: str, new: Leg) -> bool:
        """The agent and ``to`` talk while the caller holds (hold music; the tape hears all of it). True:
        put the caller through (the agent completed the transfer or hung up); False: ``to`` hung up, or
        the agent cancelled."""
        leg.bridge(new)
        self.live.desk.consulting(self.key, from_agent, to)
        while True:
            asked = asyncio.ensure_future(self._transfers.get())
            ends = [asyncio.ensure_future(one.wait_ended()) for one in (self.channel, leg, new)]
            over = asyncio.ensure_future(asyncio.wait([asked, *ends], return_when=asyncio.FIRST_COMPLETED))
            try:
                while not over.done():
                    await self.player.play_until([self.prompts.path("hold_music")], over, timeout_s=None)
            finally:
                for waiting in (over, *ends):
                    waiting.cancel()
                if not asked.done():
                    asked.cancel()
            if self.channel.ended or new.ended:
                return False
            if leg.ended:
                return True
            if asked.result().action in ("complete", "cancel"):
                return asked.result().action == "complete"


async def _drop(leg: Leg) -> None:
    if not leg.ended:
        await leg.hangup()
