"""The pjsua2 subclasses of a worker: every callback the library makes into Python.

Which thread runs what:
- SIP callbacks (``WorkerCall.onCallState``, ``onCallMediaState``, the transfer
  and replace refusals, ``WorkerAccount.onIncomingCall``) run on the library
  thread, inside ``libHandleEvents``: they may call the library.
- ``WorkerCall.onDtmfDigit`` runs on PJSIP's media thread (RFC 4733 arrives with
  the RTP) and ``Player.onEof2`` on the conference bridge's clock thread; both
  only hand their news to the library thread with ``Handler.post``, never touch
  the library or the worker's state themselves.
- ``WorkerEndpoint.onRejectedIncomingCall`` and ``CapWatcher.write`` may run on
  either; they too only post, or set a flag the library thread reads.

A Python exception must never unwind into PJSIP's C++: every callback is guarded.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import pjsua2 as pj

from softswitch import protocol
from softswitch.worker.invite import describe_invite

log = logging.getLogger("softswitch.worker")

# Answers on which the SIP front offers the call to the next worker (configs/kamailio.cfg.j2).
FRONT_RETRIES = frozenset({486, 503, 408, 500})


class Handler(Protocol):
    """What the callbacks hand their news to: the worker, on its library thread."""

    cap_hit: bool

    def post(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the library thread, soon; callable from any thread."""

    def send(self, event: protocol.Event) -> None: ...

    def on_incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None: ...

    def on_call_state(self, call: WorkerCall) -> None: ...

    def on_media_state(self, call: WorkerCall) -> None: ...

    def on_dtmf(self, handle: str, digit: str) -> None: ...

    def on_transfer_request(self, call: WorkerCall, refer_to: str) -> WorkerCall | None:
        """The new leg the library is to dial for a REFER it may accept; None: refuse it."""

    def play_finished(self, player: Player) -> None: ...


_callback_thread = threading.local()


def keep_thread_state() -> None:
    """Keep this PJSIP thread's Python thread state alive between callbacks.

    SWIG enters each callback with PyGILState_Ensure and leaves with Release; on a
    thread Python did not start, Release destroys the thread state, so the next
    callback builds a new one and maps a fresh frame stack (measured as a fifth
    of a busy worker's CPU when frames came through Python). One unmatched
    Ensure keeps the state for the thread's life.
    """
    if not getattr(_callback_thread, "pinned", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _callback_thread.pinned = True


def guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """A Python exception must not unwind into PJSIP's C++ (it would abort every call of the worker)."""

    @functools.wraps(callback)
    def run(*args: Any) -> None:
        try:
            callback(*args)
        except pj.Error as exc:
            log.error("%s failed: %s", callback.__name__, exc.info())
        except Exception:
            log.exception("%s failed", callback.__name__)
    return run




class Player(pj.AudioMediaPlayer):
    """Plays one file of a prompt sequence; its end is handed to the library thread.

    One file at a time, not a playlist: a playlist opens all its files at once,
    and with hundreds of calls the thousands of open stdio streams made every
    fclose (glibc walks the list of open streams) a measurable part of the
    bridge clock thread.
    """

    def __init__(self, worker: Handler, handle: str, play_id: str, files: list[str], index: int = 0) -> None:
        super().__init__()
        self.worker = worker
        self.handle = handle
        self.play_id = play_id
        self.files = files
        self.index = index

    def following(self) -> Player:
        """A fresh player for the next file: a pjsua2 player opens one file, once."""
        return Player(self.worker, self.handle, self.play_id, self.files, self.index + 1)

    @guarded
    def onEof2(self) -> None:  # noqa: N802 (pjsua2 API)
        keep_thread_state()
        # Destroying a player inside its own EOF callback is not allowed: defer.
        self.worker.post(functools.partial(self.worker.play_finished, self))



class WorkerCall(pj.Call):
    """Thin pjsua2 Call: callbacks only forward to the worker."""

    def __init__(self, worker: Handler, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.worker = worker
        self.handle = ""

    @guarded
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        self.worker.on_call_state(self)

    @guarded
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        self.worker.on_media_state(self)

    @guarded
    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:  # noqa: N802
        # Refused unless the worker takes it: the library dials the target of an accepted
        # one itself, as the new leg given here, which the control process is told of
        # and hands the caller to (the case and the tape go on with the call).
        prm.statusCode = 403
        new = self.worker.on_transfer_request(self, str(prm.dstUri))
        if new is not None:
            prm.newCall = new
            prm.statusCode = 202

    @guarded
    def onCallReplaceRequest(self, prm: pj.OnCallReplaceRequestParam) -> None:  # noqa: N802
        prm.statusCode = 403
        log.warning("%s: INVITE with Replaces refused", self.handle)

    @guarded
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        # On PJSIP's media thread (RFC 4733 arrives with the RTP): hand it over.
        keep_thread_state()
        self.worker.post(functools.partial(self.worker.on_dtmf, self.handle, prm.digit))


class WorkerEndpoint(pj.Endpoint):
    """The library's refusals of an INVITE (no common codec, no call slot) still reach the control process."""

    def __init__(self, worker: Handler) -> None:
        super().__init__()
        self.worker = worker

    @guarded
    def onRejectedIncomingCall(self, prm: pj.OnRejectedIncomingCallParam) -> None:  # noqa: N802
        keep_thread_state()
        if prm.statusCode in FRONT_RETRIES:
            return  # the front offers the call to another worker: not the caller's answer yet
        invite = describe_invite(prm.rdata.wholeMsg, prm.rdata.srcAddress, prm.localInfo)
        self.worker.post(functools.partial(self.worker.send, protocol.Refused(
            sip_call_id=invite.call_id, from_uri=prm.remoteInfo, to_uri=prm.localInfo, request_uri=invite.request_uri,
            source=invite.source, status_code=int(prm.statusCode), reason=str(prm.reason))))



class WorkerAccount(pj.Account):
    def __init__(self, worker: Handler) -> None:
        super().__init__()
        self.worker = worker

    @guarded
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        self.worker.on_incoming(self, prm)


class CapWatcher(pj.LogWriter):
    """Learns the call cap from the library's refusal, for a library that does not say it up front."""

    def __init__(self, worker: Handler) -> None:
        super().__init__()
        self.worker = worker

    def write(self, entry: pj.LogEntry) -> None:
        if "too many calls" in entry.msg:
            self.worker.cap_hit = True
        if entry.level <= 2:
            log.warning("pjsua: %s", entry.msg.strip())
