"""The live queue and agent states (ACD): pure asyncio logic without I/O.

The live flow joins callers to one FIFO queue and asks ``next_agent`` for an
agent to ring; the console logs agents in, pauses them and watches
``snapshot()`` and the events of ``subscribe()``. Nothing here touches SIP,
audio or the store: the flow reports what happened (``connected``,
``no_answer``, ``dial_failed``, ``call_ended``, ``leave``) and the ACD keeps the
states, the routing and the day's figures.

Choices worth knowing:

- Routing: agents are offered to callers in queue order. A caller may take an
  agent once no caller ahead of it that could take the same agent is waiting
  to be offered one, so a second READY agent is not left idle while the first
  caller's agent rings; the caller at the head always gets the next agent
  first. Among READY agents the one idle longest (smallest ``idle_since``) is
  picked; ties go to the order of ``agents.accounts``.
- Skills: a caller may need skills (``join(skills=...)``: the language and
  the topic they chose) and an agent has skills (``skills`` at construction). A caller takes
  only an agent with every skill it needs until it has waited
  ``queue.skill_wait_s``, then any agent: nobody waits for ever for a skill no
  one on duty has, and a caller needing a skill nobody ahead of it can serve
  does not wait behind callers who need another.
- Priorities: a caller joins with a priority (``join(priority=...)``, 0 by
  default; e.g. a repeat caller whose case is still open) and is queued ahead
  of every caller of a lower priority, behind those of its own or higher.
- ``dial_failed``: the agent goes back to READY with its ``idle_since`` kept
  and is remembered as tried by that caller, who gets the other READY agents
  first. When every READY agent has been tried, the tried set is cleared
  ``dial_retry_s`` after the last failure, so one unreachable phone is not
  redialled in a tight loop. Callers behind wait meanwhile (order is kept).
- Estimated wait: mean handling time of the last ``handle_time_samples``
  calls (``default_handle_time_s`` before any) × callers ahead ÷ staffed
  agents (logged in and not paused, at least 1). No credit is taken for the
  time agents have already spent on their current calls, and the head of the
  queue is estimated at 0 s.
- Changes go through ``submit(name, **args)``: here it applies the change at
  once. A replicated ACD (``softswitch.control.shared_acd``) first orders each
  change through the database and every host applies the same changes in the
  same order, each at the time the database gave it, so that every host holds
  the same queue and agent states. The changes are the methods named in
  ``CHANGES``, with queue entries named by their call's key; each one's checks
  depend only on the state, so a change refused on one host is refused on all.
- Callbacks: a waiting caller who asks to be called back keeps its entry and
  its place (``to_callback``, under the callback's key); the softswitch takes
  the agent it is offered and calls the caller. A callback not answered frees
  its agent at once (READY, idle time kept) and is not offered another until
  its next attempt is due (``callback_missed``); meanwhile it holds back no one
  behind it. A callback never goes ahead of a caller who was queued before it.
- The day's figures are counted by the local date (``tz``) of the moment a
  thing happens and start again at local midnight. Each thing counted is a
  ``DayFact`` handed to ``journal`` as it is counted; ``restore`` replays the
  stored facts at start, so a restart mid-day shows the figures it had.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from collections.abc import Sequence
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from softswitch.domain.fanout import Fanout



class AgentEntry(Protocol):
    """One configured agent (softswitch.config.AgentAccount)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


class AgentsSettings(Protocol):
    """What the ACD reads of the agents' settings (softswitch.config.AgentsConfig)."""

    @property
    def accounts(self) -> Sequence[AgentEntry]: ...

    @property
    def wrap_up_s(self) -> float: ...


class QueueSettings(Protocol):
    """What the ACD reads of the queue's settings (softswitch.config.QueueConfig)."""

    @property
    def max_length(self) -> int: ...

    @property
    def max_wait_s(self) -> float: ...

    @property
    def max_estimated_wait_s(self) -> float: ...

    @property
    def handle_time_samples(self) -> int: ...

    @property
    def default_handle_time_s(self) -> float: ...

    @property
    def service_level_s(self) -> float: ...

    @property
    def skill_wait_s(self) -> float: ...

log = logging.getLogger("ivr.acd")

TEHRAN = ZoneInfo("Asia/Tehran")
SUBSCRIBER_QUEUE_SIZE = 256


class AgentState(str, enum.Enum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    RINGING = "ringing"  # reserved for one caller, being offered the call
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    PAUSED = "paused"


# The only state changes there are; _set_state refuses any other.
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    AgentState.LOGGED_OUT: frozenset({AgentState.READY}),
    AgentState.READY: frozenset({AgentState.RINGING, AgentState.PAUSED, AgentState.LOGGED_OUT}),
    AgentState.RINGING: frozenset({AgentState.ON_CALL, AgentState.READY, AgentState.PAUSED}),
    AgentState.ON_CALL: frozenset({AgentState.WRAP_UP, AgentState.READY, AgentState.PAUSED}),
    AgentState.WRAP_UP: frozenset({AgentState.READY, AgentState.PAUSED, AgentState.LOGGED_OUT}),
    AgentState.PAUSED: frozenset({AgentState.READY, AgentState.LOGGED_OUT}),
}
NOT_REGISTERED = "not_registered"  # the pause of an agent whose phone the front does not know
STAFFED = frozenset({AgentState.READY, AgentState.RINGING, AgentState.ON_CALL, AgentState.WRAP_UP})


# What ``submit`` and ``apply`` accept: the changes of state, by method name. Those in
# ``ENTRY_CHANGES`` name their queue entry by its ``key``.
CHANGES = frozenset({"login", "logout", "set_ready", "pause", "set_registered", "join", "offer", "no_answer",
                     "dial_failed", "connected", "call_ended", "end_wrap_up", "leave", "count_recorded",
                     "host_lost", "transfer_offer", "transfer_consulting", "transfer_answered", "transfer_unanswered",
                     "to_callback", "callback_missed"})
ENTRY_CHANGES = frozenset({"offer", "no_answer", "dial_failed", "connected", "leave", "to_callback",
                           "callback_missed"})


class NotQueued(LookupError):
    """The entry is not (or no longer) in the queue: it was connected or left."""


@dataclass
class AgentStatus:
    id: str
    name: str
    state: AgentState = AgentState.LOGGED_OUT
    since_wall: float = 0.0  # wall time the agent entered ``state``
    idle_since: float = 0.0  # monotonic; when it last became READY (longest idle is offered first)
    pause_reason: str | None = None  # "manual", "no_answer", ... while PAUSED
    pause_requested: str | None = None  # pause reason to apply when the current call ends
    call_key: str | None = None  # the call it is ringing for or on
    answered_today: int = 0
    # Whether the SIP front has a live registration of the agent's phone; None
    # until it has been asked (then the agent is taken to be reachable).
    registered: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "state": self.state.value, "since_wall": self.since_wall,
            "pause_reason": self.pause_reason, "pause_requested": self.pause_requested,
            "call_key": self.call_key, "answered_today": self.answered_today, "registered": self.registered,
        }


@dataclass(eq=False)
class QueueEntry:
    key: str  # the call's key
    caller_number: str  # personal data: shown masked, never logged
    joined: float  # monotonic
    joined_wall: float
    offered_to: str | None = None  # agent being rung for this caller
    tried: set[str] = field(default_factory=set)  # agents whose dial failed for this caller
    last_dial_failure: float = 0.0  # monotonic
    host: str = ""  # the host whose media worker holds the call (a replicated ACD's)
    skills: frozenset[str] = frozenset()  # what its agent should have: preferred until queue.skill_wait_s
    priority: int = 0  # queued ahead of every caller of a lower one
    requeued: bool = False  # sent back by an agent: counted in the day's figures once already
    callback: bool = False  # the caller asked to be called back: the softswitch calls them when it is their turn
    due: float = 0.0  # not offered an agent before this time (a callback's next attempt); callers behind go first


@dataclass
class _Agent:
    status: AgentStatus
    since: float = 0.0  # monotonic twin of status.since_wall
    connected_at: float = 0.0  # monotonic; start of the current call, for its handling time
    wrap_up: asyncio.TimerHandle | None = None
    call_host: str = ""  # the host of the call it rings for, talks on or wraps up


@dataclass(frozen=True, slots=True)
class DayFact:
    """One thing the day's figures count, as it happened: what the ACD journals and a restart replays."""

    kind: str  # offered | answered | left | handled | recorded
    at: float  # wall time
    agent_id: str | None = None  # answered, handled: the agent
    seconds: float | None = None  # answered: the caller's wait; handled: the handling time
    reason: str | None = None  # left: abandoned | to_message | another reason


@dataclass
class _Day:
    """The figures of one local day."""

    day: date
    offered: int = 0
    answered: int = 0
    answered_in_time: int = 0
    abandoned: int = 0
    to_message: int = 0
    left_other: int = 0
    recorded: int = 0
    handled: int = 0
    handle_total_s: float = 0.0
    per_hour: list[int] = field(default_factory=lambda: [0] * 24)

    def count(self, fact: DayFact, hour: int, service_level_s: float) -> None:
        """Add one fact; ``hour`` is the local hour it happened in."""
        seconds = fact.seconds or 0.0
        match fact.kind:
            case "offered":
                self.offered += 1
                self.per_hour[hour] += 1
            case "answered":
                self.answered += 1
                if seconds <= service_level_s:
                    self.answered_in_time += 1
            case "left" if fact.reason == "abandoned":
                self.abandoned += 1
            case "left" if fact.reason == "to_message":
                self.to_message += 1
            case "left":
                self.left_other += 1
            case "handled":
                self.handled += 1
                self.handle_total_s += seconds
            case "recorded":
                self.recorded += 1
            case _:
                raise ValueError(f"no day figure counts {fact.kind!r}")


# What export_state keeps of an agent's status (beside its state) and of a queue entry (beside its tried set).
_STATUS_FIELDS = ("since_wall", "idle_since", "pause_reason", "pause_requested", "call_key", "answered_today",
                  "registered")
_ENTRY_FIELDS = ("key", "caller_number", "joined", "joined_wall", "offered_to", "last_dial_failure", "host",
                 "priority", "requeued", "callback", "due")


def mask_number(number: str) -> str:
    """Every character but the last four replaced by ``*``; four or fewer are hidden entirely."""
    if len(number) <= 4:
        return "*" * len(number)
    return "*" * (len(number) - 4) + number[-4:]


class Acd:
    """One queue and its agents. Single-threaded: call it from the event loop only."""

    def __init__(self, agents: AgentsSettings, queue: QueueSettings, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 tz: tzinfo = TEHRAN, dial_retry_s: float = 5.0,
                 journal: Callable[[DayFact], None] = lambda fact: None,
                 skills: Mapping[str, Iterable[str]] | None = None) -> None:
        """``skills``: each agent's skills by id (none: no skills)."""
        self._agents_cfg = agents
        self._skills = {agent_id: frozenset(have) for agent_id, have in (skills or {}).items()}
        self._queue_cfg = queue
        self._clock_source = clock
        self._wall_source = wall
        self._at: float | None = None  # while applying a change ordered elsewhere: the time it was given
        self._tz = tz
        self._dial_retry_s = dial_retry_s
        self._journal = journal
        now, now_wall = clock(), wall()
        self._agents: dict[str, _Agent] = {
            a.id: _Agent(AgentStatus(a.id, a.name, since_wall=now_wall, idle_since=now), since=now)
            for a in agents.accounts}
        self._queue: list[QueueEntry] = []
        self._handle_times: deque[float] = deque(maxlen=queue.handle_time_samples)
        self._day = _Day(self._local_day(now_wall))
        self._events = Fanout(SUBSCRIBER_QUEUE_SIZE)
        self._seq = 0
        self._change: asyncio.Future[None] | None = None

    # -- changes -----------------------------------------------------------------

    async def submit(self, name: str, **args: Any) -> Any:
        """Make one change (a method of ``CHANGES``) and return its result. Here it is applied at
        once; a replicated ACD orders it among every host's changes first. Its errors are the method's."""
        return self.apply(name, args)

    def apply(self, name: str, args: dict[str, Any], at: float | None = None) -> Any:
        """Apply one change; ``at``: the wall time it was ordered at, which it then happens at."""
        if name not in CHANGES:
            raise ValueError(f"no ACD change is called {name!r}")
        args = dict(args)
        if name in ENTRY_CHANGES:
            key = args.pop("key")
            entry = self._entry(key)
            if entry is None:
                if name == "leave":
                    return None  # gone already: leave has no effect
                raise NotQueued(key)
            args["entry"] = entry
        self._at = at
        try:
            return getattr(self, name)(**args)
        finally:
            self._at = None

    def _clock(self) -> float:
        return self._clock_source() if self._at is None else self._at

    def _wall(self) -> float:
        return self._wall_source() if self._at is None else self._at

    def _entry(self, key: str) -> QueueEntry | None:
        return next((e for e in self._queue if e.key == key), None)

    # -- agents (the console) --------------------------------------------------

    def login(self, agent_id: str) -> None:
        """LOGGED_OUT -> READY (PAUSED, not_registered, without a phone); no effect on an agent logged in."""
        agent = self._get(agent_id)
        if agent.status.state is AgentState.LOGGED_OUT:
            self._set_state(agent, AgentState.READY)
            if agent.status.registered is False:
                self._set_state(agent, AgentState.PAUSED, pause_reason=NOT_REGISTERED)

    def registration_changes(self, agent_ids: Iterable[str]) -> bool:
        """Whether ``set_registered(agent_ids)`` would change anything."""
        registered = set(agent_ids)
        return any(a.status.registered is not (a.status.id in registered) for a in self._agents.values())

    def set_registered(self, agent_ids: Iterable[str]) -> None:
        """What the SIP front says: which agents have a phone registered. One without cannot take calls:
        it is paused (``not_registered``, after its current call) and made ready again once its phone is back."""
        agent_ids = set(agent_ids)
        for agent in self._agents.values():
            status = agent.status
            registered = status.id in agent_ids
            if status.registered is registered:
                continue
            status.registered = registered
            log.info("agent %s: phone %s", status.id, "registered" if registered else "not registered")
            match status.state, registered:
                case (AgentState.READY | AgentState.WRAP_UP), False:
                    self._set_state(agent, AgentState.PAUSED, pause_reason=NOT_REGISTERED)
                case (AgentState.RINGING | AgentState.ON_CALL), False:
                    status.pause_requested = NOT_REGISTERED
                    self._publish_agent(agent)
                case AgentState.PAUSED, True if status.pause_reason == NOT_REGISTERED:
                    self._set_state(agent, AgentState.READY)
                case _:
                    self._publish_agent(agent)

    def logout(self, agent_id: str) -> None:
        """Refused (ValueError) while the agent is RINGING or ON_CALL."""
        agent = self._get(agent_id)
        if agent.status.state is not AgentState.LOGGED_OUT:
            self._set_state(agent, AgentState.LOGGED_OUT)

    def set_ready(self, agent_id: str) -> None:
        """PAUSED or WRAP_UP (ending it early) -> READY; RINGING or ON_CALL: cancels a requested pause."""
        agent = self._get(agent_id)
        if agent.status.registered is False and agent.status.state is not AgentState.LOGGED_OUT:
            raise ValueError(f"agent {agent_id!r} has no phone registered")
        match agent.status.state:
            case AgentState.PAUSED | AgentState.WRAP_UP:
                self._set_state(agent, AgentState.READY)
            case AgentState.RINGING | AgentState.ON_CALL:
                if agent.status.pause_requested is not None:
                    agent.status.pause_requested = None
                    self._publish_agent(agent)
            case AgentState.LOGGED_OUT:
                raise ValueError(f"agent {agent_id!r} is logged out")

    def pause(self, agent_id: str, reason: str = "manual") -> None:
        """READY or WRAP_UP -> PAUSED; RINGING or ON_CALL: pause once that call is over."""
        agent = self._get(agent_id)
        match agent.status.state:
            case AgentState.RINGING | AgentState.ON_CALL:
                agent.status.pause_requested = reason
                self._publish_agent(agent)
            case AgentState.READY | AgentState.WRAP_UP:
                self._set_state(agent, AgentState.PAUSED, pause_reason=reason)
            case AgentState.PAUSED:
                agent.status.pause_reason = reason
                self._publish_agent(agent)
            case AgentState.LOGGED_OUT:
                raise ValueError(f"agent {agent_id!r} is logged out")

    def agent(self, agent_id: str) -> AgentStatus:
        self._roll_day()
        return dataclasses.replace(self._get(agent_id).status)

    def call_host(self, agent_id: str) -> str:
        """The host whose call this agent rings for, talks on or wraps up; "" when none (or the caller's
        host is not named: one host)."""
        agent = self._agents.get(agent_id)
        busy = agent is not None and agent.status.state in (AgentState.RINGING, AgentState.ON_CALL,
                                                             AgentState.WRAP_UP)
        return agent.call_host if agent is not None and busy else ""

    def agents(self) -> list[AgentStatus]:
        self._roll_day()
        return [dataclasses.replace(a.status) for a in self._agents.values()]

    def available(self, now: float | None = None) -> bool:
        """True if an agent is logged in and not paused. ``now`` is accepted for the flow's
        symmetry with office hours and not used: agent states do not depend on the time."""
        return self._staffed() > 0

    # -- the queue (the live flow) ---------------------------------------------

    def overflow_reason(self, entry: QueueEntry | None = None) -> str | None:
        """Why a caller should not wait (be offered the recorded message), or None.

        Before joining (``entry`` None): "queue_full", "no_agents", "estimated_wait".
        While waiting: "max_wait", "no_agents", "estimated_wait".
        """
        limits = self._queue_cfg
        if entry is None:
            if len(self._queue) >= limits.max_length:
                return "queue_full"
            position = len(self._queue) + 1
        else:
            if self._clock() - entry.joined > limits.max_wait_s:
                return "max_wait"
            position = self.position(entry)
        if self._staffed() == 0:
            return "no_agents"
        if self.estimated_wait_s(position) > limits.max_estimated_wait_s:
            return "estimated_wait"
        return None

    def join(self, key: str, caller_number: str, host: str = "", skills: Iterable[str] = (),
             priority: int = 0, again: bool = False, callback: bool = False, hold_s: float = 0.0) -> QueueEntry:
        """Queue a caller who needs ``skills``: behind every caller of its ``priority`` or a higher one.
        ``again``: an agent sent the caller back, so the day's figures count the caller no more (offered,
        answered and left were counted on the first way through). ``callback``: a stored callback queued
        again (after a restart), offered no agent for ``hold_s``. ``overflow_reason()`` is the gate, join
        itself refuses only a key already queued."""
        if self._entry(key) is not None:
            raise ValueError(f"call {key!r} is already queued")
        if isinstance(skills, str):
            raise ValueError(f"skills must be an iterable of skills, not the string {skills!r}")
        entry = QueueEntry(key, caller_number, self._clock(), self._wall(), host=host, skills=frozenset(skills),
                           priority=priority, requeued=again, callback=callback, due=self._clock() + hold_s)
        place = next((i for i, queued in enumerate(self._queue) if queued.priority < priority), len(self._queue))
        self._queue.insert(place, entry)
        if not again:
            self._count(DayFact("offered", entry.joined_wall))
        log.info("queue: joined at position %d", place + 1,
                 extra={"event": "queue_join", "position": place + 1, "priority": priority})
        self._publish_queue("joined", entry, position=place + 1)
        self._publish_today()
        return entry

    def position(self, entry: QueueEntry) -> int:
        """1-based place in the queue; NotQueued once connected or left."""
        for index, queued in enumerate(self._queue):
            if queued is entry:
                return index + 1
        raise NotQueued(entry.key)

    def estimated_wait_s(self, entry_or_position: QueueEntry | int) -> float:
        position = (entry_or_position if isinstance(entry_or_position, int)
                    else self.position(entry_or_position))
        return self.mean_handle_time_s() * max(0, position - 1) / max(1, self._staffed())

    def mean_handle_time_s(self) -> float:
        if not self._handle_times:
            return self._queue_cfg.default_handle_time_s
        return sum(self._handle_times) / len(self._handle_times)

    async def next_agent(self, entry: QueueEntry) -> AgentStatus:
        """Wait until this caller may take a READY agent, reserve it (RINGING) and return it.

        The agent is reserved in the awaiting task itself just before returning,
        so a cancelled wait leaves nothing reserved. The entry stays queued until
        ``connected``; follow with ``connected``, ``no_answer`` or ``dial_failed``
        (or ``leave``, which frees the agent). NotQueued if the entry leaves meanwhile.
        Keep it awaited while announcements play: until this caller is offered an
        agent, the callers behind it are held back.
        """
        while True:
            self.position(entry)
            if entry.offered_to is not None:
                raise ValueError(f"call {entry.key!r} is already being offered to {entry.offered_to!r}")
            agent, retry_in = self._pick(entry)
            if agent is not None:
                reserved: AgentStatus | None = await self.submit("offer", key=entry.key, agent_id=agent.status.id)
                if reserved is not None:
                    return reserved
                continue  # another host's change came first: look again
            await self._next_change(retry_in)

    def offer(self, entry: QueueEntry, agent_id: str) -> AgentStatus | None:
        """Reserve the agent (RINGING) for this caller if it still may take it: the agent is READY and every
        caller ahead is being offered one. None if not (another change came first). ``next_agent``'s step."""
        agent = self._get(agent_id)
        if entry.offered_to is not None:
            raise ValueError(f"call {entry.key!r} is already being offered to {entry.offered_to!r}")
        if agent.status.state is not AgentState.READY or entry.due > self._clock() or not self._may_serve(entry, agent,
                                                                            self._waiting_ahead(entry)):
            return None
        if agent_id in entry.tried:
            entry.tried.clear()  # its retry time had come where the offer was chosen
        entry.offered_to = agent_id
        agent.call_host = entry.host
        self._set_state(agent, AgentState.RINGING, call_key=entry.key)
        return dataclasses.replace(agent.status)

    def no_answer(self, entry: QueueEntry, agent_id: str) -> None:
        """The agent let the ring time out: PAUSED ("no_answer"); the caller keeps its place."""
        agent = self._offered(entry, agent_id)
        entry.offered_to = None
        self._set_state(agent, AgentState.PAUSED, pause_reason="no_answer")

    def dial_failed(self, entry: QueueEntry, agent_id: str) -> None:
        """The agent could not be reached through no fault of theirs: READY again, idle time kept."""
        agent = self._offered(entry, agent_id)
        entry.offered_to = None
        entry.tried.add(agent_id)
        entry.last_dial_failure = self._clock()
        self._release(agent)

    def connected(self, entry: QueueEntry, agent_id: str) -> None:
        """The agent answered: the caller leaves the queue, the agent is ON_CALL."""
        agent = self._offered(entry, agent_id)
        self._queue.remove(entry)
        entry.offered_to = None
        waited_s = self._clock() - entry.joined
        if not entry.requeued:
            self._count(DayFact("answered", self._wall(), agent_id=agent_id, seconds=waited_s))
        agent.connected_at = self._clock()
        self._set_state(agent, AgentState.ON_CALL, call_key=entry.key)
        log.info("queue: left for agent %s after %.1f s", agent_id, waited_s,
                 extra={"event": "queue_leave", "reason": "answered", "agent": agent_id, "waited_s": waited_s})
        self._publish_queue("connected", entry, agent=agent_id, waited_s=waited_s)
        self._publish_today()

    def call_ended(self, agent_id: str) -> None:
        """The agent's call is over: WRAP_UP for ``wrap_up_s``, then READY (or the pause asked for)."""
        agent = self._get(agent_id)
        if agent.status.state is not AgentState.ON_CALL:
            raise ValueError(f"agent {agent_id!r} is {agent.status.state.value}, not on a call")
        handled_s = max(0.0, self._clock() - agent.connected_at)
        self._count(DayFact("handled", self._wall(), agent_id=agent_id, seconds=handled_s))
        wrap_up_s = self._agents_cfg.wrap_up_s
        if agent.status.pause_requested is not None:
            self._set_state(agent, AgentState.PAUSED, pause_reason=agent.status.pause_requested)
        elif wrap_up_s > 0:
            self._set_state(agent, AgentState.WRAP_UP)
            self._start_wrap_up(agent, wrap_up_s)
        else:
            self._set_state(agent, AgentState.READY)
        self._publish_today()

    def leave(self, entry: QueueEntry, reason: str) -> None:
        """The caller leaves unanswered: "abandoned" (hung up), "to_message" (took the recorded
        message) or another reason. Frees an agent ringing for it. No effect on an entry no
        longer queued, so a flow may call it unconditionally on its way out."""
        if entry not in self._queue:
            return
        self._queue.remove(entry)
        if entry.offered_to is not None:
            agent = self._agents[entry.offered_to]
            entry.offered_to = None
            self._release(agent)
        if not entry.requeued:
            self._count(DayFact("left", self._wall(), reason=reason))
        log.info("queue: left (%s) after %.1f s", reason, self._clock() - entry.joined,
                 extra={"event": "queue_leave", "reason": reason, "waited_s": self._clock() - entry.joined})
        self._publish_queue("left", entry, reason=reason)
        self._publish_today()

    # -- callbacks ---------------------------------------------------------------

    def to_callback(self, entry: QueueEntry, callback_key: str) -> None:
        """The caller asked to be called back and hung up: its entry stays where it is, now the callback's
        (named ``callback_key``); an agent ringing for it is freed."""
        if self._entry(callback_key) is not None:
            raise ValueError(f"call {callback_key!r} is already queued")
        if entry.offered_to is not None:
            agent = self._agents[entry.offered_to]
            entry.offered_to = None
            self._release(agent)
        old_key, entry.key, entry.callback = entry.key, callback_key, True
        log.info("queue: a caller became a callback at position %d", self.position(entry),
                 extra={"event": "queue_callback", "position": self.position(entry)})
        self._publish_queue("callback", entry, position=self.position(entry), call_key=old_key)

    def callback_missed(self, entry: QueueEntry, agent_id: str, retry_s: float) -> None:
        """The callback's call was not answered: its agent is READY again (idle time kept) and the callback
        keeps its place but is offered no agent for ``retry_s``."""
        agent = self._offered(entry, agent_id)
        entry.offered_to = None
        entry.due = self._clock() + retry_s
        self._release(agent)
        self._publish_queue("callback_missed", entry, retry_s=retry_s)

    # -- transfers (a call already with an agent, handed to another) ------------

    def transfer_offer(self, agent_id: str, call_key: str, host: str = "") -> AgentStatus | None:
        """Reserve a READY agent (RINGING) for a call another agent hands over; None if it is not READY."""
        agent = self._get(agent_id)
        if agent.status.state is not AgentState.READY:
            return None
        agent.call_host = host
        self._set_state(agent, AgentState.RINGING, call_key=call_key)
        return dataclasses.replace(agent.status)

    def transfer_consulting(self, agent_id: str) -> None:
        """The agent rung for a transfer answered to be consulted first: ON_CALL (its handling time runs
        from now), the call still the first agent's until ``transfer_answered``."""
        agent = self._get(agent_id)
        if agent.status.state is not AgentState.RINGING:
            raise ValueError(f"agent {agent_id!r} is {agent.status.state.value}, not ringing for a transfer")
        agent.connected_at = self._clock()
        self._set_state(agent, AgentState.ON_CALL, call_key=agent.status.call_key)

    def transfer_answered(self, agent_id: str, from_agent: str) -> None:
        """The agent took the call over (rung for it, or after a consultation): ON_CALL; the agent who
        handed it over ends its call (wrap-up)."""
        agent = self._get(agent_id)
        if agent.status.state is AgentState.RINGING:
            agent.connected_at = self._clock()
            self._set_state(agent, AgentState.ON_CALL, call_key=agent.status.call_key)
        elif agent.status.state is not AgentState.ON_CALL:  # ON_CALL: consulted, see transfer_consulting
            raise ValueError(f"agent {agent_id!r} is {agent.status.state.value}, not ringing for a transfer")
        self.call_ended(from_agent)

    def transfer_unanswered(self, agent_id: str, no_answer: bool) -> None:
        """The transfer's ring ended unanswered: PAUSED (``no_answer``) when the agent let it ring out,
        else READY as if it had never rung. A consultation given up (ON_CALL, consulted): READY."""
        agent = self._get(agent_id)
        if agent.status.state is AgentState.ON_CALL:
            self._release(agent)
            return
        if agent.status.state is not AgentState.RINGING:
            return
        if no_answer:
            self._set_state(agent, AgentState.PAUSED, pause_reason="no_answer")
        else:
            self._release(agent)

    def end_wrap_up(self, agent_id: str, since: float) -> None:
        """The wrap-up the agent began at ``since`` is over: READY. No effect once it has left that wrap-up."""
        agent = self._get(agent_id)
        if agent.status.state is AgentState.WRAP_UP and agent.since == since:
            self._set_state(agent, AgentState.READY)

    def host_lost(self, host: str) -> int:
        """Every call of ``host`` is gone with it: its callers leave the queue (``host_lost``) and agents
        ringing for, talking to or wrapping up one of its calls are free again. How many callers left."""
        gone = [e for e in self._queue if e.host == host]
        for entry in gone:
            self.leave(entry, "host_lost")
        for agent in self._agents.values():
            # Ringing: for a transfer (queued callers' rings were freed as they left).
            if agent.call_host == host and agent.status.state in (AgentState.RINGING, AgentState.ON_CALL,
                                                                  AgentState.WRAP_UP):
                self._release(agent)
        return len(gone)

    def count_recorded(self) -> None:
        """A recorded-message call was completed."""
        self._count(DayFact("recorded", self._wall()))
        self._publish_today()

    def restore(self, facts: Iterable[DayFact]) -> int:
        """Today's figures (and the recent handling times) rebuilt from the facts counted before a restart;
        facts of other days are left out. Call it before any call is queued. How many were today's."""
        day = self._roll_day()
        replayed = 0
        for fact in facts:
            if self._local_day(fact.at) == day.day:
                self._apply(day, fact)
                replayed += 1
        self._publish_today()
        return replayed

    # -- events and figures (the console) --------------------------------------

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """Events from now on: {"type": "agent"|"queue"|"today", "seq": n, ...}.

        Queues are bounded; when one is full its oldest event is dropped and the
        event put in its place carries "missed": events dropped so far for that
        subscriber, which should then take a fresh ``snapshot()``.
        """
        return self._events.subscribe()

    def unsubscribe(self, events: asyncio.Queue[dict[str, Any]]) -> None:
        self._events.unsubscribe(events)

    def snapshot(self) -> dict[str, Any]:
        """The queue, the agents and today's figures, JSON-serialisable."""
        now = self._clock()
        day = self._roll_day()
        waits = [now - e.joined for e in self._queue]
        return {
            "wall": self._wall(),
            "available": self.available(),
            "queue": [{"key": e.key, "caller": mask_number(e.caller_number), "waited_s": round(w, 1),
                       "position": i + 1, "offered_to": e.offered_to, "skills": sorted(e.skills),
                       "priority": e.priority, "callback": e.callback}
                      for i, (e, w) in enumerate(zip(self._queue, waits))],
            "longest_wait_s": round(max(waits, default=0.0), 1),
            "estimated_wait_s": round(self.estimated_wait_s(len(self._queue) + 1), 1),
            "agents": [{"id": a.status.id, "name": a.status.name, "state": a.status.state.value,
                        "seconds_in_state": round(now - a.since, 1), "pause_reason": a.status.pause_reason,
                        "pause_requested": a.status.pause_requested, "call_key": a.status.call_key,
                        "answered_today": a.status.answered_today, "registered": a.status.registered}
                       for a in self._agents.values()],
            "today": self._today_dict(day),
        }

    def export_state(self) -> dict[str, Any]:
        """Everything the changes have made, JSON-serialisable: what a replica starts from (``load_state``)."""
        return {
            "agents": {agent_id: {**{f: getattr(a.status, f) for f in _STATUS_FIELDS}, "state": a.status.state.value,
                                  "since": a.since, "connected_at": a.connected_at, "call_host": a.call_host}
                       for agent_id, a in self._agents.items()},
            "queue": [{**{f: getattr(e, f) for f in _ENTRY_FIELDS}, "tried": sorted(e.tried),
                       "skills": sorted(e.skills)} for e in self._queue],
            "handle_times": list(self._handle_times),
            "day": {**dataclasses.asdict(self._day), "day": self._day.day.isoformat()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Take the state another replica exported. Agents no longer configured are left out, new ones
        start logged out; wrap-up timers are not restarted (their host ends them, or its takeover)."""
        self.close()
        for agent_id, saved in state["agents"].items():
            agent = self._agents.get(agent_id)
            if agent is None:
                continue
            for name in _STATUS_FIELDS:
                setattr(agent.status, name, saved[name])
            agent.status.state = AgentState(saved["state"])
            agent.since, agent.connected_at, agent.call_host = saved["since"], saved["connected_at"], saved["call_host"]
        self._queue = [QueueEntry(**{**saved, "tried": set(saved["tried"]),
                                     "skills": frozenset(saved.get("skills", ()))}) for saved in state["queue"]]
        self._handle_times.clear()
        self._handle_times.extend(state["handle_times"])
        self._day = _Day(**{**state["day"], "day": date.fromisoformat(state["day"]["day"])})
        self._roll_day()
        self._publish_today()

    def close(self) -> None:
        """Cancel the wrap-up timers; agents in WRAP_UP stay there."""
        for agent in self._agents.values():
            if agent.wrap_up is not None:
                agent.wrap_up.cancel()
                agent.wrap_up = None

    # -- internals -------------------------------------------------------------

    def _get(self, agent_id: str) -> _Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise KeyError(f"unknown agent {agent_id!r}") from None

    def _staffed(self) -> int:
        return sum(a.status.state in STAFFED for a in self._agents.values())

    def _set_state(self, agent: _Agent, new: AgentState, *, pause_reason: str | None = None,
                   call_key: str | None = None, keep_idle: bool = False) -> None:
        """The one place an agent changes state: checks the transition, runs the entry actions, publishes."""
        status = agent.status
        old = status.state
        if new not in TRANSITIONS[old]:
            raise ValueError(f"agent {status.id!r}: {old.value} -> {new.value} is not allowed")
        if agent.wrap_up is not None:
            agent.wrap_up.cancel()
            agent.wrap_up = None
        now = self._clock()
        status.state = new
        status.since_wall = self._wall()
        agent.since = now
        status.call_key = call_key
        status.pause_reason = pause_reason if new is AgentState.PAUSED else None
        if new not in (AgentState.RINGING, AgentState.ON_CALL):
            status.pause_requested = None
        if new is AgentState.READY and not keep_idle:
            status.idle_since = now
        log.info("agent %s: %s -> %s", status.id, old.value, new.value)
        self._publish_agent(agent)

    def _release(self, agent: _Agent) -> None:
        """A ring that did not become a call: back to READY as if it had never rung, or the pause asked for."""
        if agent.status.pause_requested is not None:
            self._set_state(agent, AgentState.PAUSED, pause_reason=agent.status.pause_requested)
        else:
            self._set_state(agent, AgentState.READY, keep_idle=True)

    def _start_wrap_up(self, agent: _Agent, seconds: float) -> None:
        agent.wrap_up = asyncio.get_running_loop().call_later(seconds, self._wrap_up_over, agent.status.id,
                                                              agent.since)

    def _wrap_up_over(self, agent_id: str, since: float) -> None:
        """The wrap-up timer fired."""
        self._agents[agent_id].wrap_up = None
        self.end_wrap_up(agent_id, since)

    def _offered(self, entry: QueueEntry, agent_id: str) -> _Agent:
        """The agent, checked to be ringing for this queued caller."""
        agent = self._get(agent_id)
        self.position(entry)
        if entry.offered_to != agent_id or agent.status.state is not AgentState.RINGING:
            raise ValueError(f"agent {agent_id!r} is not ringing for call {entry.key!r}")
        return agent

    def _has_skills(self, entry: QueueEntry, agent: _Agent) -> bool:
        """Whether this caller may take this agent as far as skills go (it may take any once it waited long)."""
        if entry.skills <= self._skills.get(agent.status.id, frozenset()):
            return True
        return self._clock() - entry.joined >= self._queue_cfg.skill_wait_s

    def _waiting_ahead(self, entry: QueueEntry) -> list[QueueEntry]:
        """The callers ahead of this one not yet being offered an agent."""
        now = self._clock()
        return [e for e in self._queue[:self.position(entry) - 1] if e.offered_to is None and e.due <= now]

    def _may_serve(self, entry: QueueEntry, agent: _Agent, ahead: list[QueueEntry]) -> bool:
        """Whether the agent may serve this caller: it has the skills, and none of ``ahead``
        (``_waiting_ahead``) could take it instead."""
        return self._has_skills(entry, agent) and not any(self._has_skills(e, agent) for e in ahead)

    def _pick(self, entry: QueueEntry) -> tuple[_Agent | None, float | None]:
        """The agent this caller may take now, else how long until trying again makes sense."""
        if entry.due > self._clock():
            return None, entry.due - self._clock()
        ahead = self._waiting_ahead(entry)
        ready = [a for a in self._agents.values()
                 if a.status.state is AgentState.READY and self._may_serve(entry, a, ahead)]
        if not ready:
            # Agents becoming ready are changes; the one thing that comes without one is a skill's wait ending.
            widens_in = entry.joined + self._queue_cfg.skill_wait_s - self._clock()
            return None, widens_in if entry.skills and widens_in > 0 else None
        untried = [a for a in ready if a.status.id not in entry.tried]
        if not untried:
            retry_in = entry.last_dial_failure + self._dial_retry_s - self._clock()
            if retry_in > 0:
                return None, retry_in
            entry.tried.clear()
            untried = ready
        return min(untried, key=lambda a: a.status.idle_since), None

    async def _next_change(self, timeout: float | None) -> None:
        if self._change is None:
            self._change = asyncio.get_running_loop().create_future()
        # asyncio.wait never cancels what it waits for, so one waiter's cancellation spares the others.
        await asyncio.wait((self._change,), timeout=timeout)

    def _publish(self, event: dict[str, Any]) -> None:
        self._seq += 1
        event["seq"] = self._seq
        self._events.publish(event)
        # Every change may let a waiting caller take an agent.
        if self._change is not None:
            self._change.set_result(None)
            self._change = None

    def _publish_agent(self, agent: _Agent) -> None:
        self._publish({"type": "agent", "agent": agent.status.as_dict()})

    def _publish_queue(self, what: str, entry: QueueEntry, **details: Any) -> None:
        self._publish({"type": "queue", "event": what, "key": entry.key, "length": len(self._queue), **details})

    def _publish_today(self) -> None:
        self._publish({"type": "today", "today": self._today_dict(self._roll_day())})

    def _local_time(self, wall: float) -> datetime:
        return datetime.fromtimestamp(wall, self._tz)

    def _local_day(self, wall: float) -> date:
        return self._local_time(wall).date()

    def _count(self, fact: DayFact) -> None:
        """Count a fact that has just happened, and hand it to the journal."""
        self._apply(self._roll_day(), fact)
        self._journal(fact)

    def _apply(self, day: _Day, fact: DayFact) -> None:
        day.count(fact, self._local_time(fact.at).hour, self._queue_cfg.service_level_s)
        agent = self._agents.get(fact.agent_id or "")
        if fact.kind == "answered" and agent is not None:
            agent.status.answered_today += 1
        if fact.kind == "handled":
            self._handle_times.append(fact.seconds or 0.0)

    def _roll_day(self) -> _Day:
        """Today's figures, started afresh at local midnight."""
        today = self._local_day(self._wall())
        if today != self._day.day:
            self._day = _Day(today)
            for agent in self._agents.values():
                agent.status.answered_today = 0
        return self._day

    def _today_dict(self, day: _Day) -> dict[str, Any]:
        return {
            "date": day.day.isoformat(),
            "offered": day.offered,
            "answered": day.answered,
            "abandoned": day.abandoned,
            "to_message": day.to_message,
            "left_other": day.left_other,
            "recorded": day.recorded,
            "service_level": day.answered_in_time / day.answered if day.answered else None,
            "answered_within_s": self._queue_cfg.service_level_s,
            "per_hour": list(day.per_hour),
            "average_handle_time_s": round(day.handle_total_s / day.handled, 1) if day.handled else None,
        }
