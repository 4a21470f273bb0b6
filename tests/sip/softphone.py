"""Test softphone: one PJSUA2 endpoint in its own process, driven by JSON lines on stdin.

It plays an agent (REGISTER with digest auth, answer or refuse incoming calls)
or a caller (dial, send RFC 4733 digits, play a WAV, record what it hears), and
reports what happens as JSON lines on stdout. The wrapper the tests use is
``tests/sip/softphones.py``; the protocol is in its docstring.

Run: ``python -m tests.sip.softphone --sip-port 16200 --rtp-port 26400``.
One thread owns the library (``threadCnt = 0``, set up as the media worker is, softswitch/worker/pjsip.py);
a reader thread only queues stdin lines for it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import pjsua2 as pj

from softswitch.worker import pjsip

T = TypeVar("T")
POLL_MS = 10
RECORDING_CLOSE_S = 2.0  # longest wait for the library to finish a WAV file
QUIT_GRACE_S = 3.0  # at quit: time for BYEs/CANCELs and the unregistration to be answered
STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}
X_HEADER = re.compile(r"^(X-[A-Za-z0-9-]+):[ \t]*(.*?)\r?$", re.MULTILINE)
CONTACT_HEADER = re.compile(r"^(?:Contact|m):[ \t]*(.*?)\r?$", re.MULTILINE | re.IGNORECASE)


def _wav_closed(path: str) -> bool:
    """The library writes a WAV's RIFF size as 0 at first and the real one when it closes the file."""
    try:
        with open(path, "rb") as wav:
            header = wav.read(8)
    except OSError:
        return False
    return len(header) == 8 and header[4:8] != bytes(4)


def _drained(items: queue.Queue[T]) -> Iterator[T]:
    """What the queue holds now, without waiting."""
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return


class CommandError(Exception):
    """A command that cannot be carried out; reported as an ``error`` event."""


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """A Python exception must not unwind into PJSIP's C++."""

    def run(self: Any, *args: Any) -> None:
        try:
            callback(self, *args)
        except Exception as exc:  # noqa: BLE001 (reported, never raised into C++)
            detail = exc.info() if isinstance(exc, pj.Error) else repr(exc)
            self.phone.emit("error", detail=f"{callback.__name__}: {detail}")
    return run


class PhoneCall(pj.Call):
    def __init__(self, phone: Softphone, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.phone = phone
        self.key = ""

    @_guarded
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 API)
        self.phone.on_call_state(self)

    @_guarded
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        self.phone.on_media_state(self)

    @_guarded
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        self.phone.emit("dtmf", call=self.key, digit=prm.digit)

    @_guarded
    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:  # noqa: N802
        self.phone.emit("transfer_status", call=self.key, code=prm.statusCode, reason=prm.reason,
                        final=prm.finalNotify)


class PhoneAccount(pj.Account):
    def __init__(self, phone: Softphone) -> None:
        super().__init__()
        self.phone = phone

    @_guarded
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        self.phone.on_incoming(self, prm)

    @_guarded
    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802
        self.phone.on_reg_state(prm)


class Player(pj.AudioMediaPlayer):
    def __init__(self, phone: Softphone, key: str) -> None:
        super().__init__()
        self.phone = phone
        self.key = key

    def onEof2(self) -> None:  # noqa: N802 (bridge clock thread: only hand over)
        self.phone.finished_players.put(self.key)


@dataclass
class CallSlot:
    call: PhoneCall
    incoming: bool
    answer_at: float | None = None  # monotonic time of the automatic answer
    media: bool = False
    player: Player | None = None
    play_path: str | None = None
    play_loop: bool = True
    recorder: pj.AudioMediaRecorder | None = None
    record_path: str | None = None


@dataclass
class AnswerPolicy:
    answer_after_s: float | None = 0.0  # None: ring until told
    reject_code: int | None = None


class Softphone:
    def __init__(self, args: argparse.Namespace, events: TextIO) -> None:
        self.args = args
        self.events = events
        self.emit_lock = threading.Lock()
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.finished_players: queue.Queue[str] = queue.Queue()
        self.closing_recordings: list[tuple[str, str, float]] = []  # (call, path, deadline)
        self.calls: dict[str, CallSlot] = {}
        self.policy = AnswerPolicy()
        self.registered = False
        self.quitting = False

    # -- events ------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.monotonic(), **fields}, ensure_ascii=False)
        with self.emit_lock:
            self.events.write(line + "\n")
            self.events.flush()

    # -- library -----------------------------------------------------------
    def start(self) -> None:
        a = self.args
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        level = 5 if a.sip_trace else a.log_level
        cfg = pjsip.endpoint_config("softswitch-111-test-softphone", level, msg_logging=a.sip_trace,
                                    main_thread_only=True)
        pjsip.start(self.ep, cfg, a.host, a.sip_port)
        self.account = PhoneAccount(self)
        self.account.create(self._account_config(None), True)

    def _account_config(self, registration: dict[str, Any] | None) -> pj.AccountConfig:
        a = self.args
        # --nat-host: a phone behind NAT names an address in its Contact and SDP that
        # is not where its packets come from (a loopback one here: nothing leaves the machine).
        acfg = pjsip.account_config(f"sip:{a.user}@{a.host}:{a.sip_port}", a.host, a.rtp_port, a.rtp_port_range,
                                    public_host=a.nat_host)
        if a.nat_host:
            acfg.sipConfig.contactForced = f"<sip:{a.user}@{a.nat_host}:{a.sip_port + 1000}>"
        acfg.natConfig.sipOutboundUse = 0  # a plain Contact: no ;ob, reg-id or instance id
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.udpKaIntervalSec = 0
        acfg.regConfig.retryIntervalSec = 0  # one attempt: a refusal is reported, not retried
        if registration is not None:
            registrar = str(registration["registrar"])
            user = str(registration["user"])
            host = registrar.split(":", 1)[1] if registrar.startswith("sip:") else registrar
            acfg.idUri = f"sip:{user}@{host}"
            if a.nat_host:
                acfg.sipConfig.contactForced = f"<sip:{user}@{a.nat_host}:{a.sip_port + 1000}>"
            acfg.regConfig.registrarUri = registrar
            acfg.regConfig.timeoutSec = int(registration.get("expires_s", 60))
            acfg.regConfig.registerOnAdd = True
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo(
                "digest", str(registration.get("realm", "*")), user, pj.PJSIP_CRED_DATA_PLAIN_PASSWD,
                str(registration["password"])))
        return acfg

    def run(self) -> None:
        self.start()
        threading.Thread(target=self._read_commands, name="stdin", daemon=True).start()
        self.emit("ready", pid=os.getpid(), sip_port=self.args.sip_port, uri=f"sip:{self.args.user}@"
                  f"{self.args.host}:{self.args.sip_port}")
        while not self.quitting:
            self.ep.libHandleEvents(POLL_MS)
            self._run_commands()
            self._answer_due()
            self._finish_players()
            self._report_closed_recordings()
        self._shutdown()

    def _read_commands(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                command = json.loads(line)
            except ValueError as exc:
                self.emit("error", detail=f"bad command line: {exc}")
                continue
            if isinstance(command, dict) and isinstance(command.get("cmd"), str):
                self.commands.put(command)
            else:
                self.emit("error", detail="a command is a JSON object with a string 'cmd'")
        self.commands.put(None)  # stdin closed: quit

    def _shutdown(self) -> None:
        """Hang up, unregister, delete every pj object, then destroy the library (PJSUA2-NOTES)."""
        for key in list(self.calls):
            self._hangup(self.calls[key], None)
        if self.registered:
            try:
                self.account.setRegistration(False)
            except pj.Error:
                self.registered = False
        deadline = time.monotonic() + QUIT_GRACE_S
        while (self.calls or self.registered) and time.monotonic() < deadline:
            self.ep.libHandleEvents(POLL_MS)
        for slot in self.calls.values():
            self._close_media(slot)
        self.calls.clear()
        self.account.shutdown()
        del self.account
        self.ep.libDestroy()
        del self.ep
        self._report_closed_recordings(final=True)
        self.emit("bye")

    # -- commands ----------------------------------------------------------
    def _run_commands(self) -> None:
        for command in _drained(self.commands):
            if command is None:
                self.quitting = True
                return
            try:
                self._handle(command)
            except (CommandError, KeyError, TypeError, ValueError) as exc:
                self.emit("error", cmd=command.get("cmd"), detail=str(exc))
            except pj.Error as exc:
                self.emit("error", cmd=command.get("cmd"), detail=exc.info())

    def _handle(self, command: dict[str, Any]) -> None:
        name = command["cmd"]
        if name == "quit":
            self.quitting = True
        elif name == "register":
            self.account.modify(self._account_config(command))
        elif name == "unregister":
            self.account.setRegistration(False)
        elif name == "answer_policy":
            after = command.get("answer_after_s", 0.0)
            code = command.get("reject_code")
            self.policy = AnswerPolicy(None if after is None else float(after), None if code is None else int(code))
            # Acknowledged: a call may arrive right after, and must meet the new policy.
            self.emit("answer_policy", answer_after_s=self.policy.answer_after_s, reject_code=self.policy.reject_code)
        elif name == "dial":
            self._dial(str(command["uri"]), command.get("headers") or {})
        elif name == "hangup" and command.get("call") is None:
            for slot in list(self.calls.values()):
                self._hangup(slot, command.get("code"))
        else:
            slot = self._slot(command.get("call"))
            if name == "answer":
                self._answer(slot, int(command.get("code", 200)))
            elif name == "reject":
                self._answer(slot, int(command.get("code", 486)))
            elif name == "hangup":
                self._hangup(slot, command.get("code"))
            elif name == "dtmf":
                prm = pj.CallSendDtmfParam()
                prm.digits = str(command["digits"])
                prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
                prm.duration = int(command.get("duration_ms", 160))
                slot.call.sendDtmf(prm)
            elif name == "play":
                slot.play_path, slot.play_loop = str(command["wav"]), bool(command.get("loop", True))
                self._start_play(slot)
            elif name == "stop_play":
                slot.play_path = None
                self._stop_play(slot)
            elif name == "record":
                self._stop_record(slot)
                slot.record_path = str(command["wav"])
                self._start_record(slot)
            elif name == "stop_record":
                self._stop_record(slot)
            elif name == "hold":
                slot.call.setHold(pj.CallOpParam(True))
            elif name == "unhold":
                prm = pj.CallOpParam(True)
                prm.opt.flag = pj.PJSUA_CALL_UNHOLD
                slot.call.reinvite(prm)
            elif name == "transfer":
                slot.call.xfer(str(command["uri"]), pj.CallOpParam(True))
            elif name == "info":
                prm = pj.CallSendRequestParam()
                prm.method = "INFO"
                prm.txOption.contentType = str(command["content_type"])
                prm.txOption.msgBody = str(command["body"])
                slot.call.sendRequest(prm)
            else:
                raise CommandError(f"unknown command {name!r}")

    def _slot(self, key: Any) -> CallSlot:
        if key is None:
            if len(self.calls) != 1:
                raise CommandError(f"say which call: {len(self.calls)} calls are up")
            return next(iter(self.calls.values()))
        slot = self.calls.get(str(key))
        if slot is None:
            raise CommandError(f"no call {key}")
        return slot

    # -- calls -------------------------------------------------------------
    def _dial(self, uri: str, headers: dict[str, str]) -> None:
        call = PhoneCall(self, self.account)
        prm = pj.CallOpParam(True)
        for name, value in headers.items():
            header = pj.SipHeader()
            header.hName, header.hValue = str(name), str(value)
            prm.txOption.headers.append(header)
        call.makeCall(uri, prm)
        call.key = call.getInfo().callIdString
        self.calls[call.key] = CallSlot(call=call, incoming=False)
        self.emit("dialing", call=call.key, uri=uri)

    def on_incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        call = PhoneCall(self, account, prm.callId)
        info = call.getInfo()
        call.key = info.callIdString
        slot = CallSlot(call=call, incoming=True)
        self.calls[call.key] = slot
        message = prm.rdata.wholeMsg
        request_line = message.split("\r\n", 1)[0].split(" ")
        self.emit("incoming", call=call.key, **{"from": info.remoteUri}, to=info.localUri,
                  request_uri=request_line[1] if len(request_line) == 3 else "",
                  source=prm.rdata.srcAddress, headers=dict(X_HEADER.findall(message)))
        policy = self.policy
        if policy.reject_code is not None:
            self._answer(slot, policy.reject_code)
            return
        self._answer(slot, 180)
        if policy.answer_after_s is not None:
            slot.answer_at = time.monotonic() + policy.answer_after_s

    def _answer(self, slot: CallSlot, code: int) -> None:
        if not slot.incoming:
            raise CommandError("only an incoming call can be answered")
        prm = pj.CallOpParam()
        prm.statusCode = code
        slot.answer_at = None
        if code >= 300:
            slot.call.hangup(prm)
        else:
            slot.call.answer(prm)

    def _answer_due(self) -> None:
        now = time.monotonic()
        for slot in list(self.calls.values()):
            if slot.answer_at is not None and slot.answer_at <= now:
                self._answer(slot, 200)

    def _hangup(self, slot: CallSlot, code: Any) -> None:
        prm = pj.CallOpParam()
        if code is not None:
            prm.statusCode = int(code)
        elif slot.incoming and slot.call.getInfo().state < pj.PJSIP_INV_STATE_CONNECTING:
            prm.statusCode = 603  # an unanswered incoming call is declined
        slot.answer_at = None
        try:
            slot.call.hangup(prm)
        except pj.Error as exc:
            self.emit("error", cmd="hangup", call=slot.call.key, detail=exc.info())

    def on_call_state(self, call: PhoneCall) -> None:
        info = call.getInfo()
        state = STATE_NAMES.get(info.state, str(info.state))
        self.emit("state", call=call.key, state=state, code=info.lastStatusCode, reason=info.lastReason)
        if info.state != pj.PJSIP_INV_STATE_DISCONNECTED:
            return
        slot = self.calls.pop(call.key, None)
        if slot is not None:
            self._close_media(slot)
        self.emit("ended", call=call.key, code=info.lastStatusCode, reason=info.lastReason,
                  connected_s=info.connectDuration.sec + info.connectDuration.msec / 1000)
        # The Call object goes with the slot now: a later destructor would hang
        # up whichever call reused the slot (PJSUA2-NOTES).

    def on_media_state(self, call: PhoneCall) -> None:
        slot = self.calls.get(call.key)
        if slot is None:
            return
        try:
            call.getAudioMedia(-1)
        except pj.Error:
            return  # no active audio (yet, or on hold)
        # Like a real phone's microphone, the (null) capture device feeds the call
        # all the time: without audio frames the stream's RTP clock stands still and
        # every RFC 4733 event goes out with the same timestamp, which the far end
        # drops as a repeat of the first.
        audio = call.getAudioMedia(-1)
        self.ep.audDevManager().getCaptureDevMedia().startTransmit(audio)
        if slot.media:
            # A re-INVITE (hold, resume) rebuilt the stream: a real phone keeps its
            # microphone and speaker on the call, so this one reconnects its files.
            if slot.player is not None:
                slot.player.startTransmit(audio)
            if slot.recorder is not None:
                audio.startTransmit(slot.recorder)
            return
        slot.media = True
        self.emit("media", call=call.key)
        self._start_play(slot)
        self._start_record(slot)

    # -- audio -------------------------------------------------------------
    def _start_play(self, slot: CallSlot) -> None:
        """Play now if the call has audio, else as soon as it has."""
        self._stop_play(slot)
        if slot.play_path is None or not slot.media:
            return
        player = Player(self, slot.call.key)
        player.createPlayer(slot.play_path, 0 if slot.play_loop else pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(slot.call.getAudioMedia(-1))
        slot.player = player

    def _stop_play(self, slot: CallSlot) -> None:
        if slot.player is not None:
            try:
                slot.player.stopTransmit(slot.call.getAudioMedia(-1))
            except pj.Error:
                pass  # the call's audio is already gone
            slot.player = None

    def _finish_players(self) -> None:
        """A player that is not looped reached its end (reported by the clock thread)."""
        for key in _drained(self.finished_players):
            slot = self.calls.get(key)
            if slot is not None and slot.player is not None and not slot.play_loop:
                path, slot.play_path = slot.play_path, None
                self._stop_play(slot)
                self.emit("play_done", call=key, wav=path)

    def _start_record(self, slot: CallSlot) -> None:
        if slot.record_path is None or not slot.media or slot.recorder is not None:
            return
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(slot.record_path)
        slot.call.getAudioMedia(-1).startTransmit(recorder)
        slot.recorder = recorder

    def _stop_record(self, slot: CallSlot) -> None:
        path, slot.record_path = slot.record_path, None
        if slot.recorder is None:
            return
        try:
            slot.call.getAudioMedia(-1).stopTransmit(slot.recorder)
        except pj.Error:
            pass  # the call's audio is already gone
        # Deleting the recorder closes the WAV file, but on a later bridge tick
        # (the conference removes ports asynchronously): "recorded" waits for it.
        slot.recorder = None
        self.closing_recordings.append((slot.call.key, str(path), time.monotonic() + RECORDING_CLOSE_S))

    def _report_closed_recordings(self, final: bool = False) -> None:
        for closing in list(self.closing_recordings):
            key, path, deadline = closing
            if final or _wav_closed(path) or time.monotonic() > deadline:
                self.closing_recordings.remove(closing)
                self.emit("recorded", call=key, wav=path, complete=_wav_closed(path))

    def _close_media(self, slot: CallSlot) -> None:
        slot.play_path = None
        self._stop_play(slot)
        self._stop_record(slot)

    # -- registration ------------------------------------------------------
    def on_reg_state(self, prm: pj.OnRegStateParam) -> None:
        code, reason = int(prm.code), str(prm.reason)
        if code // 100 == 2 and prm.expiration > 0:
            self.registered = True
            contacts = CONTACT_HEADER.findall(prm.rdata.wholeMsg) if prm.rdata is not None else []
            self.emit("registered", code=code, reason=reason, expires_s=int(prm.expiration), contacts=contacts)
        elif code // 100 == 2:
            self.registered = False
            self.emit("unregistered", code=code, reason=reason)
        else:
            self.registered = False
            self.emit("reg_failed", code=code, reason=reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="test softphone driven by JSON lines on stdin")
    parser.add_argument("--host", default="127.0.0.1", help="SIP and RTP address (loopback in tests)")
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--rtp-port-range", type=int, default=20)
    parser.add_argument("--user", default="phone", help="user part of the local URI (before any register)")
    parser.add_argument("--log-level", type=int, default=2)
    parser.add_argument("--sip-trace", action="store_true", help="log every SIP message to stderr")
    parser.add_argument("--nat-host", help="the address Contact and SDP name instead of --host (a phone behind NAT)")
    args = parser.parse_args(argv)
    # Events own the real stdout; anything the library prints goes to stderr.
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    phone = Softphone(args, events)
    signal.signal(signal.SIGTERM, lambda *_: setattr(phone, "quitting", True))
    phone.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
