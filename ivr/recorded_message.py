"""IVR layer: the recorded-message steps (message after the tone, tracking code read back)."""

from __future__ import annotations

import logging
from typing import Protocol

from ivr.channel import CallChannel, RecordingResult
from ivr.identify import Prompts
from softswitch.config import IvrConfig
from storage.models import PersonId

log = logging.getLogger("ivr.recorded_message")


class CaseSink(Protocol):
    """Where the flow files what it gathered (the store, seen from the IVR)."""

    async def keep_recording(self, result: RecordingResult) -> None: ...

    async def open_case(self, subject: PersonId, caller: PersonId | None, complete: bool) -> str: ...


async def record_message(channel: CallChannel, prompts: Prompts, cfg: IvrConfig) -> RecordingResult:
    await channel.play([prompts.path("record_after_tone"), prompts.path("beep")])
    channel.clear_digits()
    return await channel.record("message", max_s=cfg.message_max_s, silence_s=cfg.message_silence_s,
                                no_input_s=cfg.message_no_input_s, stop_digits="#")


async def read_tracking_code(channel: CallChannel, prompts: Prompts, code: str, repeats: int,
                             intro: str = "tracking_code_intro") -> None:
    files = [prompts.path(intro), *prompts.number(code)]
    for _ in range(repeats - 1):
        files += [prompts.path("tracking_code_repeat"), *prompts.number(code)]
    await channel.play(files)
