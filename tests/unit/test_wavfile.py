import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from media.wavfile import (
    HEADER_BYTES,
    RecordingError,
    WavInfo,
    WavWriter,
    is_silence,
    read_format,
    read_pcm,
    repair_wav,
    wav_info,
)

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAME_BYTES = 320


def frame(value: int) -> bytes:
    return struct.pack("<160h", *([value] * 160))


def header_sizes(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    riff_size, = struct.unpack_from("<I", data, 4)
    data_size, = struct.unpack_from("<I", data, 40)
    return riff_size, data_size


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def sine(seconds: float, dbfs: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    # RMS of a sine is peak / sqrt(2).
    peak = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    samples: bytes = (peak * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
    return samples


def test_written_file_is_a_valid_wav(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    pcm = b"".join(frame(i * 100) for i in range(50))
    with WavWriter(path) as writer:
        for offset in range(0, len(pcm), FRAME_BYTES):
            writer.write(pcm[offset : offset + FRAME_BYTES])
        assert writer.duration_s == pytest.approx(1.0)
    info = writer.close()
    assert info == WavInfo(path, 1.0, hashlib.sha256(path.read_bytes()).hexdigest(), 44 + len(pcm))
    assert header_sizes(path) == (36 + len(pcm), len(pcm))
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.readframes(w.getnframes()) == pcm
    assert wav_info(path) == info
    assert writer.state is WavWriter.State.CLOSED and writer.failed is None


def test_header_has_placeholders_and_writes_reach_the_os_at_once(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    writer = WavWriter(path)
    assert path.stat().st_size == HEADER_BYTES
    assert header_sizes(path) == (0xFFFFFFFF, 0xFFFFFFFF)
    writer.write(frame(5))
    # Visible to another reader before close: nothing sits in a user-space buffer.
    assert path.stat().st_size == HEADER_BYTES + FRAME_BYTES
    assert writer.duration_s == pytest.approx(0.02)
    writer.close()


def test_close_is_idempotent(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "rec.wav")
    writer.write(frame(1))
    first = writer.close()
    assert writer.close() is first
    with pytest.raises(ValueError, match="write after close"):
        writer.write(frame(1))


def test_empty_recording(tmp_path: Path) -> None:
    info = WavWriter(tmp_path / "rec.wav").close()
    assert (info.duration_s, info.bytes) == (0.0, 44)
    assert is_silence(info.path)


def test_refuses_to_overwrite_evidence(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    path.write_bytes(b"earlier evidence")
    with pytest.raises(FileExistsError):
        WavWriter(path)
    assert path.read_bytes() == b"earlier evidence"


def test_rejects_partial_samples(tmp_path: Path) -> None:
    with WavWriter(tmp_path / "rec.wav") as writer:
        with pytest.raises(ValueError, match="whole 16-bit samples, got 3 bytes"):
            writer.write(b"abc")
        assert writer.state is WavWriter.State.OPEN


def test_sigkill_then_repair_keeps_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    result = run_python(
        f"""
        import os, signal
        from pathlib import Path
        from media.wavfile import WavWriter
        writer = WavWriter(Path({str(path)!r}))
        for i in range(37):
            writer.write(i.to_bytes(2, "little") * 160)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert header_sizes(path) == (0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(ValueError, match="placeholder"):
        wav_info(path)
    info = repair_wav(path)
    assert info.duration_s == pytest.approx(37 * 0.02)
    assert info.bytes == 44 + 37 * FRAME_BYTES == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_pcm(path)[-FRAME_BYTES:] == (36).to_bytes(2, "little") * 160
    assert repair_wav(path) == info


def test_repair_drops_a_partial_last_sample(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    writer = WavWriter(path)
    writer.write(frame(7) * 2)
    # Simulates a crash in the middle of a write: one byte of a sample landed.
    with open(path, "ab") as f:
        f.write(b"\x01")
    info = repair_wav(path)
    assert info.bytes == 44 + 2 * FRAME_BYTES
    assert header_sizes(path) == (36 + 2 * FRAME_BYTES, 2 * FRAME_BYTES)
    assert info.duration_s == pytest.approx(0.04)


def test_repair_refuses_files_it_did_not_write(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    short.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="shorter than the 44-byte header"):
        repair_wav(short)
    other = tmp_path / "other.wav"
    with WavWriter(other) as writer:
        writer.write(frame(3))
    with open(other, "ab") as f:
        f.write(b"LIST\x04\x00\x00\x00abcd")
    with pytest.raises(ValueError, match="not an unfinished recording"):
        repair_wav(other)
    not_wav = tmp_path / "not.wav"
    not_wav.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="canonical 44-byte PCM WAV header"):
        repair_wav(not_wav)


def test_file_size_limit_fails_the_recording_but_keeps_the_audio(tmp_path: Path) -> None:
    """A real OS write error: RLIMIT_FSIZE makes the kernel cut a write short, then EFBIG."""
    path = tmp_path / "rec.wav"
    limit = 44 + 3 * FRAME_BYTES + 101
    result = run_python(
        f"""
        import json, resource
        from pathlib import Path
        from media.wavfile import RecordingError, WavWriter
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        writer = WavWriter(Path({str(path)!r}))
        caught = None
        for i in range(10):
            try:
                writer.write(b"\\x10\\x00" * 160)
            except RecordingError as error:
                caught = error
                break
        try:
            writer.write(b"\\x00\\x00")
            again = None
        except RecordingError as error:
            again = error.errno
        info = writer.close()
        print(json.dumps({{
            "frames_before_error": i,
            "errno": caught.errno,
            "is_oserror": isinstance(caught, OSError),
            "failed_errno": writer.failed.errno,
            "again": again,
            "state": writer.state.name,
            "duration_s": info.duration_s,
            "bytes": info.bytes,
        }}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames_before_error"] == 3
    assert report["errno"] == report["failed_errno"] == report["again"] == errno.EFBIG
    assert report["is_oserror"]
    assert report["state"] == "CLOSED"
    # 101 bytes of the fourth frame landed: 50 whole samples are kept.
    kept = 3 * FRAME_BYTES + 100
    assert report["bytes"] == 44 + kept == path.stat().st_size
    assert report["duration_s"] == pytest.approx(kept / 2 / 8000)
    assert header_sizes(path) == (36 + kept, kept)
    assert wav_info(path).duration_s == pytest.approx(kept / 2 / 8000)


def test_disk_full_after_a_short_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rec.wav"
    writer = WavWriter(path)
    writer.write(frame(1))
    real_write = os.write

    def disk_fills_up(fd: int, data: bytes) -> int:
        if len(data) == FRAME_BYTES:
            return real_write(fd, bytes(data[:33]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(RecordingError) as caught:
        writer.write(frame(2))
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(path)
    assert writer.state is WavWriter.State.FAILED
    assert isinstance(writer.failed, OSError) and writer.failed.errno == errno.ENOSPC
    with pytest.raises(RecordingError):
        writer.write(frame(3))
    info = writer.close()
    assert info.bytes == 44 + FRAME_BYTES + 32
    assert read_pcm(path) == frame(1) + frame(2)[:32]
    assert writer.close() is info


def test_header_write_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(RecordingError) as caught:
        WavWriter(tmp_path / "rec.wav")
    assert caught.value.errno == errno.ENOSPC
    assert not (tmp_path / "rec.wav").exists()


def test_read_format_skips_foreign_chunks(tmp_path: Path) -> None:
    pcm = frame(9)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = (
        b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"LIST" + struct.pack("<I", 5) + b"abcde\x00"
        + b"data" + struct.pack("<I", len(pcm)) + pcm
    )
    path = tmp_path / "x.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    parsed = read_format(path)
    assert (parsed.sample_rate, parsed.channels, parsed.bits_per_sample) == (16000, 1, 16)
    assert parsed.data_bytes == len(pcm)
    assert parsed.duration_s == pytest.approx(0.01)
    with pytest.raises(ValueError, match="expected 8000 Hz mono 16-bit PCM, got 16000 Hz"):
        read_pcm(path)
    assert read_pcm(path, sample_rate=16000) == pcm


def test_read_format_rejects_broken_files(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="not a RIFF/WAVE file"):
        read_format(path)
    with WavWriter(tmp_path / "cut.wav") as writer:
        writer.write(frame(1) * 3)
    data = (tmp_path / "cut.wav").read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_format(path)


def test_is_silence(tmp_path: Path) -> None:
    def recording(name: str, pcm: bytes) -> Path:
        with WavWriter(tmp_path / name) as writer:
            writer.write(pcm)
        return tmp_path / name

    rng = np.random.default_rng(7)
    hiss = (rng.standard_normal(8000) * 32768 * 10 ** (-65 / 20)).astype("<i2").tobytes()
    assert is_silence(recording("zeros.wav", bytes(16000)))
    assert is_silence(recording("hiss.wav", hiss))
    voice_level = recording("tone.wav", sine(1.0, -20.0))
    assert not is_silence(voice_level)
    quiet = recording("quiet.wav", sine(1.0, -45.0))
    assert not is_silence(quiet)
    assert is_silence(quiet, threshold_dbfs=-40.0)


def test_sox_output_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "sox.wav"
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(path),
         "synth", "0.5", "sine", "1000"],
        check=True,
    )
    info = wav_info(path)
    assert info.duration_s == pytest.approx(0.5)
    assert len(read_pcm(path)) == 8000
    assert not is_silence(path)
