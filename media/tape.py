"""Media layer: follows a recording that the engine is writing, and decides when it ends."""

from __future__ import annotations

import enum
import os
from pathlib import Path

from media.vad import Endpointer
from media.wavfile import HEADER_BYTES, SAMPLE_BYTES

FRAME_S = 0.02
_READ_BYTES = 1 << 16


class TapeFollower:
    """Reads a 16-bit mono WAV as another writer appends to it, feeding the VAD 20 ms at a time.

    The evidence is written in C by the media engine on its audio clock thread;
    this runs on the worker's library thread, so no Python runs per audio frame
    where the clock is kept. ``poll`` reads what was appended since the last
    call and says whether the recording should end: speech followed by silence,
    the maximum length, no speech within ``no_input_s``, or a file that stopped
    growing for ``stall_s`` while the call was connected (the writer failed,
    typically a full disk). Without an endpointer (a conversation tape) only
    the maximum and a stall end it.
    """

    class End(enum.Enum):
        SILENCE = "silence"
        MAX = "max"
        NO_INPUT = "no_input"
        STALLED = "error"

    def __init__(self, path: Path, *, endpointer: Endpointer | None, max_s: float, no_input_s: float,
                 now: float, sample_rate: int = 8000, stall_s: float = 3.0) -> None:
        self.path = Path(path)
        self._endpointer = endpointer
        self._frame_bytes = round(sample_rate * FRAME_S) * SAMPLE_BYTES
        self._max_frames = round(max_s / FRAME_S)
        self._no_input_frames = round(no_input_s / FRAME_S)
        self._stall_s = stall_s
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._offset = HEADER_BYTES
        self._grew_at = now
        self._ended: TapeFollower.End | None = None
        self.frames = 0

    @property
    def duration_s(self) -> float:
        """Audio classified so far (up to the end, when one was found)."""
        return self.frames * FRAME_S

    @property
    def speech_s(self) -> float:
        # A conversation is not end-pointed: all of it counts as speech.
        return self._endpointer.speech_s if self._endpointer is not None else self.duration_s

    def poll(self, now: float) -> End | None:
        """Take in what the writer appended; the reason to end the recording, once there is one."""
        if self._ended is not None or self._fd is None:
            return self._ended
        grew = False
        while self._ended is None:
            # Whole frames only: the writer flushes in multiples of a frame, but a
            # read may still meet a flush half done.
            want = _READ_BYTES - _READ_BYTES % self._frame_bytes
            data = os.pread(self._fd, want, self._offset)
            usable = len(data) - len(data) % self._frame_bytes
            if usable == 0:
                break
            grew = True
            self._take(memoryview(data)[:usable])
            if len(data) < want:
                break
        if grew:
            self._grew_at = now
        elif self._ended is None and now - self._grew_at >= self._stall_s:
            self._ended = TapeFollower.End.STALLED
        return self._ended

    def _take(self, data: memoryview) -> None:
        step = self._frame_bytes
        endpointer = self._endpointer
        for start in range(0, len(data), step):
            self._offset += step
            self.frames += 1
            if endpointer is not None and endpointer.feed(bytes(data[start:start + step])) is Endpointer.Event.SPEECH_END:
                self._ended = TapeFollower.End.SILENCE
            elif self.frames >= self._max_frames:
                self._ended = TapeFollower.End.MAX
            elif (endpointer is not None and self.frames >= self._no_input_frames
                  and not endpointer.heard_speech):
                self._ended = TapeFollower.End.NO_INPUT
            if self._ended is not None:
                return

    def close(self) -> None:
        """Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
