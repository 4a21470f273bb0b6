"""A media worker played by a script, on virtual time: the IVR's calls without SIP or audio.

``ScriptedWorker`` stands where a worker's control link stands: the IVR's
real ``softswitch.control.calls.ControlCall`` sends it commands, and it answers with
the events a worker would send (``play_done``, ``dtmf``, ``record_done``,
``ringing``, ``answered``, ``hangup``) at the virtual times a real call would
bring them: a prompt lasts as long as the fake prompts say, a recording ends
by the same rules as ``media/tape.py`` (no input, silence after speech,
maximum, a stop key, a hang-up), keys arrive when the caller's ``Script``
presses them, and agents' phones answer (or not) as their ``AgentPhone``
says. Everything it saw is kept for the test to assert on.

Run it on ``tests.fakes.virtual_time.run_virtual``: the IVR's real timers
apply, and a call of minutes takes milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from softswitch import protocol
from softswitch.control.calls import ControlCall

DIGIT_GAP_S = 0.25  # between keys of one burst, as a person keys them


@dataclass
class Script:
    """What the caller does, in seconds from the answer."""

    keys: list[tuple[float, str]] = field(default_factory=list)
    speech: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each utterance
    hangup_at: float | None = None

    def key(self, at: float, digits: str, gap_s: float = DIGIT_GAP_S) -> Script:
        self.keys += [(at + i * gap_s, d) for i, d in enumerate(digits)]
        return self

    def say(self, at: float, seconds: float) -> Script:
        self.speech.append((at, at + seconds))
        return self

    def hang_up(self, at: float) -> Script:
        self.hangup_at = at
        return self


@dataclass
class AgentPhone:
    """An agent's phone: rings, answers after answer_after_s (None: never), hangs up talk_s after."""

    answer_after_s: float | None = 1.0
    talk_s: float | None = None  # None: the agent never hangs up first
    ends_with: int = 200  # how the leg ends after talk_s: 200 a hang-up, 408 a phone found dead
    fail_with: int | None = None  # a final refusal instead of ringing (e.g. 480)


@dataclass
class Played:
    files: list[str]
    start: float
    end: float | None = None
    completed: bool | None = None


@dataclass(frozen=True)
class ScriptedRecording:
    kind: str
    start: float
    end: float
    done: protocol.RecordDone  # what was reported


@dataclass
class _Recording:
    handle: str
    rec_id: str
    kind: str
    path: str
    start: float
    stop_digits: str
    timer: asyncio.TimerHandle | None = None


class ScriptedWorker:
    """The fake side of one worker link: one caller's call, and any agent legs dialled from it."""

    def __init__(self, script: Script, prompt_seconds: dict[str, float] | None = None,
                 agents: dict[str, AgentPhone] | None = None, default_prompt_s: float = 1.0,
                 worker_id: int = 0) -> None:
        self.script = script
        self.prompt_seconds = prompt_seconds or {}
        self.default_prompt_s = default_prompt_s
        self.agents = agents or {}
        # What softswitch.control.calls.WorkerLink offers a ControlCall and the control process.
        self.calls: dict[str, ControlCall] = {}
        self.worker_id: int | None = worker_id
        self.pid: int | None = None
        self.max_calls: int | None = 4
        # What happened, for the test.
        self.played: list[Played] = []
        self.recordings: list[ScriptedRecording] = []
        self.commands: list[protocol.Command] = []
        self.dialled: list[str] = []
        self.bridged: list[tuple[str, str]] = []
        self.monitored: list[protocol.Monitor] = []
        self._playing: dict[str, tuple[str, Played, asyncio.TimerHandle]] = {}
        self._recording: dict[str, _Recording] = {}
        self._ended: set[str] = set()
        self._timers: dict[str, list[asyncio.TimerHandle]] = {}
        self._seq = itertools.count(1)
        self.call: ControlCall | None = None

    # -- the caller's call -----------------------------------------------------
    def answer(self, recordings_dir: Path = Path("/recordings")) -> ControlCall:
        """The caller's call, answered now; the script's clock starts."""
        call = ControlCall(self, "caller", 1, recordings_dir)  # type: ignore[arg-type]
        self.calls[call.handle] = call
        self._answered(call)
        return call

    def _answered(self, call: ControlCall) -> None:
        """The caller's call is answered now (by answer(), or the control process's Answer): the script starts."""
        loop = asyncio.get_running_loop()
        self.call = call
        self.t0 = loop.time()
        self._emit(protocol.Answered(call.handle))
        timers = self._timers.setdefault(call.handle, [])
        for at, digit in self.script.keys:
            timers.append(loop.call_at(self.t0 + at, self._key, call.handle, digit))
        if self.script.hangup_at is not None:
            timers.append(loop.call_at(self.t0 + self.script.hangup_at, self._end, call.handle, 200))

    def now(self) -> float:
        """Seconds since the answer."""
        return asyncio.get_running_loop().time() - self.t0

    def prompts_heard(self, completed_only: bool = False) -> list[str]:
        """Every prompt file name sent to the caller, in order."""
        return [Path(f).stem for p in self.played for f in p.files if p.completed or not completed_only]

    # -- the control link ------------------------------------------------------
    def send(self, command: protocol.Command) -> None:
        # Through its line, as a worker would read it: what the IVR sends must encode and decode.
        command = protocol.decode_command(protocol.encode(command))
        self.commands.append(command)
        if getattr(command, "call", None) in self._ended:
            return  # a command racing the hang-up: a worker ignores it too
        match command:
            case protocol.Answer(call=handle):  # the control process took a call (an Incoming of the test's)
                self._answered(self.calls[handle])
            case protocol.Reject(call=handle, status_code=status_code):
                self._emit(protocol.Hangup(handle, status_code, "rejected"))
            case protocol.Play(call=handle, play_id=play_id, files=files):
                self._play(handle, play_id, list(files))
            case protocol.StopPlay(call=handle):
                self._stop_play(handle, completed=False)
            case protocol.Record():
                self._record(command)
            case protocol.StopRecord(call=handle, rec_id=rec_id):
                rec = self._recording.get(handle)
                if rec is not None and rec.rec_id == rec_id:
                    self._end_recording(handle, "stopped")
            case protocol.HangupCall(call=handle):
                self._end(handle, 200)
            case protocol.Dial(call=handle, uri=uri):
                self._dial(handle, uri)
            case protocol.Bridge(call=handle, peer=peer):
                self.bridged.append((handle, peer))
            case protocol.Monitor():
                self.monitored.append(command)
            case _:
                raise AssertionError(f"the scripted worker does not expect {command!r}")

    # -- playback ----------------------------------------------------------------
    def _duration(self, file: str) -> float:
        return self.prompt_seconds.get(Path(file).stem, self.default_prompt_s)

    def _play(self, handle: str, play_id: str, files: list[str]) -> None:
        self._stop_play(handle, completed=False)  # a new prompt replaces the one playing
        loop = asyncio.get_running_loop()
        played = Played(files, self._at())
        if handle == "caller":
            self.played.append(played)
        seconds = sum(self._duration(f) for f in files)
        timer = loop.call_later(seconds, self._play_ended, handle, play_id)
        self._playing[handle] = (play_id, played, timer)

    def _play_ended(self, handle: str, play_id: str) -> None:
        current = self._playing.get(handle)
        if current is not None and current[0] == play_id:
            self._stop_play(handle, completed=True)

    def _stop_play(self, handle: str, completed: bool) -> None:
        current = self._playing.pop(handle, None)
        if current is None:
            return
        play_id, played, timer = current
        timer.cancel()
        played.end, played.completed = self._at(), completed
        self._emit(protocol.PlayDone(handle, play_id, completed))

    # -- recording -----------------------------------------------------------------
    def _record(self, cmd: protocol.Record) -> None:
        handle = cmd.call
        if handle in self._recording:
            self._end_recording(handle, "stopped")
        rec = _Recording(handle, cmd.rec_id, Path(cmd.path).stem.rsplit("-", 1)[-1], cmd.path, self._at(),
                         cmd.stop_digits)
        self._recording[handle] = rec
        end_at, reason = self._end_point(rec.start, cmd.max_s, cmd.silence_s, cmd.no_input_s,
                                         conversation=cmd.peer is not None)
        rec.timer = asyncio.get_running_loop().call_later(end_at - rec.start, self._end_recording, handle, reason)

    def _end_point(self, start: float, max_s: float, silence_s: float, no_input_s: float,
                   conversation: bool) -> tuple[float, str]:
        """When and why media/tape.py would end a recording started at start (script time)."""
        if conversation:
            return start + max_s, "max"
        speech = sorted((s, e) for s, e in self.script.speech if e > start)
        heard_until: float | None = None
        for s, e in speech:
            s = max(s, start)
            if heard_until is None:
                if s - start >= no_input_s:
                    break
            elif s - heard_until >= silence_s:
                break
            heard_until = max(e, heard_until or e)
        if heard_until is None:
            end, reason = start + no_input_s, "no_input"
        else:
            end, reason = heard_until + silence_s, "silence"
        return (start + max_s, "max") if end > start + max_s else (end, reason)

    def _speech_within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.script.speech)

    def _end_recording(self, handle: str, reason: str) -> None:
        rec = self._recording.pop(handle, None)
        if rec is None:
            return
        if rec.timer is not None:
            rec.timer.cancel()
        end = self._at()
        done = protocol.RecordDone(handle, rec.rec_id, rec.path, duration_s=round(end - rec.start, 3),
                                   sha256=f"{len(self.recordings):064x}", reason=reason,
                                   speech_s=round(self._speech_within(rec.start, end), 3), complete=True)
        self.recordings.append(ScriptedRecording(rec.kind, rec.start, end, done))
        self._emit(done)

    # -- keys and hang-ups -------------------------------------------------------------
    def _key(self, handle: str, digit: str) -> None:
        if handle in self._ended:
            return
        self._emit(protocol.Dtmf(handle, digit))
        rec = self._recording.get(handle)
        if rec is not None and digit in rec.stop_digits:
            self._end_recording(handle, "digit")

    def _end(self, handle: str, status: int) -> None:
        if handle in self._ended:
            return
        self._ended.add(handle)
        for timer in self._timers.pop(handle, []):
            timer.cancel()
        self._stop_play(handle, completed=False)
        self._end_recording(handle, "hangup")  # reported before the hang-up, as a worker does
        self._emit(protocol.Hangup(handle, status, ""))

    # -- agents' legs -------------------------------------------------------------------
    def _dial(self, handle: str, uri: str) -> None:
        self.dialled.append(uri)
        agent_id = uri.removeprefix("sip:").split("@", 1)[0]
        phone = self.agents.get(agent_id, AgentPhone(answer_after_s=None))
        loop = asyncio.get_running_loop()
        timers = self._timers.setdefault(handle, [])
        if phone.fail_with is not None:
            timers.append(loop.call_later(0.1, self._end, handle, phone.fail_with))
            return
        timers.append(loop.call_later(0.1, self._emit, protocol.Ringing(handle)))
        if phone.answer_after_s is not None:
            timers.append(loop.call_later(phone.answer_after_s, self._emit, protocol.Answered(handle)))
            if phone.talk_s is not None:
                timers.append(loop.call_later(phone.answer_after_s + phone.talk_s, self._end, handle,
                                              phone.ends_with))

    # -- helpers ------------------------------------------------------------------------
    def _at(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def _emit(self, event: protocol.Event) -> None:
        """Deliver an event as the link would: through its line, soon, in order."""
        asyncio.get_running_loop().call_soon(self._deliver, protocol.decode_event(protocol.encode(event)))

    def _deliver(self, event: protocol.Event) -> None:
        call = self.calls.get(getattr(event, "call", ""))
        if call is not None:
            call.on_event(event)
