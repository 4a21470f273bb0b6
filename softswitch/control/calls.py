"""Control process: calls as the IVR sees them, carried over a worker's control-protocol link."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from ivr.channel import CallEnded, RecordingResult
from media.wavfile import repair_wav
from softswitch import protocol

log = logging.getLogger("softswitch.calls")

HANGUP_CONFIRM_TIMEOUT_S = 5.0


class WorkerLink:
    """One connected media worker: sends commands, routes its events to calls."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.worker_id: int | None = None
        self.pid: int | None = None
        self.max_calls: int | None = None
        self.calls: dict[str, ControlCall] = {}
        self.connected = True

    def send(self, command: protocol.Command) -> None:
        if not self.connected:
            return
        try:
            self.writer.write(protocol.encode(command))
        except (ConnectionError, RuntimeError) as exc:
            log.warning("worker %s: send failed: %s", self.worker_id, exc)


class ControlCall:
    """A call on a worker, implementing ``ivr.channel.CallChannel``."""

    _ids = itertools.count(1)

    def __init__(self, link: WorkerLink, handle: str, call_id: int, recordings_dir: Path, *,
                 tape_started: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.link = link
        self.handle = handle
        self.call_id = call_id
        self.recordings_dir = recordings_dir
        self.tape_started = tape_started  # told each recording's kind once the worker has been asked to tape it
        self.answered = asyncio.Event()
        self.ringing = asyncio.Event()
        self.end_reason: str | None = None
        self.end_status: int | None = None
        self.operator_hangup = False
        self.ended_event = asyncio.Event()
        self._digits: collections.deque[str] = collections.deque()
        self._digit_arrived = asyncio.Event()
        self._plays: dict[str, asyncio.Future[bool]] = {}
        self._records: dict[str, tuple[str, Path, asyncio.Future[RecordingResult]]] = {}
        self._record_seq = itertools.count(1)
        # The far end's REFERs the worker accepted: (the user it names, the leg the worker dials for it).
        self._referred: asyncio.Queue[tuple[str, ControlCall]] = asyncio.Queue()

    # -- CallChannel -------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    async def play(self, files: Sequence[Path], *, interrupt: str = "") -> None:
        self._check()
        if self._interrupting(interrupt):
            return
        play_id = str(next(self._ids))
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._plays[play_id] = done
        self.link.send(protocol.Play(self.handle, play_id, tuple(str(f) for f in files)))
        while interrupt and not done.done():
            self._digit_arrived.clear()
            digit: asyncio.Future[Any] = asyncio.ensure_future(self._digit_arrived.wait())
            try:
                await asyncio.wait([done, digit], return_when=asyncio.FIRST_COMPLETED)
            finally:
                digit.cancel()
            if not done.done() and self._interrupting(interrupt):
                self.link.send(protocol.StopPlay(self.handle))
                break
        await done

    def _interrupting(self, keys: str) -> bool:
        return any(d in keys for d in self._digits)

    async def record(self, kind: str, *, max_s: float, silence_s: float, no_input_s: float,
                     stop_digits: str = "#", peer: ControlCall | None = None) -> RecordingResult:
        self._check()
        rec_id = str(next(self._record_seq))
        day = time.strftime("%Y/%m/%d")
        path = self.recordings_dir / day / f"call{self.call_id}-{rec_id}-{kind}.wav"
        result: asyncio.Future[RecordingResult] = asyncio.get_running_loop().create_future()
        self._records[rec_id] = (kind, path, result)
        self.link.send(protocol.Record(self.handle, rec_id, str(path), max_s=max_s, silence_s=silence_s,
                                       no_input_s=no_input_s, stop_digits=stop_digits,
                                       peer=peer.handle if peer is not None else None))
        if self.tape_started is not None:
            await self.tape_started(kind)  # while the worker tapes: the caller loses no audio to it
        recording = await result
        log.info("recording %s ended (%s): %.1f s, speech %.1f s%s", kind, recording.reason, recording.duration_s,
                 recording.speech_s, "" if recording.complete else ", incomplete",
                 extra={"event": "recording_end", "kind": kind, "reason": recording.reason,
                        "duration_s": recording.duration_s})
        return recording

    # -- LiveChannel and Leg ---------------------------------------------
    def dial(self, uri: str) -> ControlCall:
        """A new outgoing leg from this call's worker; its events arrive like any call's."""
        leg = ControlCall(self.link, f"{self.handle}-leg{next(self._ids)}", self.call_id, self.recordings_dir)
        self.link.calls[leg.handle] = leg
        self.link.send(protocol.Dial(leg.handle, uri))
        return leg

    def bridge(self, leg: Any) -> None:
        self._check()
        self.link.send(protocol.Bridge(self.handle, leg.handle))

    def monitor(self, supervisor: Any, agent: Any, mode: str) -> None:
        self._check()
        if mode not in protocol.MONITOR_MODES:
            raise ValueError(f"unknown monitor mode {mode!r}")
        self.link.send(protocol.Monitor(supervisor.handle, self.handle, agent.handle, mode))  # type: ignore[arg-type]

    async def stop_play(self) -> None:
        if self._plays:
            self.link.send(protocol.StopPlay(self.handle))

    async def record_conversation(self, leg: Any, max_s: float) -> RecordingResult:
        return await self.record("conversation", max_s=max_s, silence_s=max_s, no_input_s=max_s, stop_digits="",
                                 peer=leg)

    async def wait_answered(self, timeout_s: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_first_set(self.answered, self.ended_event), timeout_s)
        return self.answered.is_set() and not self.ended

    async def wait_ended(self) -> None:
        await self.ended_event.wait()

    async def wait_referred(self) -> tuple[str, ControlCall]:
        return await self._referred.get()

    async def stop_record(self) -> None:
        for rec_id in list(self._records):
            self.link.send(protocol.StopRecord(self.handle, rec_id))

    async def next_digit(self, timeout_s: float | None = None) -> str | None:
        while not self._digits:
            self._check()
            self._digit_arrived.clear()
            try:
                await asyncio.wait_for(self._digit_arrived.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        return self._digits.popleft()

    def clear_digits(self, only: str | None = None) -> None:
        if only is None:
            self._digits.clear()
        else:
            self._digits = collections.deque(d for d in self._digits if d not in only)

    async def hangup(self) -> None:
        if self.ended:
            return
        self.link.send(protocol.HangupCall(self.handle))
        try:
            await asyncio.wait_for(self.ended_event.wait(), HANGUP_CONFIRM_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("%s: worker did not confirm hang-up", self.handle)
            self.on_ended("hangup unconfirmed")

    def end_by_operator(self) -> None:
        """`softswitch hangup`: the worker hangs up as for any other call, and the flow ends as it does
        when the caller hangs up (recordings closed and kept, the case filed)."""
        self.operator_hangup = True
        self.link.send(protocol.HangupCall(self.handle))

    # -- events from the worker ------------------------------------------
    def on_event(self, event: protocol.Event) -> None:
        match event:
            case protocol.Answered():
                self.answered.set()
            case protocol.Ringing():
                self.ringing.set()
            case protocol.Dtmf(digit=digit):
                self._digits.append(digit)
                self._digit_arrived.set()
            case protocol.PlayDone(play_id=play_id, completed=completed):
                future = self._plays.pop(play_id, None)
                if future is not None and not future.done():
                    future.set_result(completed)
            case protocol.RecordDone():
                entry = self._records.pop(event.rec_id, None)
                if entry is not None and not entry[2].done():
                    entry[2].set_result(RecordingResult(
                        kind=entry[0], path=Path(event.path), duration_s=event.duration_s, sha256=event.sha256,
                        reason=event.reason, speech_s=event.speech_s, complete=event.complete))
            case protocol.Hangup(status_code=status_code, reason=reason):
                self.end_status = status_code
                if self.operator_hangup:
                    self.on_ended("operator hung up")
                else:
                    self.on_ended("caller hung up" if self.answered.is_set() else f"failed: {reason}")
            case protocol.Referred(leg=handle, to=to):
                leg = ControlCall(self.link, handle, self.call_id, self.recordings_dir)
                self.link.calls[handle] = leg
                self._referred.put_nowait((to, leg))
            case protocol.Error(detail=detail):
                log.error("%s: worker reported: %s", self.handle, detail)

    def on_ended(self, reason: str) -> None:
        """The call is gone; settle whatever the IVR still waits for."""
        if self.end_reason is None:
            self.end_reason = reason
        for play in self._plays.values():
            if not play.done():
                play.set_exception(CallEnded(reason))
        self._plays.clear()
        for kind, path, recording in self._records.values():
            if not recording.done():
                recording.set_result(recover_recording(kind, path, "lost"))
        self._records.clear()
        while not self._referred.empty():
            # A REFER nobody took up (the call moved on or ended first): its leg must not ring on alone.
            _, leg = self._referred.get_nowait()
            self.link.send(protocol.HangupCall(leg.handle))
        self._digit_arrived.set()
        self.ended_event.set()

    def _check(self) -> None:
        if self.end_reason is not None:
            raise CallEnded(self.end_reason)


async def _first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def recover_recording(kind: str, path: Path, reason: str) -> RecordingResult:
    """A recording whose worker died: repair the WAV header and keep every sample written."""
    try:
        info = repair_wav(path)
    except FileNotFoundError:
        return RecordingResult(kind, path, 0.0, "", reason, 0.0, False)
    except (OSError, ValueError) as exc:
        log.error("cannot repair recording %s: %s", path, exc)
        return RecordingResult(kind, path, 0.0, "", reason, 0.0, False)
    # Speech was not measured by the dead worker; count the audio as possible speech
    # so a partial message is filed rather than dropped.
    return RecordingResult(kind, path, info.duration_s, info.sha256, reason, info.duration_s, False)

