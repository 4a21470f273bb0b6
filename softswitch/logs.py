"""Logging of the control process and the media workers: one set-up, text or JSON, each call's lines bound to it.

A call's task binds its ``CallContext`` (``bind_call``); every record logged
while it runs, by any module and in any task it starts, carries the SIP
Call-ID, the CDR id and the worker as the fields ``call_id``, ``cdr_id`` and
``worker``. Call events also carry ``event`` (``arrival``, ``routed``,
``ivr_step``, ``recording_end``, ``queue_join``, ``bridged``, ``case``,
``hangup`` ...). Nothing here may receive a national ID, keyed digits or a
whole tracking code: the modules that log say only what happened.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
CALL_FIELDS = ("call_id", "cdr_id", "worker")


@dataclass(frozen=True)
class CallContext:
    call_id: str  # the SIP Call-ID
    cdr_id: int | None  # None until the CDR row is written
    worker: int | None


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("softswitch_call", default=None)


def bind_call(context: CallContext) -> None:
    """Bind the running task (and the tasks and callbacks it starts from now on) to a call."""
    _current.set(context)


@contextlib.contextmanager
def call_context(context: CallContext | None) -> Iterator[None]:
    """Log on a call's behalf for a while, from code that is not that call's task."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def current_call() -> CallContext | None:
    return _current.get()


class CallFields(logging.Filter):
    """Puts the bound call's fields on every record (a record that names them itself keeps its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            for name in CALL_FIELDS:
                if not hasattr(record, name):
                    setattr(record, name, getattr(context, name))
        return True


class TextFormatter(logging.Formatter):
    """``<time> <process> <level> <logger>: [call_id=… cdr=… worker=…] <message>``."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        call_id = getattr(record, "call_id", None)
        if call_id is None:
            return line
        head, _, message = line.partition(": ")
        return (f"{head}: [call_id={call_id} cdr={getattr(record, 'cdr_id', None)} "
                f"worker={getattr(record, 'worker', None)}] {message}")


def formatter(log_format: LogFormat, process: str) -> logging.Formatter:
    if log_format == "json":
        # One object a line; every extra field (the call's, the event's) becomes a key of its own.
        return JsonFormatter("{levelname}{name}{message}", style="{", timestamp=True,
                             static_fields={"process": process}, json_ensure_ascii=False)
    return TextFormatter(process)


def handler(log_format: LogFormat, process: str, stream: TextIO) -> logging.Handler:
    """Lines in ``log_format`` on ``stream``, each call's fields on its lines."""
    lines = logging.StreamHandler(stream)
    lines.setFormatter(formatter(log_format, process))
    lines.addFilter(CallFields())
    return lines


def configure(log_format: LogFormat, level: str, process: str) -> None:
    """The process's one log handler, on stderr, replacing any earlier one."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(log_format, process, sys.stderr))
    root.setLevel(level)
