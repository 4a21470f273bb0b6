"""IVR layer: the recorded-message (offline) flow, open at every hour.

Greeting -> national ID (spoken, kept as its own recording, or keyed) -> message
after the tone -> tracking code read back -> goodbye. Whatever point the call
ends at, what was recorded is kept and attached to the call, and a message (even
a partial one) always becomes a case.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from ivr.channel import CallChannel, CallEnded, RecordingResult
from softswitch.config import IvrConfig

log = logging.getLogger("ivr.recorded_message")

INTER_DIGIT_TIMEOUT_S = 4.0


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...

    def number(self, digits: str) -> list[Path]: ...


class CaseSink(Protocol):
    """Where the flow files what it gathered (the store, seen from the IVR)."""

    async def keep_recording(self, result: RecordingResult) -> None: ...

    async def open_case(self, national_id: str | None, id_source: str, complete: bool) -> str: ...


class IvrState(enum.Enum):
    GREETING = "greeting"
    NATIONAL_ID = "national_id"
    MESSAGE = "message"
    TRACKING_CODE = "tracking_code"
    GOODBYE = "goodbye"
    DONE = "done"


TRANSITIONS: dict[IvrState, IvrState] = {
    IvrState.GREETING: IvrState.NATIONAL_ID,
    IvrState.NATIONAL_ID: IvrState.MESSAGE,
    IvrState.MESSAGE: IvrState.TRACKING_CODE,
    IvrState.TRACKING_CODE: IvrState.GOODBYE,
    IvrState.GOODBYE: IvrState.DONE,
}


@dataclass(frozen=True)
class NationalIdCapture:
    keyed: str  # digits as keyed; personal data: never log
    utterance: RecordingResult
    digits: int = 10

    @property
    def national_id(self) -> str | None:
        """A complete keyed ID; anything shorter stays on the utterance tape for the back office."""
        return self.keyed if len(self.keyed) == self.digits else None

    @property
    def source(self) -> str:
        if self.national_id is not None:
            return "keypad"
        return "speech" if self.utterance.heard_speech else "none"


@dataclass
class Session:
    """What one call's pass through the flow produced; ``path`` is the CDR's IVR path."""

    state: IvrState = IvrState.GREETING
    path: list[str] = field(default_factory=list)
    national_id: NationalIdCapture | None = None
    message: RecordingResult | None = None
    tracking_code: str | None = None
    ended_by: str | None = None


async def capture_national_id(channel: CallChannel, cfg: IvrConfig) -> NationalIdCapture:
    """Record the spoken ID as its own recording while taking any keyed digits.

    Keys end the step early (``#`` or a full ID); a caller still keying when the
    utterance recording ends keeps the inter-digit timeout to finish.
    """
    recording = asyncio.create_task(channel.record(
        "national_id_utterance", max_s=cfg.id_max_s, silence_s=cfg.id_silence_s,
        no_input_s=cfg.id_no_input_s, stop_digits="#"))
    keyed = ""
    finished_keying = False
    try:
        while not finished_keying:
            timeout = None if not recording.done() else (INTER_DIGIT_TIMEOUT_S if keyed else 0)
            if recording.done() and not keyed:
                break
            digit_wait = asyncio.create_task(channel.next_digit(timeout))
            done, _ = await asyncio.wait({recording, digit_wait}, return_when=asyncio.FIRST_COMPLETED)
            if digit_wait not in done:
                digit_wait.cancel()
                continue
            digit = digit_wait.result()
            if digit is None or digit == "#":
                finished_keying = True
            elif digit.isdigit():
                keyed += digit
                finished_keying = len(keyed) >= cfg.id_digits
        if not recording.done():
            await channel.stop_record()
    except CallEnded:
        pass
    return NationalIdCapture(keyed=keyed, utterance=await recording, digits=cfg.id_digits)


async def record_message(channel: CallChannel, prompts: Prompts, cfg: IvrConfig) -> RecordingResult:
    await channel.play([prompts.path("record_after_tone"), prompts.path("beep")])
    channel.clear_digits()
    return await channel.record("message", max_s=cfg.message_max_s, silence_s=cfg.message_silence_s,
                                no_input_s=cfg.message_no_input_s, stop_digits="#")


async def read_tracking_code(channel: CallChannel, prompts: Prompts, code: str, repeats: int) -> None:
    files = [prompts.path("tracking_code_intro"), *prompts.number(code)]
    for _ in range(repeats - 1):
        files += [prompts.path("tracking_code_repeat"), *prompts.number(code)]
    await channel.play(files)


class RecordedMessageFlow:
    def __init__(self, channel: CallChannel, prompts: Prompts, cases: CaseSink, cfg: IvrConfig,
                 label: str) -> None:
        self.channel = channel
        self.prompts = prompts
        self.cases = cases
        self.cfg = cfg
        self.label = label
        self.session = Session()

    def _set_state(self, new: IvrState) -> None:
        log.debug("%s: %s -> %s", self.label, self.session.state.value, new.value)
        self.session.state = new

    async def run(self) -> Session:
        s = self.session
        try:
            while s.state is not IvrState.DONE:
                await self._enter(s.state)
                self._set_state(TRANSITIONS[s.state])
        except CallEnded as ended:
            s.ended_by = ended.reason
            s.path.append(f"ended:{s.state.value}")
        finally:
            await self._file()
        return s

    async def _enter(self, state: IvrState) -> None:
        s = self.session
        match state:
            case IvrState.GREETING:
                s.path.append("greeting")
                await self.channel.play([self.prompts.path("greeting")], barge_in=True)
            case IvrState.NATIONAL_ID:
                # Digits keyed during the greeting already count: they are the ID.
                await self.channel.play([self.prompts.path("ask_national_id")], barge_in=True)
                s.national_id = await capture_national_id(self.channel, self.cfg)
                await self.cases.keep_recording(s.national_id.utterance)
                s.path.append(f"national_id:{s.national_id.source}")
                if self.channel.ended:
                    raise CallEnded("caller hung up")
            case IvrState.MESSAGE:
                s.message = await record_message(self.channel, self.prompts, self.cfg)
                await self.cases.keep_recording(s.message)
                s.path.append(f"message:{s.message.reason}")
                await self._open_case()
                if s.tracking_code is None and not self.channel.ended:
                    s.path.append("no_message")
                    await self.channel.play([self.prompts.path("no_message")])
                if self.channel.ended:
                    raise CallEnded("caller hung up")
            case IvrState.TRACKING_CODE:
                if s.tracking_code is not None:
                    s.path.append("tracking_code")
                    await read_tracking_code(self.channel, self.prompts, s.tracking_code,
                                             self.cfg.tracking_code_repeats)
            case IvrState.GOODBYE:
                await self.channel.play([self.prompts.path("goodbye")])
                s.path.append("goodbye")
                await self.channel.hangup()

    async def _open_case(self) -> None:
        s = self.session
        message = s.message
        if s.tracking_code is not None or message is None:
            return
        if not message.heard_speech and message.reason == "no_input":
            return
        nid = s.national_id
        s.tracking_code = await self.cases.open_case(
            national_id=nid.national_id if nid else None,
            id_source=nid.source if nid else "none",
            complete=message.complete and message.reason not in ("hangup", "lost"),
        )

    async def _file(self) -> None:
        """After the call ends at any point: a message, even a partial one, becomes a case."""
        try:
            await self._open_case()
        except Exception:
            log.exception("%s: could not file the case", self.label)
            raise
