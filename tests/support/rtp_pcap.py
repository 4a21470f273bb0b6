"""Media layer: scripted caller RTP streams written as pcap files for SIPp play_pcap_audio."""

import enum
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.wavfile import read_pcm
from tests.support.g711 import ALAW_SILENCE, alaw_encode

PCMA_PAYLOAD_TYPE = 8
DEFAULT_DTMF_PAYLOAD_TYPE = 101
SAMPLE_RATE = 8000
PACKET_MS = 20
PACKET_SAMPLES = SAMPLE_RATE * PACKET_MS // 1000
DTMF_VOLUME = 10
DTMF_END_PACKETS = 3

_DTMF_EVENT_CODES = {digit: code for code, digit in enumerate("0123456789*#ABCD")}
_SILENCE_PAYLOAD = bytes([ALAW_SILENCE]) * PACKET_SAMPLES
_LINKTYPE_ETHERNET = 1
# SIPp rewrites addresses and ports on replay, so these only need to be valid.
_SRC_MAC = bytes.fromhex("020000000001")
_DST_MAC = bytes.fromhex("020000000002")
_SRC_IP = bytes([192, 0, 2, 1])
_DST_IP = bytes([192, 0, 2, 2])
_SRC_PORT = 40000
_DST_PORT = 40000


class SegmentKind(enum.StrEnum):
    SILENCE = "silence"
    SPEECH = "speech"
    DTMF = "dtmf"


@dataclass(frozen=True)
class Segment:
    """One builder call's span of the stream, in seconds from the first packet."""

    kind: SegmentKind
    start_s: float
    end_s: float
    detail: str


@dataclass(frozen=True)
class _Packet:
    payload_type: int
    marker: bool
    # Index of the packet whose send time the RTP timestamp names: its own for
    # audio, the event's first packet for every packet of a DTMF event.
    timestamp_slot: int
    payload: bytes


class CallerTimeline:
    """Builds one caller's RTP stream: PCMA audio every 20 ms with RFC 4733 DTMF events.

    The stream never pauses (silence is sent as A-law silence), has one SSRC and
    continuous sequence numbers and timestamps, as a real phone would send.
    """

    def __init__(
        self,
        ssrc: int = 0x01110111,
        dtmf_payload_type: int = DEFAULT_DTMF_PAYLOAD_TYPE,
        first_sequence: int = 0,
        first_timestamp: int = 0,
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc must fit in 32 bits, got {ssrc}")
        if not 96 <= dtmf_payload_type <= 127:
            raise ValueError(
                "dtmf_payload_type must be a dynamic payload type (96-127), "
                f"got {dtmf_payload_type}"
            )
        if not 0 <= first_sequence <= 0xFFFF:
            raise ValueError(f"first_sequence must fit in 16 bits, got {first_sequence}")
        if not 0 <= first_timestamp <= 0xFFFFFFFF:
            raise ValueError(f"first_timestamp must fit in 32 bits, got {first_timestamp}")
        self._ssrc = ssrc
        self._dtmf_payload_type = dtmf_payload_type
        self._first_sequence = first_sequence
        self._first_timestamp = first_timestamp
        self._packets: list[_Packet] = []
        self._segments: list[Segment] = []

    @property
    def total_s(self) -> float:
        """Length of the stream so far in seconds."""
        return len(self._packets) * PACKET_MS / 1000

    def silence(self, seconds: float) -> "CallerTimeline":
        """Append silence, rounded to whole 20 ms packets."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"silence seconds must be finite and not negative, got {seconds}")
        start = len(self._packets)
        for _ in range(round(seconds * 1000 / PACKET_MS)):
            self._append_audio(_SILENCE_PAYLOAD)
        self._add_segment(SegmentKind.SILENCE, start, "")
        return self

    def speech(self, pcm: bytes, label: str = "") -> "CallerTimeline":
        """Append 8 kHz 16-bit mono PCM; the last packet is padded with silence."""
        if not pcm:
            raise ValueError("speech pcm is empty")
        if len(pcm) % 2:
            raise ValueError(f"speech pcm must hold whole 16-bit samples, got {len(pcm)} bytes")
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        padding = -len(samples) % PACKET_SAMPLES
        encoded = alaw_encode(samples) + bytes([ALAW_SILENCE]) * padding
        start = len(self._packets)
        for offset in range(0, len(encoded), PACKET_SAMPLES):
            self._append_audio(encoded[offset : offset + PACKET_SAMPLES])
        self._add_segment(SegmentKind.SPEECH, start, label)
        return self

    def speech_wav(self, path: Path) -> "CallerTimeline":
        """Append the audio of an 8 kHz mono 16-bit WAV file."""
        return self.speech(read_pcm(Path(path), SAMPLE_RATE), label=str(path))

    def dtmf(self, digits: str, on_ms: int = 100, off_ms: int = 60) -> "CallerTimeline":
        """Append RFC 4733 key presses, each followed by off_ms of silence.

        An event is sent every 20 ms with a growing duration; its final packet
        carries the E bit and is sent three times (RFC 4733 section 2.5.1.4),
        the two repeats taking the first 40 ms after the tone.
        """
        if not digits:
            raise ValueError("dtmf digits are empty")
        unknown = sorted({d for d in digits.upper() if d not in _DTMF_EVENT_CODES})
        if unknown:
            raise ValueError(f"not DTMF digits (0-9, *, #, A-D): {''.join(unknown)!r}")
        if on_ms <= 0 or on_ms % PACKET_MS:
            raise ValueError(f"on_ms must be a positive multiple of {PACKET_MS}, got {on_ms}")
        if on_ms * SAMPLE_RATE // 1000 > 0xFFFF:
            raise ValueError(f"on_ms {on_ms} exceeds the 16-bit RFC 4733 duration field")
        if off_ms < 0 or off_ms % PACKET_MS:
            raise ValueError(f"off_ms must be a non-negative multiple of {PACKET_MS}, got {off_ms}")
        start = len(self._packets)
        tone_packets = on_ms // PACKET_MS
        for digit in digits.upper():
            slot = len(self._packets)
            for index in range(tone_packets + DTMF_END_PACKETS - 1):
                end = index >= tone_packets - 1
                duration = min(index + 1, tone_packets) * PACKET_SAMPLES
                payload = struct.pack(
                    "!BBH",
                    _DTMF_EVENT_CODES[digit],
                    (0x80 if end else 0) | DTMF_VOLUME,
                    duration,
                )
                self._packets.append(_Packet(self._dtmf_payload_type, index == 0, slot, payload))
            for _ in range(off_ms // PACKET_MS):
                self._append_audio(_SILENCE_PAYLOAD)
        self._add_segment(SegmentKind.DTMF, start, digits.upper())
        return self

    def write(self, path: Path) -> list[Segment]:
        """Write the stream as a classic Ethernet pcap; return the segments in order."""
        out = bytearray(
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)
        )
        for index, packet in enumerate(self._packets):
            frame = self._frame(index, packet)
            micros = index * PACKET_MS * 1000
            out += struct.pack(
                "<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)
            )
            out += frame
        Path(path).write_bytes(out)
        return list(self._segments)

    def _append_audio(self, payload: bytes) -> None:
        slot = len(self._packets)
        self._packets.append(_Packet(PCMA_PAYLOAD_TYPE, False, slot, payload))

    def _add_segment(self, kind: SegmentKind, start_packet: int, detail: str) -> None:
        self._segments.append(
            Segment(kind, start_packet * PACKET_MS / 1000, self.total_s, detail)
        )

    def _frame(self, index: int, packet: _Packet) -> bytes:
        rtp = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if packet.marker else 0) | packet.payload_type,
            (self._first_sequence + index) & 0xFFFF,
            (self._first_timestamp + packet.timestamp_slot * PACKET_SAMPLES) & 0xFFFFFFFF,
            self._ssrc,
        ) + packet.payload
        # UDP checksum 0 means "none" in IPv4; SIPp computes a real one when it sends.
        udp = struct.pack("!HHHH", _SRC_PORT, _DST_PORT, 8 + len(rtp), 0) + rtp
        ip = _ipv4_header(len(udp), identification=index & 0xFFFF)
        return _DST_MAC + _SRC_MAC + struct.pack("!H", 0x0800) + ip + udp


def _ipv4_header(payload_bytes: int, identification: int) -> bytes:
    def pack(checksum: int) -> bytes:
        return struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + payload_bytes,
            identification,
            0x4000,
            64,
            17,
            checksum,
            _SRC_IP,
            _DST_IP,
        )

    return pack(_internet_checksum(pack(0)))


def _internet_checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
