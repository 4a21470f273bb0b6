"""The ID capture step against a scripted channel: keys that outlast the utterance's recording."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Sequence

import pytest

import ivr.identify
from ivr.channel import CallEnded, RecordingResult
from ivr.identify import Whose, capture_national_id, confirm
from softswitch.config import IvrConfig

pytestmark = pytest.mark.unit


class ScriptedChannel:
    """A CallChannel whose recording ends when the script says, and whose keys arrive at set times."""

    def __init__(self, recording_ends_s: float) -> None:
        self.recording_ends_s = recording_ends_s
        self._digits: collections.deque[str] = collections.deque()
        self._arrived = asyncio.Event()
        self.digit_waits = 0
        self.ended = False

    def key(self, digits: str) -> None:
        self._digits.extend(digits)
        self._arrived.set()

    async def play(self, files: Sequence[Path], *, interrupt: str = "") -> None:
        pass

    async def record(self, kind: str, *, max_s: float, silence_s: float, no_input_s: float,
                     stop_digits: str = "#") -> RecordingResult:
        await asyncio.sleep(self.recording_ends_s)
        return RecordingResult(kind, Path(f"/recordings/{kind}.wav"), self.recording_ends_s, "0" * 64, "no_input",
                               0.0, True)

    async def stop_record(self) -> None:
        pass

    async def next_digit(self, timeout_s: float | None = None) -> str | None:
        self.digit_waits += 1
        while not self._digits:
            if self.ended:
                raise CallEnded("caller hung up")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        return self._digits.popleft()

    def clear_digits(self, only: str | None = None) -> None:
        self._digits = collections.deque(d for d in self._digits if only is not None and d not in only)

    async def hangup(self) -> None:
        self.ended = True


@pytest.fixture(autouse=True)
def short_inter_digit_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ivr.identify, "INTER_DIGIT_TIMEOUT_S", 0.3)


async def test_keys_still_coming_when_the_recording_ends_are_all_taken() -> None:
    channel = ScriptedChannel(recording_ends_s=0.05)
    channel.key("0499")

    async def rest_of_the_id() -> None:
        await asyncio.sleep(0.2)  # after the recording ended, within the inter-digit timeout
        channel.key("370899")
    keys = asyncio.create_task(rest_of_the_id())
    capture = await asyncio.wait_for(capture_national_id(channel, IvrConfig(), "national_id_utterance"), 5)
    await keys
    assert capture.keyed == "0499370899"
    # One wait per key and a few more: never a wait restarted in a loop while nothing happens.
    assert channel.digit_waits <= 10 + 3


async def test_a_caller_who_stops_keying_ends_the_step_after_the_inter_digit_timeout() -> None:
    channel = ScriptedChannel(recording_ends_s=0.05)
    channel.key("0499")
    started = time.monotonic()
    capture = await asyncio.wait_for(capture_national_id(channel, IvrConfig(), "national_id_utterance"), 5)
    assert capture.keyed == "0499"
    assert 0.3 <= time.monotonic() - started < 1.0
    assert channel.digit_waits <= 4 + 3


class NamedPrompts:
    def path(self, name: str) -> Path:
        return Path(f"/prompts/{name}.wav")

    def number(self, digits: str) -> list[Path]:
        return [self.path(f"digit_{d}") for d in digits]


async def test_a_confirmation_keyed_ahead_of_the_read_back_is_the_answer() -> None:
    channel = ScriptedChannel(recording_ends_s=0.0)
    channel.key("#1")  # the ID's "#", then "1" before the read-back began
    answer = await asyncio.wait_for(confirm(channel, NamedPrompts(), Whose.CALLER, "0499370899", timeout_s=0.3), 5)
    assert answer == "1"


async def test_a_hash_after_the_id_is_no_answer() -> None:
    channel = ScriptedChannel(recording_ends_s=0.0)
    channel.key("#")
    assert await asyncio.wait_for(confirm(channel, NamedPrompts(), Whose.CALLER, "0499370899", timeout_s=0.3),
                                  5) is None
