import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from media.wavfile import WavWriter
from tests.support.g711 import alaw_decode
from tests.support.rtp_pcap import CallerTimeline, Segment, SegmentKind

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Rtp:
    time_us: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def checksum_ok(header: bytes) -> bool:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def read_pcap(path: Path) -> list[Rtp]:
    """A minimal libpcap reader that checks every layer down to RTP."""
    data = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    offset, packets = 24, []
    while offset < len(data):
        seconds, micros, caplen, length = struct.unpack_from("<IIII", data, offset)
        offset += 16
        assert caplen == length <= snaplen
        frame = data[offset : offset + caplen]
        offset += caplen
        assert len(frame) == caplen
        assert struct.unpack_from("!H", frame, 12)[0] == 0x0800
        ip = frame[14:34]
        version_ihl, _, total_length, _, _, _, protocol = struct.unpack_from("!BBHHHBB", ip)
        assert (version_ihl, protocol, total_length) == (0x45, 17, len(frame) - 14)
        assert checksum_ok(ip)
        _, _, udp_length, _ = struct.unpack_from("!HHHH", frame, 34)
        assert udp_length == len(frame) - 34
        rtp = frame[42:]
        first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", rtp)
        assert first == 0x80  # version 2, no padding, extension or CSRCs
        packets.append(
            Rtp(
                seconds * 1_000_000 + micros,
                bool(second & 0x80),
                second & 0x7F,
                sequence,
                timestamp,
                ssrc,
                rtp[12:],
            )
        )
    return packets


def ramp(samples: int) -> bytes:
    return (np.arange(samples) * 37 % 20000 - 10000).astype("<i2").tobytes()


def test_continuous_stream_with_all_segment_kinds(tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    with WavWriter(wav) as writer:
        writer.write(ramp(800))
    timeline = (
        CallerTimeline(ssrc=0xCAFE0111, first_sequence=65530, first_timestamp=0xFFFFFF00)
        .silence(0.5)
        .speech(ramp(1000))
        .dtmf("1#")
        .speech_wav(wav)
        .silence(0.2)
    )
    segments = timeline.write(tmp_path / "caller.pcap")
    packets = read_pcap(tmp_path / "caller.pcap")

    # 25 silence + 7 speech (1000 samples padded) + 2 x 10 DTMF + 5 speech + 10 silence
    assert len(packets) == 67
    assert timeline.total_s == pytest.approx(67 * 0.02)
    assert segments == [
        Segment(SegmentKind.SILENCE, 0.0, 0.5, ""),
        Segment(SegmentKind.SPEECH, 0.5, 0.64, ""),
        Segment(SegmentKind.DTMF, 0.64, 1.04, "1#"),
        Segment(SegmentKind.SPEECH, 1.04, 1.14, str(wav)),
        Segment(SegmentKind.SILENCE, 1.14, 1.34, ""),
    ]
    for index, packet in enumerate(packets):
        assert packet.time_us == index * 20_000
        assert packet.sequence == (65530 + index) % 65536
        assert packet.ssrc == 0xCAFE0111
    audio = [(i, p) for i, p in enumerate(packets) if p.payload_type == 8]
    for index, packet in audio:
        assert packet.timestamp == (0xFFFFFF00 + 160 * index) % 2**32
        assert len(packet.payload) == 160
        assert not packet.marker

    def kinds(segment: Segment) -> set[int]:
        first, last = round(segment.start_s / 0.02), round(segment.end_s / 0.02)
        return {p.payload_type for p in packets[first:last]}

    assert [kinds(s) for s in segments] == [{8}, {8}, {8, 101}, {8}, {8}]
    assert all(p.payload == b"\xd5" * 160 for p in packets[:25] + packets[-10:])


def test_speech_payload_is_the_pcm_in_alaw(tmp_path: Path) -> None:
    pcm = ramp(1000)
    CallerTimeline().speech(pcm).write(tmp_path / "s.pcap")
    packets = read_pcap(tmp_path / "s.pcap")
    assert len(packets) == 7
    encoded = b"".join(p.payload for p in packets)
    decoded = alaw_decode(encoded[:1000]).astype(np.int64)
    original = np.frombuffer(pcm, "<i2").astype(np.int64)
    assert np.all(np.abs(decoded - original) <= np.maximum(8, np.abs(original) / 32))
    assert encoded[1000:] == b"\xd5" * 120


def test_dtmf_events_follow_rfc_4733(tmp_path: Path) -> None:
    CallerTimeline(dtmf_payload_type=96).silence(0.04).dtmf("5*", on_ms=100, off_ms=60).write(
        tmp_path / "d.pcap"
    )
    packets = read_pcap(tmp_path / "d.pcap")
    assert len(packets) == 2 + 2 * (5 + 2 + 3)
    for digit_index, event_code in enumerate((5, 10)):
        first = 2 + digit_index * 10
        tone, gap = packets[first : first + 7], packets[first + 7 : first + 10]
        assert {p.payload_type for p in tone} == {96}
        fields = [struct.unpack("!BBH", p.payload) for p in tone]
        assert [f[0] for f in fields] == [event_code] * 7
        assert [f[1] & 0x80 != 0 for f in fields] == [False] * 4 + [True] * 3
        assert [f[1] & 0x3F for f in fields] == [10] * 7
        assert [f[1] & 0x40 for f in fields] == [0] * 7
        assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800]
        assert [p.marker for p in tone] == [True] + [False] * 6
        # One event keeps the timestamp of its first packet.
        assert {p.timestamp for p in tone} == {first * 160}
        assert all(len(p.payload) == 4 for p in tone)
        assert [p.payload_type for p in gap] == [8] * 3
        assert all(p.payload == b"\xd5" * 160 for p in gap)
        assert [p.timestamp for p in gap] == [(first + 7 + i) * 160 for i in range(3)]


def test_dtmf_shortest_event_and_no_gap(tmp_path: Path) -> None:
    CallerTimeline().dtmf("9d", on_ms=20, off_ms=0).write(tmp_path / "d.pcap")
    packets = read_pcap(tmp_path / "d.pcap")
    assert [struct.unpack("!BBH", p.payload) for p in packets] == [(9, 0x8A, 160)] * 3 + [
        (15, 0x8A, 160)
    ] * 3
    assert [p.marker for p in packets] == [True, False, False] * 2
    assert [p.timestamp for p in packets] == [0] * 3 + [480] * 3


def test_silence_rounds_to_whole_packets() -> None:
    timeline = CallerTimeline().silence(0.031).silence(0.0)
    assert timeline.total_s == pytest.approx(0.04)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda t: t.silence(-1), "not negative"),
        (lambda t: t.silence(float("inf")), "finite"),
        (lambda t: t.speech(b""), "empty"),
        (lambda t: t.speech(b"\x00" * 3), "whole 16-bit samples"),
        (lambda t: t.dtmf("12x!"), r"not DTMF digits .*'!X'"),
        (lambda t: t.dtmf(""), "empty"),
        (lambda t: t.dtmf("1", on_ms=50), "on_ms must be a positive multiple of 20"),
        (lambda t: t.dtmf("1", on_ms=0), "on_ms must be a positive multiple of 20"),
        (lambda t: t.dtmf("1", on_ms=8200), "16-bit RFC 4733 duration"),
        (lambda t: t.dtmf("1", off_ms=-20), "off_ms must be a non-negative multiple of 20"),
    ],
)
def test_rejects_bad_input(build: Callable[[CallerTimeline], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(CallerTimeline())


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="dynamic payload type"):
        CallerTimeline(dtmf_payload_type=8)
    with pytest.raises(ValueError, match="16 bits"):
        CallerTimeline(first_sequence=70000)
    with pytest.raises(ValueError, match="32 bits"):
        CallerTimeline(ssrc=-1)


def test_speech_wav_needs_8k_mono(tmp_path: Path) -> None:
    wav = tmp_path / "wide.wav"
    with WavWriter(wav, sample_rate=16000) as writer:
        writer.write(ramp(320))
    with pytest.raises(ValueError, match="expected 8000 Hz mono 16-bit PCM, got 16000 Hz"):
        CallerTimeline().speech_wav(wav)


def test_empty_timeline_is_a_valid_pcap(tmp_path: Path) -> None:
    assert CallerTimeline().write(tmp_path / "e.pcap") == []
    assert read_pcap(tmp_path / "e.pcap") == []
