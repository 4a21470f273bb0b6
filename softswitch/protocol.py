"""Control protocol between the control process and media workers: JSON lines over a Unix socket.

Every message is one JSON object on one line with a ``type`` field, and is one
frozen dataclass on either side: ``encode`` writes one, ``decode_event`` and
``decode_command`` read one back, checking every field's presence and type
(a message that is not what it says is refused with a ValueError naming the
fault). Workers send events (what happened on a call); the control process
sends commands (what to do). Calls are named by a worker-local handle
(``call``), never by anything the caller said or keyed. The protocol is the
only thing the IVR knows of a media engine: a different engine that speaks it
can replace the PJSUA2 workers.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args

MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


# -- events (worker -> control) ---------------------------------------------------

@dataclass(frozen=True)
class Event(Message):
    pass


@dataclass(frozen=True)
class Hello(Event):
    TYPE = "hello"
    worker_id: int
    pid: int
    sip_port: int
    max_calls: int | None  # None until learnt


@dataclass(frozen=True)
class Capacity(Event):
    """The engine refused a call: its cap, learnt."""
    TYPE = "capacity"
    max_calls: int


@dataclass(frozen=True)
class Incoming(Event):
    TYPE = "incoming"
    call: str
    sip_call_id: str
    from_uri: str
    to_uri: str
    request_uri: str
    source: str


@dataclass(frozen=True)
class Refused(Event):
    """An INVITE the worker's library refused itself (e.g. 488): it still gets a CDR."""
    TYPE = "refused"
    sip_call_id: str
    from_uri: str
    to_uri: str
    request_uri: str
    source: str
    status_code: int
    reason: str


@dataclass(frozen=True)
class Ringing(Event):
    """An outgoing leg is ringing."""
    TYPE = "ringing"
    call: str


@dataclass(frozen=True)
class Answered(Event):
    TYPE = "answered"
    call: str


@dataclass(frozen=True)
class Dtmf(Event):
    TYPE = "dtmf"
    call: str
    digit: str


@dataclass(frozen=True)
class PlayDone(Event):
    TYPE = "play_done"
    call: str
    play_id: str
    completed: bool


@dataclass(frozen=True)
class RecordDone(Event):
    TYPE = "record_done"
    call: str
    rec_id: str
    path: str
    duration_s: float
    sha256: str
    reason: str  # silence | digit | max | no_input | stopped | hangup | error
    speech_s: float
    complete: bool
    detail: str = ""


@dataclass(frozen=True)
class Hangup(Event):
    TYPE = "hangup"
    call: str
    status_code: int
    reason: str


@dataclass(frozen=True)
class Referred(Event):
    """An agent's phone asked (REFER) for its call to go to ``to`` (a user at the front: an agent, an
    agency's line): the library dials it already, as the new outgoing leg ``leg`` of this worker."""
    TYPE = "referred"
    call: str
    leg: str
    to: str


@dataclass(frozen=True)
class Error(Event):
    TYPE = "error"
    call: str
    detail: str


# -- commands (control -> worker) ---------------------------------------------------

@dataclass(frozen=True)
class Command(Message):
    pass


@dataclass(frozen=True)
class Answer(Command):
    TYPE = "answer"
    call: str


@dataclass(frozen=True)
class Reject(Command):
    TYPE = "reject"
    call: str
    status_code: int


@dataclass(frozen=True)
class Play(Command):
    TYPE = "play"
    call: str
    play_id: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class StopPlay(Command):
    TYPE = "stop_play"
    call: str


@dataclass(frozen=True)
class Record(Command):
    """With peer: both parties of a bridge on one tape, not end-pointed."""
    TYPE = "record"
    call: str
    rec_id: str
    path: str
    max_s: float
    silence_s: float
    no_input_s: float
    stop_digits: str
    peer: str | None = None


@dataclass(frozen=True)
class StopRecord(Command):
    TYPE = "stop_record"
    call: str
    rec_id: str


@dataclass(frozen=True)
class HangupCall(Command):
    TYPE = "hangup"
    call: str


@dataclass(frozen=True)
class Dial(Command):
    """A new outgoing leg, named by the control process."""
    TYPE = "dial"
    call: str
    uri: str


@dataclass(frozen=True)
class Bridge(Command):
    """Two-way audio between two calls of one worker."""
    TYPE = "bridge"
    call: str
    peer: str


MonitorMode = Literal["listen", "whisper", "barge"]
MONITOR_MODES: tuple[MonitorMode, ...] = get_args(MonitorMode)


@dataclass(frozen=True)
class Monitor(Command):
    """A supervisor's leg (``call``) joins the bridge of a caller and an agent, all three on this worker:
    listen hears both, whisper also speaks to the agent only, barge speaks to both. In whisper and barge
    the supervisor is on the conversation's tape too. Sent again to switch mode; the leg's end ends it."""
    TYPE = "monitor"
    call: str
    caller: str
    agent: str
    mode: MonitorMode


@dataclass(frozen=True)
class Drain(Command):
    """Refuse new calls with 503."""
    TYPE = "drain"


@dataclass(frozen=True)
class Admit(Command):
    """Take new calls (``accept``) or refuse them with 503 until told again: the control process's
    answer to a full disk or a failing store, so that trunks fail over. Calls in progress go on."""
    TYPE = "admit"
    accept: bool


EVENTS: dict[str, type[Event]] = {c.TYPE: c for c in (
    Hello, Capacity, Incoming, Refused, Ringing, Answered, Dtmf, PlayDone, RecordDone, Hangup, Referred, Error)}
COMMANDS: dict[str, type[Command]] = {c.TYPE: c for c in (
    Answer, Reject, Play, StopPlay, Record, StopRecord, HangupCall, Dial, Bridge, Monitor, Drain, Admit)}

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """One message as a newline-terminated JSON line."""
    body: dict[str, Any] = {"type": message.TYPE}
    for name, _, _ in _shape(type(message)):
        body[name] = getattr(message, name)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_event(line: bytes) -> Event:
    return _decode(line, EVENTS)


def decode_command(line: bytes) -> Command:
    return _decode(line, COMMANDS)


def _decode(line: bytes, kinds: dict[str, type[M]]) -> M:
    """Parse one line into its message; raise ValueError naming what is wrong."""
    if len(line) > MAX_LINE:
        raise ValueError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        body = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"message is not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(body, dict):
        raise ValueError("message is not a JSON object")
    name = body.pop("type", None)
    kind = kinds.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"unexpected message type {name!r}")
    values: dict[str, Any] = {}
    for field_name, check, required in _shape(kind):
        if field_name not in body:
            if required:
                raise ValueError(f"{kind.TYPE}: missing field {field_name!r}")
            continue
        value = check(body.pop(field_name))
        if value is _WRONG:
            raise ValueError(f"{kind.TYPE}: field {field_name!r} is not {_HINT_NAMES[kind, field_name]}")
        values[field_name] = value
    if body:
        raise ValueError(f"{kind.TYPE}: unknown fields {sorted(body)}")
    return kind(**values)


# -- each message class's fields, with a checker per field, worked out once ------------

_WRONG = object()
_SHAPES: dict[type, tuple[tuple[str, Callable[[Any], Any], bool], ...]] = {}
_HINT_NAMES: dict[tuple[type, str], str] = {}


def _shape(kind: type) -> tuple[tuple[str, Callable[[Any], Any], bool], ...]:
    shape = _SHAPES.get(kind)
    if shape is None:
        hints = typing.get_type_hints(kind)
        shape = tuple((f.name, _checker(hints[f.name]), f.default is dataclasses.MISSING)
                      for f in dataclasses.fields(kind))
        _HINT_NAMES.update({(kind, name): _hint_name(hints[name]) for name, _, _ in shape})
        _SHAPES[kind] = shape
    return shape


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def _checker(hint: Any) -> Callable[[Any], Any]:
    """A function that returns the value as the field holds it, or _WRONG."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = _checker(next(o for o in typing.get_args(hint) if o is not type(None)))
        return lambda v: None if v is None else inner(v)
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        return lambda v: v if isinstance(v, str) and v in allowed else _WRONG
    if typing.get_origin(hint) is tuple:
        return lambda v: tuple(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else _WRONG
    if hint is float:
        return lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _WRONG
    if hint is int:
        return lambda v: v if isinstance(v, int) and not isinstance(v, bool) else _WRONG
    return lambda v: v if isinstance(v, hint) else _WRONG
