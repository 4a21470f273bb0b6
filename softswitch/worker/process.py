"""Media worker: one process, one PJSUA2 endpoint holding hundreds of calls, driven over the control protocol.

Threads, and what runs on each:
- the library thread (the process's main thread) makes every pjsua2 call: it
  alternates ``libHandleEvents`` (SIP) with the control socket, and reads the
  recordings in progress to end-point them (``media.tape.TapeFollower``);
- PJSIP's media thread receives RTP, in C;
- the conference bridge's clock thread mixes, encodes and sends RTP and writes
  every recording with PJSIP's own WAV writer, in C. Python runs there never
  per audio frame: only when a prompt file ends (``Player.onEof2``), to hand
  that to the library thread.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import heapq
import itertools
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pjsua2 as pj

from media.tape import TapeFollower
from media.vad import Endpointer
from media.wavfile import header_finished, read_format, repair_wav, wav_info
from softswitch import protocol
from softswitch.worker import pjsip
from softswitch.worker.callbacks import CapWatcher, Player, WorkerAccount, WorkerCall, WorkerEndpoint
from softswitch.worker.engine import library_call_cap
from softswitch.worker.invite import describe_invite, refer_target
from softswitch.worker.settings import WorkerSettings

log = logging.getLogger("softswitch.worker")

KEEPALIVE = b"\r\n\r\n"  # RFC 5626 keep-alive: PJSIP drops it without a log line
PLAYER_GRACE_S = 0.2  # a stopped player outlives any bridge tick that was using it
# Recordings are read this often while any is in progress: the end of speech is
# heard within about this much (plus the writer's 60 ms flush).
FOLLOW_S = 0.06
# The engine finishes a WAV header on its clock thread after the recorder is
# destroyed; if it has not within this time, the header is repaired here.
FINISH_TIMEOUT_S = 2.0
# A prompt file whose end the engine did not report this long after its length
# is taken as played: a lost end-of-file event must never leave a call waiting.
PROMPT_LATE_S = 1.0
# How often the calls' received RTP is counted, for the RTP timeout.
RTP_CHECK_S = 2.0
# After the apology's own length, before the hang-up: the last RTP packets leave.
APOLOGY_MARGIN_S = 0.5


class Waker:
    """Ends the library thread's ``libHandleEvents`` wait early from any thread.

    The library's poll cannot watch our control socket, so the loop would
    otherwise see a command only when its timeout expires. A keep-alive
    datagram to the worker's own SIP port wakes the poll at once; that lets the
    timeout be long, which is what an idle worker costs.
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


_play_seq = itertools.count()


@dataclass
class Recording:
    """One recording: written by the engine, followed and closed by the library thread."""

    handle: str
    rec_id: str
    path: Path
    recorder: pj.AudioMediaRecorder | None
    tape: TapeFollower
    stop_digits: str
    sources: tuple[str, ...] = ()  # the legs whose audio the tape takes (two for a conversation)
    reason: str | None = None  # set once it ends
    finish_by: float = 0.0  # when the engine should have finished the header
    # Events held back until this recording is reported: the call's hang-up must
    # reach the control process after the recording, never before it.
    then: list[protocol.Event] = field(default_factory=list)



class LegState(enum.Enum):
    OFFERED = "offered"  # an incoming call, not answered yet
    DIALLING = "dialling"  # an outgoing leg, no answer yet
    RINGING = "ringing"  # an outgoing leg with a provisional answer
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass
class Leg:
    """One call of this worker, incoming (a caller) or outgoing (an agent's leg)."""

    call: WorkerCall
    handle: str
    state: LegState
    media_ready: bool = False
    player: Player | None = None
    recording: Recording | None = None
    pending_record: protocol.Record | None = None  # asked for before the audio was up
    bridged_to: str | None = None  # the leg this one talks with
    end_reason: str | None = None  # why this worker ended the call, when it did
    rx_packets: int = -1  # RTP received by the last check
    rx_seen_at: float = 0.0  # when RTP was last seen arriving



TAPE = "tape"  # in a monitor's connections: the conversation's recorder


@dataclass
class Monitoring:
    """A supervisor's leg on a caller–agent bridge, and the connections its mode makes."""

    supervisor: str
    caller: str
    agent: str
    mode: str
    # (source leg, sink leg or TAPE) as connected now.
    links: frozenset[tuple[str, str]] = frozenset()

    def wanted(self) -> frozenset[tuple[str, str]]:
        """Listen hears both; whisper also speaks to the agent; barge to both. Their voice is evidence."""
        links = {(self.caller, self.supervisor), (self.agent, self.supervisor)}
        if self.mode in ("whisper", "barge"):
            links |= {(self.supervisor, self.agent), (self.supervisor, TAPE)}
        if self.mode == "barge":
            links.add((self.supervisor, self.caller))
        return frozenset(links)

    def legs(self) -> tuple[str, str, str]:
        return self.supervisor, self.caller, self.agent


def _playing_time_s(path: str) -> float:
    try:
        return read_format(Path(path)).duration_s
    except (OSError, ValueError):
        # Not a header we read: the longest it could play, at 8 kHz and a byte a sample.
        return os.path.getsize(path) / 8000 if os.path.exists(path) else 0.0


def _raise_file_limit() -> int:
    """Every call holds sockets, a recording and prompt files: take all descriptors the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Worker:
    settings: WorkerSettings
    calls: dict[str, Leg] = field(default_factory=dict)
    monitors: dict[str, Monitoring] = field(default_factory=dict)  # by the supervisor's leg
    _refers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))  # names REFERs' legs
    deferred: collections.deque[Callable[[], None]] = field(default_factory=collections.deque)
    retired: collections.deque[tuple[float, Player]] = field(default_factory=collections.deque)
    recordings: dict[tuple[str, str], Recording] = field(default_factory=dict)  # in progress
    closing: list[Recording] = field(default_factory=list)  # ended, header not yet finished
    outbox: bytearray = field(default_factory=bytearray)
    # (when, seq, handle, play_id, index): by when each prompt file must have ended.
    play_deadlines: list[tuple[float, int, str, str, int]] = field(default_factory=list)
    draining: bool = False
    refusing: bool = False  # told to take no new calls for now (Admit)
    cap_hit: bool = False
    cap_reported: bool = False  # the library told its call cap; none is learnt then
    max_calls: int | None = None
    stopping: bool = False
    retiring: bool = False
    control_lost: bool = False
    apology_ends: float = 0.0  # monotonic; when the control link was lost, the last answered calls end
    call_seq: int = 0
    next_follow: float = 0.0
    next_rtp_check: float = 0.0

    def run(self) -> None:
        self._connect()
        self.waker = Waker(self.settings.sip_host, self.settings.sip_port)
        self.drained = threading.Event()
        files = _raise_file_limit()
        self._init_library()
        self.max_calls = library_call_cap(pj)
        self.cap_reported = self.max_calls is not None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("worker %d: pjsua2 %s, %s call slots, %d file descriptors", self.settings.worker_id,
                 self.ep.libVersion().full, self.max_calls, files)
        self.send(protocol.Hello(worker_id=self.settings.worker_id, pid=os.getpid(),
                                 sip_port=self.settings.sip_port, max_calls=self.max_calls))
        self._flush()
        threading.Thread(target=self._watch_control, name="control-watch", daemon=True).start()
        try:
            while not ((self.stopping or self.retiring) and not self.calls and not self.closing):
                busy = self.recordings or self.closing
                self.ep.libHandleEvents(int(FOLLOW_S * 1000) if busy else self.settings.poll_ms)
                self._drain_control()
                self.drained.set()
                self._run_deferred()
                self._purge_retired()
                now = time.monotonic()
                if self.recordings and now >= self.next_follow:
                    self._follow_recordings(now)
                    self.next_follow = now + FOLLOW_S
                if self.closing:
                    self._report_closed(now)
                if self.play_deadlines and self.play_deadlines[0][0] <= now:
                    self._overdue_plays(now)
                if self.settings.rtp_timeout_s and now >= self.next_rtp_check:
                    self._check_rtp(now)
                    self.next_rtp_check = now + RTP_CHECK_S
                if self.cap_hit:
                    self._learn_cap()
                if self.apology_ends and now >= self.apology_ends:
                    self.apology_ends = 0.0
                    for leg in list(self.calls.values()):
                        self._hangup(leg)
                self._flush()
        finally:
            self._shutdown()

    # -- library -----------------------------------------------------------
    def _init_library(self) -> None:
        s = self.settings
        self.ep = WorkerEndpoint(self)
        self.ep.libCreate()
        # SIP is polled on this thread only (threadCnt 0), so its callbacks run
        # here; the rest (DTMF on the media thread, a player's end) hand
        # themselves over with post(). pjsua2's own hand-over (mainThreadOnly)
        # queues them until the next poll and drops the newest beyond 1,024:
        # digits were lost when hundreds of callers keyed at once.
        # SIP traces stay off (msg_logging): keyed digits never reach a log.
        # Media ports: a call's stream, its prompt player, its recorder, a conversation's peer.
        cfg = pjsip.endpoint_config("softswitch-111", s.pjsua_log_level, max_calls=s.max_calls,
                                    max_media_ports=4 * s.max_calls + 8)
        cfg.medConfig.threadCnt = 1
        self.cap_watcher = CapWatcher(self)
        cfg.logConfig.writer = self.cap_watcher
        cfg.logConfig.decor = 0
        pjsip.start(self.ep, cfg, s.sip_host, s.sip_port)
        acfg = pjsip.account_config(f"sip:111@{s.sip_host}:{s.sip_port}", s.sip_host, s.rtp_port, s.rtp_port_range)
        # RFC 4028 session timers, when the far end supports them: a dialog whose
        # refresh fails is ended by the library.
        if s.session_expires_s:
            acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
            acfg.callConfig.timerSessExpiresSec = s.session_expires_s
            acfg.callConfig.timerMinSESec = 90
        else:
            acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        self.account = WorkerAccount(self)
        self.account.create(acfg, True)

    def _learn_cap(self) -> None:
        self.cap_hit = False
        if self.cap_reported:
            # The library said its cap at start: a refusal under a burst (a flood of INVITEs that
            # end at once) must not be read as a smaller cap, or the front would send it one call.
            return
        cap = sum(1 for c in self.calls.values() if c.state is not LegState.ENDED)
        if cap and cap != self.max_calls:
            self.max_calls = cap
            self.send(protocol.Capacity(cap))

    def _shutdown(self) -> None:
        for leg in list(self.calls.values()):
            self._end_call(leg, 0, "worker stopping")
        self.calls.clear()
        # The clock thread finishes the headers of the recordings just stopped.
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while self.closing and time.monotonic() < deadline:
            self.ep.libHandleEvents(20)
            self._report_closed(time.monotonic())
        self._report_closed(float("inf"))
        with contextlib.suppress(OSError):
            self._flush()
        self.deferred.clear()
        self.retired.clear()
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

    def send(self, event: protocol.Event) -> None:
        """Queue an event; the loop sends what queued up once per turn, in order."""
        self.outbox += protocol.encode(event)

    def _flush(self) -> None:
        if self.control_lost:
            self.outbox.clear()  # nobody to tell: the next control process reads the tapes off the disk
            return
        if not self.outbox:
            return
        data, self.outbox = bytes(self.outbox), bytearray()
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            log.error("control socket lost: %s", exc)
            self._lose_control()
        finally:
            self.sock.setblocking(False)

    def _drain_control(self) -> None:
        while not self.control_lost:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                chunk = b""
            if not chunk:
                log.error("control closed the socket")
                self._lose_control()
                return
            self.inbox += chunk
        while (newline := self.inbox.find(b"\n")) >= 0:
            line = bytes(self.inbox[:newline])
            del self.inbox[: newline + 1]
            try:
                self._handle(protocol.decode_command(line))
            except ValueError as exc:
                log.error("bad command: %s", exc)
            except pj.Error as exc:
                log.error("command failed: %s", exc.info())

    def _lose_control(self) -> None:
        """The control process is gone (and its supervisor with it): no IVR, no queue, no case store.
        Every tape is closed now, so what each caller said is on disk for the next control process to
        attach; answered calls hear an apology, then the worker hangs up and stops."""
        if self.control_lost:
            return
        self.control_lost = self.stopping = self.draining = True
        for monitoring in list(self.monitors.values()):
            self._end_monitor(monitoring)
        longest = 0.0
        for leg in list(self.calls.values()):
            if leg.recording is not None:
                self._end_recording(leg, "stopped")
            if leg.state is not LegState.CONFIRMED or not self.settings.apology:
                self._hangup(leg)
                continue
            self._unbridge(leg)
            self._start_play(leg, "apology", [self.settings.apology])
            longest = _playing_time_s(self.settings.apology)
        if longest:
            self.apology_ends = time.monotonic() + longest + APOLOGY_MARGIN_S
        log.error("worker %d: control lost; %d calls end%s", self.settings.worker_id, len(self.calls),
                  f" after an apology of {longest:.1f} s" if longest else "")

    def _unbridge(self, leg: Leg) -> None:
        peer = self.calls.get(leg.bridged_to) if leg.bridged_to else None
        leg.bridged_to = None
        if peer is None or peer.state is LegState.ENDED:
            return
        peer.bridged_to = None
        with contextlib.suppress(pj.Error):
            ours, theirs = leg.call.getAudioMedia(-1), peer.call.getAudioMedia(-1)
            ours.stopTransmit(theirs)
            theirs.stopTransmit(ours)

    def _handle(self, cmd: protocol.Command) -> None:
        match cmd:
            case protocol.Drain():
                self.draining = True
            case protocol.Admit(accept=accept):
                self.refusing = not accept
                log.warning("worker %d: %s new calls", self.settings.worker_id, "taking" if accept else "refusing")
                return
            case protocol.Dial(call=handle, uri=uri):
                self._dial(handle, uri)
                return
        leg = self.calls.get(getattr(cmd, "call", ""))
        if leg is None or leg.state is LegState.ENDED:
            return  # the call ended while the command was on its way
        match cmd:
            case protocol.Answer():
                prm = pj.CallOpParam()
                prm.statusCode = 200
                leg.call.answer(prm)
            case protocol.Reject(status_code=status_code):
                prm = pj.CallOpParam()
                prm.statusCode = status_code
                leg.call.hangup(prm)
            case protocol.Play(play_id=play_id, files=files):
                self._start_play(leg, play_id, list(files))
            case protocol.StopPlay():
                self._stop_play(leg, completed=False)
            case protocol.Record():
                if leg.media_ready:
                    self._start_record(leg, cmd)
                else:
                    leg.pending_record = cmd
            case protocol.StopRecord():
                if leg.recording is not None:
                    self._end_recording(leg, "stopped")
            case protocol.HangupCall():
                self._hangup(leg)
            case protocol.Bridge(peer=peer):
                self._bridge(leg, self.calls.get(peer))
            case protocol.Monitor(caller=caller, agent=agent, mode=mode):
                self._monitor(leg, caller, agent, mode)

    # -- calls -------------------------------------------------------------
    def on_incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        call = WorkerCall(self, account, prm.callId)
        front = self.settings.front
        if front and prm.rdata.srcAddress != front:
            # Only the front routes calls here and stamps X-111-Source; anyone else could claim any source.
            log.warning("worker %d: INVITE from %s, not the front: refused 403", self.settings.worker_id,
                        prm.rdata.srcAddress)
            op = pj.CallOpParam()
            op.statusCode = 403
            call.hangup(op)
            return
        if self.draining or self.refusing:
            op = pj.CallOpParam()
            op.statusCode = 503  # the front tries another worker
            call.hangup(op)
            return
        self.call_seq += 1
        recycle = self.settings.recycle_after_calls
        if recycle and self.call_seq >= recycle:
            # A fresh process is cheaper than finding out what churn leaked (2.15.1
            # leaked bridge slots). Finish these calls, take no more, exit.
            log.info("worker %d retiring after %d calls", self.settings.worker_id, self.call_seq)
            self.retiring = self.draining = True
        handle = f"w{self.settings.worker_id}-{os.getpid()}-{self.call_seq}"
        call.handle = handle
        self.calls[handle] = Leg(call=call, handle=handle, state=LegState.OFFERED)
        info = call.getInfo()
        invite = describe_invite(prm.rdata.wholeMsg, prm.rdata.srcAddress, info.localUri)
        self.send(protocol.Incoming(call=handle, sip_call_id=info.callIdString, from_uri=info.remoteUri,
                                    to_uri=info.localUri, request_uri=invite.request_uri, source=invite.source))

    def _set_state(self, leg: Leg, new: LegState) -> None:
        """The one place a leg's state changes, and the events each change sends."""
        if leg.state is new or leg.state is LegState.ENDED:
            return
        log.debug("%s: %s -> %s", leg.handle, leg.state.value, new.value)
        leg.state = new
        if new is LegState.RINGING:
            self.send(protocol.Ringing(leg.handle))
        elif new is LegState.CONFIRMED:
            self.send(protocol.Answered(leg.handle))

    def on_call_state(self, call: WorkerCall) -> None:
        leg = self.calls.get(call.handle)
        if leg is None:
            return
        info = call.getInfo()
        if info.state == pj.PJSIP_INV_STATE_EARLY and leg.state is LegState.DIALLING:
            self._set_state(leg, LegState.RINGING)
        elif info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self._set_state(leg, LegState.CONFIRMED)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._end_call(leg, info.lastStatusCode, info.lastReason)
            # Drop the Call object now: a later destructor would hang up whichever
            # new call reused this slot.
            del self.calls[leg.handle]

    def on_media_state(self, call: WorkerCall) -> None:
        leg = self.calls.get(call.handle)
        if leg is None or leg.state is LegState.ENDED:
            return
        try:
            call.getAudioMedia(-1)  # raises until the call has active audio
        except pj.Error:
            return
        if not leg.media_ready:
            leg.media_ready = True
            leg.rx_seen_at = time.monotonic()
            if leg.pending_record is not None:
                self._start_record(leg, leg.pending_record)
                leg.pending_record = None
            return
        # A re-INVITE or UPDATE (hold, resume, a new address) may have rebuilt the
        # stream: a new bridge port without the old one's connections.
        self._rewire(leg)

    def _rewire(self, leg: Leg) -> None:
        """Connect this leg's audio again to what it played, recorded and talked with."""
        try:
            audio = leg.call.getAudioMedia(-1)
            if leg.player is not None:
                leg.player.startTransmit(audio)
            peer = self.calls.get(leg.bridged_to) if leg.bridged_to else None
            # A conversation's tape is the caller's leg's recording, fed by both legs.
            for rec in (leg.recording, peer.recording if peer is not None else None):
                if rec is not None and leg.handle in rec.sources and rec.recorder is not None:
                    audio.startTransmit(rec.recorder)
            if peer is not None and peer.state is not LegState.ENDED:
                theirs = peer.call.getAudioMedia(-1)
                audio.startTransmit(theirs)
                theirs.startTransmit(audio)
        except pj.Error as exc:
            log.error("%s: cannot reconnect the renewed media: %s", leg.handle, exc.info())
            return
        for monitoring in self._monitors_of(leg.handle):
            # The new port has none of the old one's connections: make them all again.
            self._link_monitor(monitoring, monitoring.links)
        log.info("%s: media renewed and reconnected", leg.handle)

    def post(self, job: Callable[[], None]) -> None:
        """Run job on the library thread soon (from any thread); jobs keep their order."""
        self.deferred.append(job)
        self.waker.wake()

    def on_dtmf(self, handle: str, digit: str) -> None:
        leg = self.calls.get(handle)
        if leg is None or leg.state is LegState.ENDED:
            return
        self.send(protocol.Dtmf(leg.handle, digit))
        rec = leg.recording
        if rec is not None and digit in rec.stop_digits:
            self._end_recording(leg, "digit")

    def on_transfer_request(self, call: WorkerCall, refer_to: str) -> WorkerCall | None:
        """An agent's phone REFERs the caller it talks with to another user at the front (``transfer_targets``:
        an agent, an agency's line): the new leg for the library to dial, the control process told of it
        (which hands the caller over, or hangs the leg up when it may not). Anything else is refused: a
        REFER elsewhere, with Replaces, from the caller's own leg (a trunk may not move its caller), or from
        an agent's leg that is not talking with its caller (a consultation)."""
        leg = self.calls.get(call.handle)
        user = refer_target(refer_to, self.settings.front)
        tape = self._conversation_tape(leg) if leg is not None else None
        # An agent's leg: a party of the caller's conversation tape, bridged to that caller.
        if (leg is None or tape is None or tape.handle == leg.handle or leg.bridged_to != tape.handle
                or leg.state is not LegState.CONFIRMED or user not in self.settings.transfer_targets
                or self.draining):
            log.warning("%s: REFER refused (%s)", call.handle, "not a transfer target" if leg else "no such leg")
            return None
        handle = f"{call.handle}-refer{next(self._refers)}"
        new = WorkerCall(self, self.account)
        new.handle = handle
        self.calls[handle] = Leg(call=new, handle=handle, state=LegState.DIALLING)
        self.send(protocol.Referred(call.handle, handle, user))
        log.info("%s: REFER accepted, dialling it as %s", call.handle, handle)
        return new

    def _dial(self, handle: str, uri: str) -> None:
        """An outgoing leg (to an agent's softphone, through the SIP front)."""
        if handle in self.calls:
            self.send(protocol.Error(handle, "handle in use"))
            return
        call = WorkerCall(self, self.account)
        call.handle = handle
        self.calls[handle] = Leg(call=call, handle=handle, state=LegState.DIALLING)
        prm = pj.CallOpParam(True)
        try:
            call.makeCall(uri, prm)
        except pj.Error as exc:
            # Typically the engine's call cap: this worker has no slot for the leg.
            log.warning("dial %s failed: %s", handle, exc.info())
            del self.calls[handle]
            self.send(protocol.Hangup(handle, 503, f"cannot dial: {exc.reason}"))

    def _bridge(self, leg: Leg, peer: Leg | None) -> None:
        """Two-way audio between two calls of this worker (caller and agent, or an agent and a colleague it
        consults). A leg bridged to another leaves its bridge (a transfer, the caller on hold), and the
        caller's conversation tape goes on with the new party on it."""
        if peer is None or peer.state is LegState.ENDED:
            self.send(protocol.Error(leg.handle, "bridge peer is gone"))
            return
        for one in (leg, peer):
            if one.bridged_to is not None and one.bridged_to not in (leg.handle, peer.handle):
                self._unbridge(one)
        self._stop_play(leg, completed=False)
        self._stop_play(peer, completed=False)
        try:
            ours, theirs = leg.call.getAudioMedia(-1), peer.call.getAudioMedia(-1)
            ours.startTransmit(theirs)
            theirs.startTransmit(ours)
        except pj.Error as exc:
            self.send(protocol.Error(leg.handle, f"cannot bridge: {exc.reason}"))
            return
        leg.bridged_to, peer.bridged_to = peer.handle, leg.handle
        tape = self._conversation_tape(leg)
        if tape is not None and peer.handle not in tape.sources and tape.recorder:
            try:
                theirs.startTransmit(tape.recorder)
                tape.sources += (peer.handle,)
            except pj.Error as exc:
                log.error("%s: cannot put %s on the conversation's tape: %s", leg.handle, peer.handle, exc.info())

    def _conversation_tape(self, leg: Leg) -> Recording | None:
        """The conversation tape ``leg`` is on: its own (a caller's, fed by both parties) or the one it is a
        party of (an agent's leg)."""
        if leg.recording is not None and len(leg.recording.sources) > 1:
            return leg.recording
        for other in self.calls.values():
            tape = other.recording
            if tape is not None and len(tape.sources) > 1 and leg.handle in tape.sources:
                return tape
        return None

    # -- supervision ------------------------------------------------------------
    def _monitor(self, supervisor: Leg, caller_handle: str, agent_handle: str, mode: str) -> None:
        """Join the supervisor's leg to the caller–agent bridge in ``mode``, or switch its mode."""
        caller, agent = self.calls.get(caller_handle), self.calls.get(agent_handle)
        if any(leg is None or leg.state is LegState.ENDED or not leg.media_ready
               for leg in (supervisor, caller, agent)):
            self.send(protocol.Error(supervisor.handle, "monitor: a leg is gone or has no audio"))
            return
        monitoring = self.monitors.get(supervisor.handle)
        if monitoring is None or (monitoring.caller, monitoring.agent) != (caller_handle, agent_handle):
            if monitoring is not None:
                self._end_monitor(monitoring)
            monitoring = Monitoring(supervisor.handle, caller_handle, agent_handle, mode)
            self.monitors[supervisor.handle] = monitoring
        self._stop_play(supervisor, completed=False)
        monitoring.mode = mode
        wanted = monitoring.wanted()
        self._unlink_monitor(monitoring, monitoring.links - wanted)
        self._link_monitor(monitoring, wanted)
        log.info("%s: monitoring %s and %s (%s)", supervisor.handle, caller_handle, agent_handle, mode)

    def _monitors_of(self, handle: str) -> list[Monitoring]:
        return [m for m in self.monitors.values() if handle in m.legs()]

    def _end_monitor(self, monitoring: Monitoring) -> None:
        """Any of the three legs ended (or the control link did): the others keep only their own audio."""
        self.monitors.pop(monitoring.supervisor, None)
        self._unlink_monitor(monitoring, monitoring.links)

    def _tape(self, monitoring: Monitoring) -> Recording | None:
        """The conversation's recording: the caller's leg's, fed by both parties."""
        for handle in (monitoring.caller, monitoring.agent):
            leg = self.calls.get(handle)
            if leg is not None and leg.recording is not None and len(leg.recording.sources) > 1:
                return leg.recording
        return None

    def _port(self, monitoring: Monitoring, name: str) -> pj.AudioMedia | None:
        if name == TAPE:
            tape = self._tape(monitoring)
            return tape.recorder if tape is not None else None
        leg = self.calls.get(name)
        if leg is None or leg.state is LegState.ENDED:
            return None
        return leg.call.getAudioMedia(-1)

    def _link_monitor(self, monitoring: Monitoring, links: frozenset[tuple[str, str]]) -> None:
        made = set(monitoring.links)
        for source, sink in links:
            try:
                ours, theirs = self._port(monitoring, source), self._port(monitoring, sink)
                if ours is None or theirs is None:
                    continue
                ours.startTransmit(theirs)  # a connection already made stays as it is
            except pj.Error as exc:
                log.error("%s: cannot connect %s to %s: %s", monitoring.supervisor, source, sink, exc.info())
                continue
            made.add((source, sink))
            tape = self._tape(monitoring) if sink == TAPE else None
            if tape is not None and source not in tape.sources:
                tape.sources += (source,)
        monitoring.links = frozenset(made)

    def _unlink_monitor(self, monitoring: Monitoring, links: frozenset[tuple[str, str]]) -> None:
        for source, sink in links:
            with contextlib.suppress(pj.Error):
                ours, theirs = self._port(monitoring, source), self._port(monitoring, sink)
                if ours is not None and theirs is not None:
                    ours.stopTransmit(theirs)
            tape = self._tape(monitoring) if sink == TAPE else None
            if tape is not None:
                tape.sources = tuple(s for s in tape.sources if s != source)
        monitoring.links -= links

    def _check_rtp(self, now: float) -> None:
        """End a call whose far end should be sending RTP and has sent none for rtp_timeout_s: a dead phone."""
        for leg in list(self.calls.values()):
            if leg.state is not LegState.CONFIRMED or not leg.media_ready:
                continue
            try:
                stat = leg.call.getStreamStat(0)  # kept while its members are read
                packets = stat.rtcp.rxStat.pkt
            except pj.Error:
                continue
            if packets != leg.rx_packets:
                leg.rx_packets, leg.rx_seen_at = packets, now
                continue
            if now - leg.rx_seen_at < self.settings.rtp_timeout_s:
                continue
            if not self._expects_rtp(leg):
                leg.rx_seen_at = now  # on hold (inactive) or sendonly: silence is what it should send
                continue
            log.warning("%s: no RTP for %.0f s; ending the call", leg.handle, now - leg.rx_seen_at)
            leg.end_reason = "rtp timeout"
            self._hangup(leg)

    @staticmethod
    def _expects_rtp(leg: Leg) -> bool:
        try:
            info = leg.call.getInfo()  # kept: its media vector lives as long as it does
        except pj.Error:
            return False
        media = info.media
        return any(m.type == pj.PJMEDIA_TYPE_AUDIO and m.dir & pj.PJMEDIA_DIR_DECODING for m in media)

    def _hangup(self, leg: Leg) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = 200 if leg.state is LegState.CONFIRMED else 480
        try:
            leg.call.hangup(prm)
        except pj.Error as exc:
            log.warning("hangup of %s failed: %s", leg.handle, exc.info())
            if leg.state is LegState.DIALLING and not leg.call.isActive():
                # Never placed (a REFER's leg the library could not dial): no state change will end it.
                self._end_call(leg, 500, "not placed")
                self.calls.pop(leg.handle, None)

    def _end_call(self, leg: Leg, status_code: int, reason: str) -> None:
        if leg.state is LegState.ENDED:
            return
        leg.state = LegState.ENDED
        self._stop_play(leg, completed=False)
        for monitoring in self._monitors_of(leg.handle):
            self._end_monitor(monitoring)
        # A far end this worker found dead is reported as lost (408), whatever the BYE got back.
        hangup = protocol.Hangup(leg.handle, 408 if leg.end_reason else status_code, leg.end_reason or reason)
        if leg.recording is not None:
            self._end_recording(leg, "hangup").then.append(hangup)
        else:
            self.send(hangup)

    # -- playback ----------------------------------------------------------
    def _start_play(self, leg: Leg, play_id: str, files: list[str]) -> None:
        self._stop_play(leg, completed=False)
        self._open(leg, Player(self, leg.handle, play_id, files))

    def _open(self, leg: Leg, player: Player) -> None:
        """Start the player's file, or the first one after it that opens; play_done when none is left."""
        while player.index < len(player.files):
            name = player.files[player.index]
            try:
                player.createPlayer(name, pj.PJMEDIA_FILE_NO_LOOP)
                player.startTransmit(leg.call.getAudioMedia(-1))
                leg.player = player
                heapq.heappush(self.play_deadlines, (time.monotonic() + _playing_time_s(name) + PROMPT_LATE_S,
                                                     next(_play_seq), leg.handle, player.play_id, player.index))
                return
            except pj.Error as exc:
                self.send(protocol.Error(leg.handle, f"cannot play {name}: {exc.reason}"))
                self.retired.append((time.monotonic() + PLAYER_GRACE_S, player))
                player = player.following()
        leg.player = None
        self.send(protocol.PlayDone(leg.handle, player.play_id, completed=True))

    def _overdue_plays(self, now: float) -> None:
        while self.play_deadlines and self.play_deadlines[0][0] <= now:
            _, _, handle, play_id, index = heapq.heappop(self.play_deadlines)
            leg = self.calls.get(handle)
            player = leg.player if leg is not None else None
            if player is not None and (player.play_id, player.index) == (play_id, index):
                log.warning("%s: the end of %s was not reported; going on", handle, player.files[index])
                self.play_finished(player)

    def play_finished(self, player: Player) -> None:
        leg = self.calls.get(player.handle)
        if leg is None or leg.player is not player:
            return
        self._retire(leg, player)
        self._open(leg, player.following())

    def _stop_play(self, leg: Leg, completed: bool) -> None:
        player = leg.player
        if player is None:
            return
        leg.player = None
        self._retire(leg, player)
        self.send(protocol.PlayDone(leg.handle, player.play_id, completed))

    def _retire(self, leg: Leg, player: Player) -> None:
        # Disconnected now, destroyed later: the clock thread may be inside this
        # player's frame or EOF callback this very moment. (A call that ended
        # has left the bridge already.)
        if leg.state is not LegState.ENDED:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(leg.call.getAudioMedia(-1))
        self.retired.append((time.monotonic() + PLAYER_GRACE_S, player))

    def _purge_retired(self) -> None:
        now = time.monotonic()
        while self.retired and self.retired[0][0] <= now:
            self.retired.popleft()

    def _run_deferred(self) -> None:
        while self.deferred:
            self.deferred.popleft()()

    # -- recording ---------------------------------------------------------
    def _start_record(self, leg: Leg, cmd: protocol.Record) -> None:
        if leg.recording is not None:
            self._end_recording(leg, "stopped")
        rec_id, path = cmd.rec_id, Path(cmd.path)
        peer = self.calls.get(cmd.peer) if cmd.peer else None
        recorder = pj.AudioMediaRecorder()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Claimed here, exclusively: evidence is never overwritten (the engine would truncate).
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640))
            recorder.createRecorder(str(path))
            sources = [leg.call.getAudioMedia(-1)]
            source_legs = [leg.handle]
            if peer is not None and peer.media_ready and peer.state is not LegState.ENDED:
                # The bridge mixes every source sent to a port: both parties on one tape.
                sources.append(peer.call.getAudioMedia(-1))
                source_legs.append(peer.handle)
            tape = TapeFollower(path, max_s=cmd.max_s, no_input_s=cmd.no_input_s,
                                now=time.monotonic(),
                                # A conversation is not end-pointed: only max_s or a command ends it.
                                endpointer=None if peer is not None else Endpointer(silence_s=cmd.silence_s))
        except (OSError, pj.Error) as exc:
            detail = exc.info() if isinstance(exc, pj.Error) else str(exc)
            log.error("%s: cannot record %s: %s", leg.handle, path, detail)
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:  # claimed, but nothing was ever written
                    path.unlink()
            self.send(protocol.RecordDone(leg.handle, rec_id, str(path), duration_s=0.0, sha256="", reason="error",
                                          speech_s=0.0, complete=False, detail=detail))
            return
        rec = Recording(handle=leg.handle, rec_id=rec_id, path=path, recorder=recorder,
                        tape=tape, stop_digits=cmd.stop_digits, sources=tuple(source_legs))
        try:
            for audio in sources:
                audio.startTransmit(recorder)
        except pj.Error as exc:
            log.error("%s: cannot connect the recorder: %s", leg.handle, exc.info())
        leg.recording = rec
        self.recordings[(leg.handle, rec_id)] = rec
        for monitoring in self._monitors_of(leg.handle):
            self._link_monitor(monitoring, monitoring.wanted())  # a whispering supervisor joins a new tape too

    def _follow_recordings(self, now: float) -> None:
        for rec in list(self.recordings.values()):
            end = rec.tape.poll(now)
            if end is None:
                continue
            leg = self.calls.get(rec.handle)
            if end is TapeFollower.End.STALLED:
                log.error("%s: recording %s stopped growing (disk full?)", rec.handle, rec.path)
            if leg is not None and leg.recording is rec:
                self._end_recording(leg, end.value)

    def _end_recording(self, leg: Leg, reason: str) -> Recording:
        """Disconnect and destroy the recorder; the engine then finishes the file on its clock thread."""
        rec = leg.recording
        assert rec is not None
        leg.recording = None
        self.recordings.pop((rec.handle, rec.rec_id), None)
        rec.reason = reason
        # The last reference: pjsua_recorder_destroy takes the port off the bridge
        # with all its connections.
        rec.recorder = None
        rec.finish_by = time.monotonic() + FINISH_TIMEOUT_S
        self.closing.append(rec)
        return rec

    def _report_closed(self, now: float) -> None:
        still: list[Recording] = []
        for rec in self.closing:
            if header_finished(rec.path):
                self._report(rec)
            elif now >= rec.finish_by:
                log.warning("%s: the engine did not finish %s; repairing its header", rec.handle, rec.path)
                self._report(rec, repair=True)
            else:
                still.append(rec)
        self.closing = still

    def _report(self, rec: Recording, repair: bool = False) -> None:
        rec.tape.poll(time.monotonic())  # the last frames, for the speech measure
        rec.tape.close()
        try:
            info = repair_wav(rec.path) if repair else wav_info(rec.path)
        except (OSError, ValueError) as exc:
            # The samples already written stay on disk; the control process repairs the header.
            log.error("closing %s failed: %s", rec.path, exc)
            self.send(protocol.RecordDone(
                rec.handle, rec.rec_id, str(rec.path), duration_s=rec.tape.duration_s, sha256="", reason="error",
                speech_s=rec.tape.speech_s, complete=False, detail=str(exc)))
        else:
            self.send(protocol.RecordDone(
                rec.handle, rec.rec_id, str(info.path), duration_s=info.duration_s, sha256=info.sha256,
                reason=rec.reason or "stopped", speech_s=rec.tape.speech_s, complete=rec.reason != "error"))
        for event in rec.then:
            self.send(event)


