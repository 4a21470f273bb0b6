"""IVR layer: the national-ID step: capture (spoken or keyed), recognise, validate, confirm, retry.

The spoken utterance is always recorded as its own recording (the "tape"),
whatever happens next. Keyed digits are taken at any moment of the step. A
caller who cannot get through validation is never dropped: after the last
attempt the call goes on with the ID marked unverified, or left to the back
office to transcribe from the tape.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ivr.channel import ANY_KEY, CallChannel, CallEnded, RecordingResult
from ivr.menu import INTER_DIGIT_TIMEOUT_S, choose
from ivr.steps import took
from softswitch.config import IvrConfig
from softswitch.domain.national_id import normalize_digits, parse_national_id
from storage.models import PersonId



class Prompts(Protocol):
    def path(self, name: str) -> Path: ...

    def number(self, digits: str) -> list[Path]: ...


class RecordingSink(Protocol):
    async def keep_recording(self, result: RecordingResult) -> None: ...


class Recognition(Protocol):
    @property
    def digits(self) -> str: ...


class SpeechDigits(Protocol):
    """Speech recognition of spoken digits, run off the event loop."""

    async def recognize_wav(self, path: Path) -> Recognition: ...


class Whose(enum.Enum):
    """Whose ID is asked for: the caller's own, or the person the request concerns."""

    CALLER = ("national_id", "ask_national_id", "your_national_id_is", "national_id_utterance")
    SUBJECT = ("subject_id", "ask_subject_national_id", "subject_national_id_is", "subject_id_utterance")

    def __init__(self, step: str, ask: str, read_back: str, recording_kind: str) -> None:
        self.step = step  # the step's name in the call's IVR path
        self.ask = ask
        self.read_back = read_back
        self.recording_kind = recording_kind


@dataclass(frozen=True)
class NationalIdCapture:
    keyed: str  # digits as keyed; personal data: never log
    utterance: RecordingResult


@dataclass
class Identification:
    person: PersonId
    # One entry per attempt, e.g. "national_id:keypad:invalid"; never the digits. It may be
    # the call's own IVR path, so that a call ending mid-step keeps the attempts it made.
    path: list[str] = field(default_factory=list)

    def step(self, whose: Whose, outcome: str) -> None:
        took(self.path, f"{whose.step}:{outcome}")


async def capture_national_id(channel: CallChannel, cfg: IvrConfig, kind: str) -> NationalIdCapture:
    """Record the spoken ID as its own recording while taking any keyed digits.

    Keys end the step early (``#`` or a full ID); a caller still keying when the
    utterance recording ends keeps the inter-digit timeout to finish.
    """
    recording = asyncio.create_task(channel.record(
        kind, max_s=cfg.id_max_s, silence_s=cfg.id_silence_s, no_input_s=cfg.id_no_input_s, stop_digits="#"))
    keyed = ""
    try:
        while True:
            if recording.done() and not keyed:
                break
            digit_wait = asyncio.create_task(channel.next_digit(INTER_DIGIT_TIMEOUT_S if recording.done() else None))
            # A digit wait cancelled as the call ends may still finish with CallEnded: consume it.
            digit_wait.add_done_callback(lambda task: task.cancelled() or task.exception())
            # Once the recording is over only the digits are waited for: an ended
            # recording in the set would end every wait at once, a busy loop.
            waits: set[asyncio.Future[Any]] = {digit_wait} if recording.done() else {recording, digit_wait}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if digit_wait not in done:
                digit_wait.cancel()
                await asyncio.wait({digit_wait})
                if digit_wait.cancelled():
                    continue
                # It took a digit off the channel before the cancel reached it: the digit counts.
            digit = digit_wait.result()
            if digit is None or digit == "#":
                break
            if digit.isdigit():
                keyed += digit
                if len(keyed) >= cfg.id_digits:
                    break
        if not recording.done():
            await channel.stop_record()
    except CallEnded:
        pass
    return NationalIdCapture(keyed=keyed, utterance=await recording)


async def confirm(channel: CallChannel, prompts: Prompts, whose: Whose, national_id: str,
                  timeout_s: float) -> str | None:
    """Read the ID back digit by digit; "1" confirms, "2" asks again; None if no answer."""
    # A "#" after a full ID is neither an answer nor a reason to cut the read-back
    # short; a "1" pressed ahead of the read-back is the answer, and stays.
    channel.clear_digits(only="#")
    await channel.play([prompts.path(whose.read_back), *prompts.number(national_id),
                        prompts.path("confirm_national_id")], interrupt="12")
    while (digit := await channel.next_digit(timeout_s)) is not None:
        if digit in ("1", "2"):
            return digit
    return None


async def identify(channel: CallChannel, prompts: Prompts, sink: RecordingSink, cfg: IvrConfig,
                   recognizer: SpeechDigits | None, whose: Whose, path: list[str] | None = None) -> Identification:
    """Ask for an ID, up to cfg.id_attempts times; each attempt's outcome is appended to ``path`` as it happens."""
    result = Identification(PersonId(None, "none", "none"), path if path is not None else [])
    unverified: PersonId | None = None
    heard_speech = False
    for attempt in range(1, cfg.id_attempts + 1):
        ask = [prompts.path(whose.ask)] if attempt == 1 else [prompts.path("national_id_again"),
                                                             prompts.path(whose.ask)]
        await channel.play(ask, interrupt=ANY_KEY)
        capture = await capture_national_id(channel, cfg, whose.recording_kind)
        await sink.keep_recording(capture.utterance)
        if channel.ended:
            raise CallEnded("caller hung up")
        heard_speech |= capture.utterance.heard_speech
        if capture.keyed:
            source, raw = "keypad", capture.keyed
        elif capture.utterance.heard_speech and recognizer is not None:
            source, raw = "speech", (await recognizer.recognize_wav(capture.utterance.path)).digits
        elif capture.utterance.heard_speech:
            # No recogniser configured: the tape is the ID, for the back office.
            result.step(whose, "speech:to_transcribe")
            result.person = PersonId(None, "speech", "to_transcribe")
            return result
        else:
            result.step(whose, "no_input")
            continue
        national_id = parse_national_id(raw)
        if national_id is None:
            result.step(whose, f"{source}:invalid")
            digits = normalize_digits(raw)
            if digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 10:
                unverified = PersonId(digits.zfill(10), source, "unverified")
            await channel.play([prompts.path("national_id_invalid")])
            continue
        unverified = PersonId(national_id, source, "unverified")
        if await confirm(channel, prompts, whose, national_id, cfg.confirm_timeout_s) == "1":
            result.step(whose, f"{source}:verified")
            result.person = PersonId(national_id, source, "verified")
            return result
        result.step(whose, f"{source}:not_confirmed")
    # Out of attempts: go on rather than drop the caller; what we have is kept.
    if unverified is not None:
        result.person = unverified
    elif heard_speech:
        result.person = PersonId(None, "speech", "to_transcribe")
    result.step(whose, result.person.status)
    return result


async def ask_about_whom(channel: CallChannel, prompts: Prompts, cfg: IvrConfig) -> bool:
    """True when the request concerns someone else (spouse, child, parent, ...)."""
    # No answer: the request is taken as the caller's own.
    return await choose(channel, prompts, [prompts.path("ask_about_whom")], "12", cfg, default="1") == "2"
