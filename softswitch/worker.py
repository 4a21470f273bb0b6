"""Media worker: one process, one PJSUA2 endpoint, driven over the control protocol.

One thread owns the library: it alternates ``libHandleEvents`` with draining the
control socket, so every pjsua2 call happens on that thread. Caller audio reaches
Python on the bridge clock thread (``AudioMediaPort.onFrameReceived``); that thread
only writes frames to the recording file and feeds the VAD, then hands finished
recordings back to the library thread through a deque.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import faulthandler
import functools
import logging
import os
import re
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pjsua2 as pj

from media.vad import Endpointer
from media.wavfile import RecordingError, WavWriter
from softswitch import protocol

log = logging.getLogger("softswitch.worker")

VAD_FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono: what the VAD takes
# The port that hears a caller takes 60 ms frames from the bridge (which adapts
# the 20 ms streams): a third of the Python callbacks, whose fixed cost, in 60+
# processes with cold caches, was most of the recording cost.
LISTEN_FRAME_MS = 60
LISTEN_FRAME_BYTES = VAD_FRAME_BYTES * LISTEN_FRAME_MS // 20
SOURCE_HEADER = re.compile(rb"^X-111-Source:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
SILENT_FRAME = bytes(LISTEN_FRAME_BYTES)
KEEPALIVE = b"\r\n\r\n"  # RFC 5626 keep-alive: PJSIP drops it without a log line
PLAYER_GRACE_S = 0.2  # a stopped player outlives any bridge tick that was using it


class Waker:
    """Ends the library thread's ``libHandleEvents`` wait early from any thread.

    The wheel's poll cannot watch our control socket, so the loop would otherwise
    see a command only when its timeout expires. A keep-alive datagram to the
    worker's own SIP port wakes the poll at once; that lets the timeout be long,
    which is what an idle worker costs.
    """

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._address = (host, port)

    def wake(self) -> None:
        try:
            self._sock.sendto(KEEPALIVE, self._address)
        except OSError as exc:
            log.warning("wake-up datagram failed: %s", exc)

    def close(self) -> None:
        self._sock.close()


def frame_bytes(frame: pj.MediaFrame) -> bytes:
    """Copy a frame's payload by reading the std::vector's data pointer.

    ``bytes(frame.buf)`` copies element by element through SWIG (hundreds of µs);
    this reads the vector's first member, its data pointer (libstdc++ layout, which
    ``tests/unit/test_worker_frames.py`` guards).
    """
    size = frame.buf.size()
    if size == 0:
        return b""
    data = ctypes.c_void_p.from_address(int(frame.buf.this)).value
    if data is None:
        return b""
    return ctypes.string_at(data, size)


_callback_thread = threading.local()


def _keep_thread_state() -> None:
    """Keep this PJSIP thread's Python thread state alive between callbacks.

    SWIG enters each callback with PyGILState_Ensure and leaves with Release; on a
    thread Python did not start, Release destroys the thread state, so the next
    frame callback (50 a second per call, on the bridge clock thread) builds a
    new one and mmaps a fresh frame stack: measured as a fifth of a busy
    worker's CPU. One unmatched Ensure keeps the state for the thread's life.
    """
    if not getattr(_callback_thread, "pinned", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _callback_thread.pinned = True


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
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


@dataclass
class Recording:
    """A recording in progress; touched by the clock thread, closed by the library thread."""

    rec_id: str
    writer: WavWriter
    endpointer: Endpointer | None  # None: a conversation, which only max_s or a command ends
    max_frames: int  # in 20 ms VAD frames
    no_input_frames: int
    stop_digits: str
    frames: int = 0
    reason: str | None = None

    @property
    def speech_s(self) -> float:
        # A conversation is not end-pointed; all of it counts.
        return self.endpointer.speech_s if self.endpointer is not None else self.frames * 0.02


class CallPort(pj.AudioMediaPort):
    """A sink on the conference bridge that receives one call's audio.

    Ports are pooled and reused: destroying one while the bridge runs crashed the
    wheel in most runs.
    """

    def __init__(self, finished: collections.deque[tuple[str, Recording]], waker: Waker) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.call_handle: str | None = None
        self.recording: Recording | None = None
        self._finished = finished
        self._waker = waker

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:  # noqa: N802 (pjsua2 API)
        _keep_thread_state()
        with self.lock:
            rec = self.recording
            if rec is None or rec.reason is not None:
                return
            # No audio this tick (nothing received yet): the tape still runs, as silence.
            pcm = (frame_bytes(frame) if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO else b"") or SILENT_FRAME
            event = None
            try:
                rec.writer.write(pcm)
                if rec.endpointer is None:
                    rec.frames += len(pcm) // VAD_FRAME_BYTES
                for start in range(0, len(pcm) - VAD_FRAME_BYTES + 1, VAD_FRAME_BYTES):
                    if rec.endpointer is None:
                        break
                    rec.frames += 1
                    event = rec.endpointer.feed(pcm[start:start + VAD_FRAME_BYTES]) or event
            except RecordingError:
                self._finish(rec, "error")
                return
            except Exception:  # an exception must not escape into the C++ bridge thread
                log.exception("recording %s failed", rec.rec_id)
                self._finish(rec, "error")
                return
            if event is Endpointer.Event.SPEECH_END:
                self._finish(rec, "silence")
            elif rec.frames >= rec.max_frames:
                self._finish(rec, "max")
            elif rec.endpointer is not None and rec.frames >= rec.no_input_frames and not rec.endpointer.heard_speech:
                self._finish(rec, "no_input")

    def stop(self, reason: str) -> Recording | None:
        """Detach the recording (library thread); the caller closes it."""
        with self.lock:
            rec = self.recording
            self.recording = None
            if rec is not None and rec.reason is None:
                rec.reason = reason
            return rec

    def _finish(self, rec: Recording, reason: str) -> None:
        rec.reason = reason
        self.recording = None
        assert self.call_handle is not None
        self._finished.append((self.call_handle, rec))
        self._waker.wake()


class Player(pj.AudioMediaPlayer):
    """Plays a list of files one after another, opening one file at a time.

    Each open WAV costs a descriptor and the wheel's select() holds 64, so a
    nine-digit tracking code read twice must not open nineteen files at once.
    """

    def __init__(self, worker: Worker, handle: str, play_id: str, files: list[str], index: int = 0) -> None:
        super().__init__()
        self.worker = worker
        self.handle = handle
        self.play_id = play_id
        self.files = files
        self.index = index

    def following(self) -> Player:
        """A fresh player for the next file: a pjsua2 player opens one file, once."""
        return Player(self.worker, self.handle, self.play_id, self.files, self.index + 1)

    @_guarded
    def onEof2(self) -> None:  # noqa: N802 (pjsua2 API)
        _keep_thread_state()
        # Destroying a player inside its own EOF callback is not allowed: defer.
        self.worker.deferred.append(lambda: self.worker.advance_play(self))
        self.worker.waker.wake()


@dataclass
class CallState:
    call: WorkerCall
    handle: str
    port: CallPort | None = None
    player: Player | None = None
    answered: bool = False
    ringing: bool = False
    media_ready: bool = False
    pending_record: dict[str, Any] | None = None
    listening: bool = False
    ended: bool = False
    outgoing: bool = False
    bridged_to: str | None = None  # the other leg whose audio this call hears
    record_peer: str | None = None  # the other leg heard by this call's recording as well


class WorkerCall(pj.Call):
    """Thin pjsua2 Call: callbacks only forward to the worker."""

    def __init__(self, worker: Worker, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.worker = worker
        self.handle = ""

    @_guarded
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        self.worker.on_call_state(self)

    @_guarded
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        self.worker.on_media_state(self)

    @_guarded
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        self.worker.on_dtmf(self, prm.digit)


class WorkerAccount(pj.Account):
    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    @_guarded
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        self.worker.on_incoming(self, prm)


class CapWatcher(pj.LogWriter):
    """Learns the library's per-process call cap from its refusal message."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def write(self, entry: pj.LogEntry) -> None:
        if "too many calls" in entry.msg:
            self.worker.cap_hit = True
        if entry.level <= 2:
            log.warning("pjsua: %s", entry.msg.strip())


@dataclass
class WorkerSettings:
    worker_id: int
    sip_host: str
    sip_port: int
    rtp_port: int
    rtp_port_range: int
    control_socket: Path
    poll_ms: int = 200
    max_calls_request: int = 64
    recycle_after_calls: int = 0  # 0: never
    pjsua_log_level: int = 2


@dataclass
class Worker:
    settings: WorkerSettings
    calls: dict[str, CallState] = field(default_factory=dict)
    deferred: collections.deque[Any] = field(default_factory=collections.deque)
    finished: collections.deque[tuple[str, Recording]] = field(default_factory=collections.deque)
    ports: list[CallPort] = field(default_factory=list)
    retired: collections.deque[tuple[float, Player]] = field(default_factory=collections.deque)
    draining: bool = False
    cap_hit: bool = False
    max_calls: int | None = None
    stopping: bool = False
    retiring: bool = False
    call_seq: int = 0

    def run(self) -> None:
        self._connect()
        self.waker = Waker(self.settings.sip_host, self.settings.sip_port)
        self.drained = threading.Event()
        self._init_library()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.send("hello", worker_id=self.settings.worker_id, pid=os.getpid(),
                  sip_port=self.settings.sip_port, max_calls=self.max_calls)
        threading.Thread(target=self._watch_control, name="control-watch", daemon=True).start()
        try:
            while not ((self.stopping or self.retiring) and not self.calls):
                self.ep.libHandleEvents(self.settings.poll_ms)
                self._drain_control()
                self.drained.set()
                self._run_deferred()
                self._purge_retired()
                self._close_finished()
                if self.cap_hit:
                    self._learn_cap()
        finally:
            self._shutdown()

    # -- library -----------------------------------------------------------
    def _init_library(self) -> None:
        s = self.settings
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = s.max_calls_request
        cfg.uaConfig.userAgent = "softswitch-111"
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.channelCount = 1
        cfg.medConfig.threadCnt = 1
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0  # no sound device, so nothing to cancel echo of
        cfg.logConfig.level = s.pjsua_log_level
        cfg.logConfig.consoleLevel = s.pjsua_log_level
        cfg.logConfig.msgLogging = 0  # SIP traces stay off: keyed digits never reach a log
        self.cap_watcher = CapWatcher(self)
        cfg.logConfig.writer = self.cap_watcher
        cfg.logConfig.decor = 0
        self.ep.libInit(cfg)
        self.ep.audDevManager().setNullDev()
        tcfg = pj.TransportConfig()
        tcfg.port = s.sip_port
        tcfg.boundAddress = s.sip_host
        tcfg.publicAddress = s.sip_host
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        for codec in self.ep.codecEnum2():
            keep = codec.codecId.split("/")[0] in ("PCMA", "PCMU")
            self.ep.codecSetPriority(codec.codecId, 200 if codec.codecId.startswith("PCMA") else 150 if keep else 0)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:111@{s.sip_host}:{s.sip_port}"
        acfg.mediaConfig.transportConfig.port = s.rtp_port
        acfg.mediaConfig.transportConfig.portRange = s.rtp_port_range
        acfg.mediaConfig.transportConfig.boundAddress = s.sip_host
        acfg.mediaConfig.transportConfig.publicAddress = s.sip_host
        acfg.natConfig.iceEnabled = False
        acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
        self.account = WorkerAccount(self)
        self.account.create(acfg, True)
        self.fmt = pj.MediaFormatAudio()
        self.fmt.init(pj.PJMEDIA_FORMAT_PCM, 8000, 1, LISTEN_FRAME_MS * 1000, 16)

    def _learn_cap(self) -> None:
        self.cap_hit = False
        cap = sum(1 for c in self.calls.values() if not c.ended)
        if cap and cap != self.max_calls:
            self.max_calls = cap
            self.send("capacity", max_calls=cap)

    def _shutdown(self) -> None:
        for state in list(self.calls.values()):
            self._end_call(state, 0, "worker stopping")
        self.calls.clear()
        self.deferred.clear()
        self.retired.clear()
        for port in self.ports:
            del port
        self.ports.clear()
        del self.account
        self.ep.libDestroy()
        self.stopping = True
        self.waker.close()
        self.sock.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # SIGTERM/SIGINT: take no new calls; finish running ones as the control decides.
        self.draining = True
        self.stopping = True

    # -- control socket ----------------------------------------------------
    def _watch_control(self) -> None:
        """Wake the library thread when a command arrives; touches no pjsua2 object."""
        while not self.stopping:
            readable, _, _ = select.select([self.sock], [], [], 1.0)
            if readable:
                self.drained.clear()
                self.waker.wake()
                self.drained.wait(1.0)

    def _connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(str(self.settings.control_socket))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.setblocking(False)
        self.inbox = bytearray()

    def send(self, message_type: str, **fields: Any) -> None:
        data = protocol.encode(message_type, **fields)
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            # Control is gone: the supervisor is gone with it; stop cleanly.
            log.error("control socket lost: %s", exc)
            self.stopping = True
        finally:
            self.sock.setblocking(False)

    def _drain_control(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                chunk = b""
            if not chunk:
                log.error("control closed the socket; draining")
                self.stopping = self.draining = True
                for state in list(self.calls.values()):
                    self._hangup(state)
                return
            self.inbox += chunk
        while (newline := self.inbox.find(b"\n")) >= 0:
            line = bytes(self.inbox[:newline])
            del self.inbox[: newline + 1]
            try:
                self._handle(protocol.decode(line, protocol.COMMAND_TYPES))
            except ValueError as exc:
                log.error("bad command: %s", exc)
            except pj.Error as exc:
                log.error("command failed: %s", exc.info())

    def _handle(self, cmd: dict[str, Any]) -> None:
        kind = cmd["type"]
        if kind == "drain":
            self.draining = True
            return
        if kind == "dial":
            self._dial(str(cmd["call"]), str(cmd["uri"]))
            return
        state = self.calls.get(cmd.get("call", ""))
        if state is None or state.ended:
            return  # the call ended while the command was on its way
        if kind == "answer":
            prm = pj.CallOpParam()
            prm.statusCode = 200
            state.call.answer(prm)
        elif kind == "reject":
            prm = pj.CallOpParam()
            prm.statusCode = int(cmd["status_code"])
            state.call.hangup(prm)
        elif kind == "play":
            self._start_play(state, str(cmd["play_id"]), [str(f) for f in cmd["files"]])
        elif kind == "stop_play":
            self._stop_play(state, completed=False)
        elif kind == "record":
            if state.media_ready:
                self._start_record(state, cmd)
            else:
                state.pending_record = cmd
        elif kind == "stop_record":
            rec = state.port.stop("stopped") if state.port else None
            if rec is not None:
                self._report_recording(state.handle, rec)
        elif kind == "hangup":
            self._hangup(state)
        elif kind == "bridge":
            self._bridge(state, self.calls.get(str(cmd["peer"])))

    # -- calls -------------------------------------------------------------
    def on_incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        call = WorkerCall(self, account, prm.callId)
        if self.draining:
            op = pj.CallOpParam()
            op.statusCode = 503
            call.hangup(op)
            return
        self.call_seq += 1
        recycle = self.settings.recycle_after_calls
        if recycle and self.call_seq >= recycle:
            # 2.15.1 leaks a bridge slot now and then under churn; a fresh process
            # is cheaper than finding out. Finish these calls, take no more, exit.
            log.info("worker %d retiring after %d calls", self.settings.worker_id, self.call_seq)
            self.retiring = self.draining = True
        handle = f"w{self.settings.worker_id}-{os.getpid()}-{self.call_seq}"
        call.handle = handle
        self.calls[handle] = CallState(call=call, handle=handle)
        info = call.getInfo()
        message = prm.rdata.wholeMsg.encode("utf-8", "replace")
        match = SOURCE_HEADER.search(message)
        source = match.group(1).decode() if match else prm.rdata.srcAddress
        request_line = message.split(b"\r\n", 1)[0].split(b" ")
        request_uri = request_line[1].decode("utf-8", "replace") if len(request_line) == 3 else info.localUri
        self.send("incoming", call=handle, sip_call_id=info.callIdString, from_uri=info.remoteUri,
                  to_uri=info.localUri, request_uri=request_uri, source=source)

    def on_call_state(self, call: WorkerCall) -> None:
        state = self.calls.get(call.handle)
        if state is None:
            return
        info = call.getInfo()
        if info.state == pj.PJSIP_INV_STATE_EARLY and state.outgoing and not state.ringing:
            state.ringing = True
            self.send("ringing", call=state.handle)
        elif info.state == pj.PJSIP_INV_STATE_CONFIRMED and not state.answered:
            state.answered = True
            self.send("answered", call=state.handle)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._end_call(state, info.lastStatusCode, info.lastReason)
            # Drop the Call object now: a later destructor would hang up whichever
            # new call reused this slot.
            del self.calls[state.handle]

    def on_media_state(self, call: WorkerCall) -> None:
        state = self.calls.get(call.handle)
        if state is None or state.media_ready:
            return
        try:
            call.getAudioMedia(-1)  # raises until the call has active audio
        except pj.Error:
            return
        state.port = self._take_port(state.handle)
        state.media_ready = True
        if state.pending_record is not None:
            self._start_record(state, state.pending_record)
            state.pending_record = None

    def on_dtmf(self, call: WorkerCall, digit: str) -> None:
        state = self.calls.get(call.handle)
        if state is None:
            return
        self.send("dtmf", call=state.handle, digit=digit)
        port = state.port
        if port is not None:
            rec = port.recording
            if rec is not None and digit in rec.stop_digits:
                stopped = port.stop("digit")
                if stopped is not None:
                    self._report_recording(state.handle, stopped)

    def _dial(self, handle: str, uri: str) -> None:
        """An outgoing leg (to an agent's softphone, through the SIP front)."""
        if handle in self.calls:
            self.send("error", call=handle, detail="handle in use")
            return
        call = WorkerCall(self, self.account)
        call.handle = handle
        state = CallState(call=call, handle=handle, outgoing=True)
        self.calls[handle] = state
        prm = pj.CallOpParam(True)
        try:
            call.makeCall(uri, prm)
        except pj.Error as exc:
            # Typically the engine's call cap: this worker has no slot for the leg.
            log.warning("dial %s failed: %s", handle, exc.info())
            del self.calls[handle]
            self.send("hangup", call=handle, status_code=503, reason=f"cannot dial: {exc.reason}")

    def _bridge(self, state: CallState, peer: CallState | None) -> None:
        """Two-way audio between two calls of this worker (caller and agent)."""
        if peer is None or peer.ended:
            self.send("error", call=state.handle, detail="bridge peer is gone")
            return
        self._stop_play(state, completed=False)
        self._stop_play(peer, completed=False)
        try:
            ours, theirs = state.call.getAudioMedia(-1), peer.call.getAudioMedia(-1)
            ours.startTransmit(theirs)
            theirs.startTransmit(ours)
        except pj.Error as exc:
            self.send("error", call=state.handle, detail=f"cannot bridge: {exc.reason}")
            return
        state.bridged_to, peer.bridged_to = peer.handle, state.handle

    def _hangup(self, state: CallState) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = 200 if state.answered else 480
        try:
            state.call.hangup(prm)
        except pj.Error as exc:
            log.warning("hangup of %s failed: %s", state.handle, exc.info())

    def _end_call(self, state: CallState, status_code: int, reason: str) -> None:
        if state.ended:
            return
        state.ended = True
        self._stop_play(state, completed=False)
        if state.port is not None:
            rec = state.port.stop("hangup")
            if rec is not None:
                self._report_recording(state.handle, rec)
            self._close_finished()
            self._release_port(state.port)
            state.port = None
        self.send("hangup", call=state.handle, status_code=status_code, reason=reason)

    # -- ports -------------------------------------------------------------
    def _take_port(self, handle: str) -> CallPort:
        for port in self.ports:
            if port.call_handle is None:
                port.call_handle = handle
                return port
        port = CallPort(self.finished, self.waker)
        port.createPort(f"call{len(self.ports)}", self.fmt)
        port.call_handle = handle
        self.ports.append(port)
        return port

    def _release_port(self, port: CallPort) -> None:
        port.stop("hangup")
        port.call_handle = None

    # -- playback ----------------------------------------------------------
    def _start_play(self, state: CallState, play_id: str, files: list[str]) -> None:
        self._stop_play(state, completed=False)
        player = Player(self, state.handle, play_id, files)
        state.player = player
        self._open_current(state, player)

    def _open_current(self, state: CallState, player: Player) -> None:
        while player.index < len(player.files):
            try:
                player.createPlayer(player.files[player.index], pj.PJMEDIA_FILE_NO_LOOP)
                player.startTransmit(state.call.getAudioMedia(-1))
                return
            except pj.Error as exc:
                self.send("error", call=state.handle, detail=f"cannot play {player.files[player.index]}: {exc.reason}")
                state.player = player = player.following()
        state.player = None
        self.send("play_done", call=state.handle, play_id=player.play_id, completed=True)

    def advance_play(self, player: Player) -> None:
        state = self.calls.get(player.handle)
        if state is None or state.player is not player:
            return
        state.player = player.following()
        self._open_current(state, state.player)

    def _stop_play(self, state: CallState, completed: bool) -> None:
        player = state.player
        if player is None:
            return
        state.player = None
        # Disconnected now, destroyed later: the clock thread may be inside this
        # player's frame or EOF callback this very moment.
        with contextlib.suppress(pj.Error):
            player.stopTransmit(state.call.getAudioMedia(-1))
        self.retired.append((time.monotonic() + PLAYER_GRACE_S, player))
        self.send("play_done", call=state.handle, play_id=player.play_id, completed=completed)

    def _purge_retired(self) -> None:
        now = time.monotonic()
        while self.retired and self.retired[0][0] <= now:
            self.retired.popleft()

    def _run_deferred(self) -> None:
        while self.deferred:
            self.deferred.popleft()()

    # -- recording ---------------------------------------------------------
    def _start_record(self, state: CallState, cmd: dict[str, Any]) -> None:
        assert state.port is not None
        path = Path(cmd["path"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = WavWriter(path)
        except OSError as exc:
            self.send("record_done", call=state.handle, rec_id=cmd["rec_id"], path=str(path), duration_s=0.0,
                      sha256="", reason="error", speech_s=0.0, complete=False, detail=str(exc))
            return
        frames_per_s = 1000 // 20  # counted in VAD frames
        peer = cmd.get("peer")
        rec = Recording(
            rec_id=str(cmd["rec_id"]),
            writer=writer,
            # A conversation (both parties on one tape) is not end-pointed: only max_s or a command ends it.
            endpointer=None if peer else Endpointer(silence_s=float(cmd["silence_s"])),
            max_frames=int(float(cmd["max_s"]) * frames_per_s),
            no_input_frames=int(float(cmd["no_input_s"]) * frames_per_s),
            stop_digits=str(cmd.get("stop_digits", "")),
        )
        old = state.port.stop("stopped")
        if old is not None:
            self._report_recording(state.handle, old)
        self._listen(state, False)  # re-connect with this recording's sources
        with state.port.lock:
            state.port.recording = rec
        state.record_peer = str(peer) if peer else None
        self._listen(state, True)

    def _listen(self, state: CallState, on: bool) -> None:
        """Connect the caller's audio to the port only while recording.

        Every connected port costs a Python callback per 20 ms frame; most of a
        call is prompts, when nobody needs the caller's audio.
        """
        if state.listening == on or state.port is None:
            return
        peer = self.calls.get(state.record_peer) if state.record_peer else None
        try:
            sources = [state.call.getAudioMedia(-1)]
            if peer is not None and peer.media_ready and not peer.ended:
                # The bridge mixes every source sent to a port: both parties on one tape.
                sources.append(peer.call.getAudioMedia(-1))
            for audio in sources:
                if on:
                    audio.startTransmit(state.port)
                else:
                    audio.stopTransmit(state.port)
            state.listening = on
        except pj.Error as exc:
            if on:
                log.error("%s: cannot connect the recorder: %s", state.handle, exc.info())
            state.listening = False

    def _close_finished(self) -> None:
        while self.finished:
            handle, rec = self.finished.popleft()
            self._report_recording(handle, rec)

    def _report_recording(self, handle: str, rec: Recording) -> None:
        state = self.calls.get(handle)
        if state is not None and state.port is not None and state.port.recording is None:
            self._listen(state, False)
        try:
            info = rec.writer.close()
        except RecordingError as exc:
            # The samples already written stay on disk; the control process repairs the header.
            log.error("closing %s failed: %s", rec.writer.path, exc)
            self.send("record_done", call=handle, rec_id=rec.rec_id, path=str(rec.writer.path),
                      duration_s=rec.writer.duration_s, sha256="", reason="error",
                      speech_s=rec.speech_s, complete=False, detail=str(exc))
            return
        self.send("record_done", call=handle, rec_id=rec.rec_id, path=str(info.path), duration_s=info.duration_s,
                  sha256=info.sha256, reason=rec.reason or "stopped", speech_s=rec.speech_s,
                  complete=rec.reason != "error")


def run_worker(settings: WorkerSettings) -> None:
    """Entry point of a worker process (forked by the supervisor or started from the command line)."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s worker{settings.worker_id} %(levelname)s %(message)s")
    # A crash inside the library leaves the Python stacks of every thread in the log.
    faulthandler.enable(all_threads=True)
    Worker(settings).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="softswitch media worker (one PJSUA2 endpoint)")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--sip-host", default="127.0.0.1")
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--rtp-port-range", type=int, default=100)
    parser.add_argument("--control-socket", type=Path, required=True)
    parser.add_argument("--poll-ms", type=int, default=200)
    parser.add_argument("--max-calls-request", type=int, default=64)
    parser.add_argument("--recycle-after-calls", type=int, default=0)
    args = parser.parse_args(argv)
    run_worker(WorkerSettings(
        worker_id=args.id, sip_host=args.sip_host, sip_port=args.sip_port, rtp_port=args.rtp_port,
        rtp_port_range=args.rtp_port_range, control_socket=args.control_socket, poll_ms=args.poll_ms,
        max_calls_request=args.max_calls_request, recycle_after_calls=args.recycle_after_calls,
    ))


if __name__ == "__main__":
    main()
