"""Media layer: crash-safe WAV evidence writer and WAV inspection helpers."""

import enum
import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


HEADER_BYTES = 44
SAMPLE_BYTES = 2
_PLACEHOLDER_SIZE = 0xFFFFFFFF
# PJSIP's WAV writer leaves both sizes 0 until it is destroyed.
_ENGINE_PLACEHOLDER_SIZE = 0
_RIFF_SIZE_OFFSET = 4
_DATA_SIZE_OFFSET = 40
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_HASH_CHUNK_BYTES = 1 << 20
_RMS_CHUNK_SAMPLES = 1 << 19


class RecordingError(OSError):
    """Writing a recording failed; the audio written before the failure stays on disk."""


@dataclass(frozen=True)
class WavInfo:
    """A finished WAV file: where it is, how long it plays and its fingerprint."""

    path: Path
    duration_s: float
    sha256: str
    bytes: int


@dataclass(frozen=True)
class WavFormat:
    """The PCM parameters of a WAV file and where its sample data lies."""

    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int
    data_bytes: int

    @property
    def duration_s(self) -> float:
        """Playing time of the sample data in seconds."""
        return self.data_bytes / (self.sample_rate * self.channels * self.bits_per_sample // 8)


def _canonical_header(sample_rate: int, riff_size: int, data_bytes: int) -> bytes:
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        1,
        sample_rate,
        sample_rate * SAMPLE_BYTES,
        SAMPLE_BYTES,
        SAMPLE_BYTES * 8,
        b"data",
        data_bytes,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    # A new file survives a power cut only once its directory entry is durable.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _as_recording_error(path: Path, error: OSError) -> RecordingError:
    return RecordingError(error.errno, error.strerror or str(error), str(path))


class WavWriter:
    """Writes 16-bit mono PCM to a new WAV file so that a crash keeps all complete frames.

    Each write goes straight to the OS (no user-space buffer), so a killed process
    leaves everything but the frame in flight on disk; `repair_wav` then fixes the
    header. The file must not exist yet: evidence is never silently overwritten.
    Not thread-safe: one writer belongs to one audio thread.
    """

    class State(enum.Enum):
        OPEN = "open"
        FAILED = "failed"
        CLOSED = "closed"

    def __init__(self, path: Path, sample_rate: int = 8000) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._path = Path(path)
        self._sample_rate = sample_rate
        self._data_bytes = 0
        self._state = WavWriter.State.OPEN
        self._error: OSError | None = None
        self._info: WavInfo | None = None
        self._fd: int | None = os.open(
            self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640
        )
        try:
            _write_all(
                self._fd, _canonical_header(sample_rate, _PLACEHOLDER_SIZE, _PLACEHOLDER_SIZE)
            )
        except OSError as error:
            os.close(self._fd)
            self._fd = None
            # A header-only file holds no evidence and would only confuse later audits.
            self._path.unlink(missing_ok=True)
            raise _as_recording_error(self._path, error) from error

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> "WavWriter.State":
        return self._state

    @property
    def failed(self) -> OSError | None:
        """The OSError that stopped the recording, or None while it is healthy."""
        return self._error

    @property
    def duration_s(self) -> float:
        """Seconds of whole samples written so far."""
        return (self._data_bytes // SAMPLE_BYTES) / self._sample_rate

    def write(self, pcm: bytes) -> None:
        """Append whole 16-bit samples; raises RecordingError if the OS refuses them."""
        if self._state is WavWriter.State.CLOSED:
            raise ValueError(f"{self._path}: write after close")
        if self._error is not None:
            raise _as_recording_error(self._path, self._error) from self._error
        if len(pcm) % SAMPLE_BYTES:
            raise ValueError(f"pcm must hold whole 16-bit samples, got {len(pcm)} bytes")
        if HEADER_BYTES - 8 + self._data_bytes + len(pcm) >= _PLACEHOLDER_SIZE:
            raise ValueError(f"{self._path}: recording would exceed the 4 GiB WAV size limit")
        assert self._fd is not None
        view = memoryview(pcm)
        try:
            while view:
                written = os.write(self._fd, view)
                # Counted per call so that a short write before ENOSPC is kept.
                self._data_bytes += written
                view = view[written:]
        except OSError as error:
            self._state = WavWriter.State.FAILED
            self._error = error
            raise _as_recording_error(self._path, error) from error

    def close(self) -> WavInfo:
        """Finish the header for what was written, fsync, and describe the file.

        Idempotent: later calls return the same WavInfo.
        """
        if self._info is not None:
            return self._info
        if self._fd is None:
            assert self._error is not None
            raise _as_recording_error(self._path, self._error) from self._error
        fd, self._fd = self._fd, None
        # A short write can end mid-sample; the partial sample is not audio.
        whole = self._data_bytes - self._data_bytes % SAMPLE_BYTES
        try:
            try:
                _finish_header(fd, whole, self._data_bytes)
            finally:
                os.close(fd)
            fsync_directory(self._path.parent)
            digest = sha256_file(self._path)
        except OSError as error:
            self._state = WavWriter.State.FAILED
            self._error = error
            raise _as_recording_error(self._path, error) from error
        self._data_bytes = whole
        self._state = WavWriter.State.CLOSED
        self._info = WavInfo(self._path, self.duration_s, digest, HEADER_BYTES + whole)
        return self._info

    def __enter__(self) -> "WavWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_format(path: Path) -> WavFormat:
    """Parse the chunks of a PCM WAV file; ValueError if it is not a complete one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF/WAVE file")
        fmt: tuple[int, int, int, int] | None = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise ValueError(f"{path}: no data chunk")
            chunk_id, chunk_size = struct.unpack("<4sI", chunk)
            if chunk_id == b"fmt ":
                fmt = _parse_fmt_chunk(path, f.read(chunk_size))
                f.seek(chunk_size % 2, os.SEEK_CUR)
            elif chunk_id == b"data":
                break
            else:
                f.seek(chunk_size + chunk_size % 2, os.SEEK_CUR)
        data_offset = f.tell()
    if fmt is None:
        raise ValueError(f"{path}: no fmt chunk before the data chunk")
    if chunk_size == _PLACEHOLDER_SIZE:
        raise ValueError(
            f"{path}: data size is a placeholder (unfinished recording); run repair_wav"
        )
    if data_offset + chunk_size > size:
        raise ValueError(
            f"{path}: data chunk declares {chunk_size} bytes but only "
            f"{size - data_offset} follow the header (truncated file)"
        )
    format_tag, channels, sample_rate, bits = fmt
    if format_tag != _WAVE_FORMAT_PCM:
        raise ValueError(f"{path}: not linear PCM (format tag {format_tag:#06x})")
    if channels < 1 or sample_rate < 1 or bits not in (8, 16, 24, 32):
        raise ValueError(
            f"{path}: invalid PCM format: {channels} channels, {sample_rate} Hz, {bits} bits"
        )
    return WavFormat(sample_rate, channels, bits, data_offset, chunk_size)


def _parse_fmt_chunk(path: Path, body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise ValueError(f"{path}: fmt chunk is {len(body)} bytes, expected at least 16")
    format_tag, channels, sample_rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if format_tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        # The real format tag is the first two bytes of the sub-format GUID.
        (format_tag,) = struct.unpack("<H", body[24:26])
    return format_tag, channels, sample_rate, bits


def read_pcm(path: Path, sample_rate: int = 8000) -> bytes:
    """The sample data of a mono 16-bit WAV at sample_rate; ValueError for any other format."""
    path = Path(path)
    fmt = read_format(path)
    if (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) != (sample_rate, 1, 16):
        raise ValueError(
            f"{path}: expected {sample_rate} Hz mono 16-bit PCM, got {fmt.sample_rate} Hz "
            f"{fmt.channels} channel(s) {fmt.bits_per_sample}-bit"
        )
    with open(path, "rb") as f:
        f.seek(fmt.data_offset)
        return f.read(fmt.data_bytes)


def wav_info(path: Path) -> WavInfo:
    """Describe a finished WAV file (duration from its data chunk, sha256 of all bytes)."""
    path = Path(path)
    fmt = read_format(path)
    return WavInfo(path, fmt.duration_s, sha256_file(path), path.stat().st_size)


def _finish_header(fd: int, whole: int, stored: int) -> None:
    """Cut a trailing partial sample, write the real RIFF and data sizes, fsync."""
    if whole != stored:
        os.ftruncate(fd, HEADER_BYTES + whole)
    os.pwrite(fd, struct.pack("<I", HEADER_BYTES - 8 + whole), _RIFF_SIZE_OFFSET)
    os.pwrite(fd, struct.pack("<I", whole), _DATA_SIZE_OFFSET)
    os.fsync(fd)


def header_finished(path: Path) -> bool:
    """True once a canonical WAV's header declares the sizes its file has (its writer closed it)."""
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    if len(header) < HEADER_BYTES:
        return False
    riff_size, = struct.unpack_from("<I", header, _RIFF_SIZE_OFFSET)
    data_size, = struct.unpack_from("<I", header, _DATA_SIZE_OFFSET)
    return riff_size == size - 8 and data_size == size - HEADER_BYTES


def repair_wav(path: Path) -> WavInfo:
    """Finish a recording whose writer died: whole samples, real sizes, fsync.

    The writer is WavWriter (sizes 0xFFFFFFFF until closed) or the media
    engine's (sizes 0 until closed).

    A file whose header is already correct is left unchanged, so repairing twice is safe.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        header = os.pread(fd, HEADER_BYTES, 0)
        if len(header) < HEADER_BYTES:
            raise ValueError(
                f"{path}: only {len(header)} bytes, shorter than the {HEADER_BYTES}-byte header"
            )
        (riff, riff_size, wave, fmt_id, fmt_size, format_tag, channels, sample_rate,
         byte_rate, block_align, bits, data_id, data_size) = struct.unpack(
            "<4sI4s4sIHHIIHH4sI", header
        )
        if (riff, wave, fmt_id, fmt_size, format_tag, data_id) != (
            b"RIFF", b"WAVE", b"fmt ", 16, _WAVE_FORMAT_PCM, b"data"
        ) or block_align != channels * bits // 8 or block_align == 0:
            raise ValueError(f"{path}: not a canonical 44-byte PCM WAV header")
        stored = os.fstat(fd).st_size - HEADER_BYTES
        whole = stored - stored % block_align
        for field, declared, actual in (
            ("RIFF size", riff_size, HEADER_BYTES - 8 + whole),
            ("data size", data_size, whole),
        ):
            if declared not in (_PLACEHOLDER_SIZE, _ENGINE_PLACEHOLDER_SIZE, actual):
                raise ValueError(
                    f"{path}: header {field} is {declared} but the file holds {actual}; "
                    "not an unfinished recording"
                )
        _finish_header(fd, whole, stored)
    finally:
        os.close(fd)
    return wav_info(path)


def is_silence(path: Path, threshold_dbfs: float = -50.0) -> bool:
    """True if the RMS level of the whole file is below threshold_dbfs (0 dBFS = 32768)."""
    path = Path(path)
    fmt = read_format(path)
    if fmt.bits_per_sample != 16:
        raise ValueError(f"{path}: is_silence needs 16-bit PCM, got {fmt.bits_per_sample}-bit")
    total_samples = fmt.data_bytes // SAMPLE_BYTES
    if total_samples == 0:
        return True
    import numpy as np  # only tests and tools measure levels; the call path never does

    sum_of_squares = 0
    # Chunked so that hour-long recordings need no more than a few MB of memory;
    # int64 squares keep the sum exact.
    with open(path, "rb") as f:
        f.seek(fmt.data_offset)
        remaining = total_samples
        while remaining:
            count = min(remaining, _RMS_CHUNK_SAMPLES)
            samples = np.frombuffer(f.read(count * SAMPLE_BYTES), dtype="<i2").astype(np.int64)
            sum_of_squares += int(np.dot(samples, samples))
            remaining -= count
    rms = math.sqrt(sum_of_squares / total_samples)
    return rms < 32768.0 * math.pow(10.0, threshold_dbfs / 20.0)
