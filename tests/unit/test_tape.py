"""TapeFollower reads a real WAV file as another writer appends to it, as the engine's WAV writer does."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from media.tape import TapeFollower
from media.vad import Endpointer
from media.wavfile import header_finished, repair_wav

pytestmark = pytest.mark.unit

RATE = 8000
FLUSH_BYTES = 960  # the engine's writer flushes 60 ms at a time (scripts/pjsip/config_site.h)


def voiced(seconds: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * 130.0 * k * t) / k for k in range(1, 25))
    return np.asarray(6000 * wave / np.max(np.abs(wave))).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


class EngineWriter:
    """Writes a WAV the way PJSIP's writer does: sizes 0 in the header until closed, 60 ms flushes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0, b"WAVE", b"fmt ", 16, 1, 1, RATE, 2 * RATE, 2, 16,
                             b"data", 0)
        path.write_bytes(header)

    def append(self, pcm: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(pcm)

    def close(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", size - 8))
            f.seek(40)
            f.write(struct.pack("<I", size - 44))


def follow(tape: TapeFollower, writer: EngineWriter, pcm: bytes, start_s: float = 0.0) -> tuple[TapeFollower.End | None, float]:
    """Append pcm in 60 ms flushes, polling after each as the worker's loop would; (end, when)."""
    now = start_s
    for offset in range(0, len(pcm), FLUSH_BYTES):
        writer.append(pcm[offset:offset + FLUSH_BYTES])
        now += 0.06
        end = tape.poll(now)
        if end is not None:
            return end, now
    return None, now


def test_speech_then_silence_ends_on_silence(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "message.wav")
    tape = TapeFollower(writer.path, endpointer=Endpointer(silence_s=1.0), max_s=30, no_input_s=5, now=0.0)
    end, at = follow(tape, writer, silence(0.5) + voiced(2.0) + silence(3.0))
    assert end is TapeFollower.End.SILENCE
    # 0.5 s lead, 2 s speech, 1 s of silence, and the VAD's own hang-over of a few frames
    assert 3.5 <= at <= 3.8
    assert tape.speech_s == pytest.approx(2.0, abs=0.2)
    assert tape.duration_s == pytest.approx(at, abs=0.06)
    assert tape.poll(at + 10) is end  # an end, once found, stays
    tape.close()
    tape.close()


def test_no_speech_ends_at_no_input(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "quiet.wav")
    tape = TapeFollower(writer.path, endpointer=Endpointer(silence_s=1.0), max_s=30, no_input_s=2.0, now=0.0)
    end, _ = follow(tape, writer, silence(5.0))
    assert end is TapeFollower.End.NO_INPUT
    assert tape.duration_s == pytest.approx(2.0)
    assert tape.speech_s == 0.0


def test_conversation_is_not_end_pointed_and_ends_at_max(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "conversation.wav")
    tape = TapeFollower(writer.path, endpointer=None, max_s=2.0, no_input_s=2.0, now=0.0)
    end, _ = follow(tape, writer, voiced(0.5) + silence(3.0))
    assert end is TapeFollower.End.MAX
    assert tape.duration_s == pytest.approx(2.0) == tape.speech_s


def test_a_writer_that_stops_growing_the_file_is_an_error(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "stalled.wav")
    tape = TapeFollower(writer.path, endpointer=Endpointer(silence_s=1.0), max_s=30, no_input_s=20, now=0.0,
                        stall_s=3.0)
    assert follow(tape, writer, voiced(1.0))[0] is None
    assert tape.poll(3.9) is None  # last growth at 1.02 s
    assert tape.poll(4.1) is TapeFollower.End.STALLED
    assert tape.duration_s == pytest.approx(1.0, abs=0.02)


def test_half_written_frames_wait_for_the_rest(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "partial.wav")
    tape = TapeFollower(writer.path, endpointer=None, max_s=30, no_input_s=30, now=0.0)
    pcm = voiced(0.1)
    writer.append(pcm[:500])
    tape.poll(0.1)
    assert tape.frames == 1  # 320 bytes of 500
    writer.append(pcm[500:])
    tape.poll(0.2)
    assert tape.frames == 5


def test_engine_header_is_finished_or_repaired(tmp_path: Path) -> None:
    writer = EngineWriter(tmp_path / "tape.wav")
    writer.append(voiced(0.3))
    assert not header_finished(writer.path)
    repaired = repair_wav(writer.path)  # a worker killed before the engine finished it
    assert repaired.duration_s == pytest.approx(0.3)
    assert header_finished(writer.path)
    other = EngineWriter(tmp_path / "closed.wav")
    other.append(voiced(0.2))
    other.close()
    assert header_finished(other.path)
    assert not header_finished(tmp_path / "missing.wav")
