import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.support.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

pytestmark = pytest.mark.unit

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))

Encoder = Callable[[npt.NDArray[np.int16]], bytes]
Decoder = Callable[[bytes], npt.NDArray[np.int16]]


def test_alaw_known_values() -> None:
    pcm = np.array([0, 7, 8, -1, -8, 32767, -32768], dtype=np.int16)
    assert alaw_encode(pcm) == bytes([0xD5, 0xD5, 0xD5, 0x55, 0x55, 0xAA, 0x2A])
    assert ALAW_SILENCE == 0xD5
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]


def test_ulaw_known_values() -> None:
    pcm = np.array([0, 32767, -32768], dtype=np.int16)
    assert ulaw_encode(pcm) == bytes([0xFF, 0x80, 0x00])
    assert ULAW_SILENCE == 0xFF
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]


@pytest.mark.parametrize("encode,decode", [(alaw_encode, alaw_decode), (ulaw_encode, ulaw_decode)])
def test_decoded_codes_reencode_to_themselves(encode: Encoder, decode: Decoder) -> None:
    decoded = decode(ALL_CODES)
    assert decoded.dtype == np.int16
    reencoded = encode(decoded)
    # mu-law has two zeros (0x7F and 0xFF); both decode to 0, which encodes as 0xFF.
    mismatches = [code for code in range(256) if reencoded[code] != code]
    assert mismatches in ([], [0x7F])


def test_alaw_round_trip_error_is_half_a_quantisation_step() -> None:
    pcm = ALL_SAMPLES.astype(np.int64)
    error = np.abs(alaw_decode(alaw_encode(ALL_SAMPLES)).astype(np.int64) - pcm)
    # Steps are 16 below 512 and 1/16 of the level above (segments double).
    assert np.all(error <= np.maximum(8, np.abs(pcm) / 32))


def test_ulaw_round_trip_error_is_small_relative_to_level() -> None:
    pcm = ALL_SAMPLES.astype(np.int64)
    error = np.abs(ulaw_decode(ulaw_encode(ALL_SAMPLES)).astype(np.int64) - pcm)
    assert np.all(error <= np.maximum(12, np.abs(pcm) / 16))
    assert np.all(error[np.abs(pcm) < 32] <= 8)


@pytest.mark.parametrize("decode", [alaw_decode, ulaw_decode])
def test_decoding_mirrors_the_sign_bit(decode: Decoder) -> None:
    levels = decode(ALL_CODES).astype(np.int64)
    flipped = decode(bytes(code ^ 0x80 for code in range(256))).astype(np.int64)
    assert np.array_equal(flipped, -levels)


def test_alaw_encoding_is_symmetric_in_ones_complement() -> None:
    # A-law codes negative samples by magnitude -x-1 (one's complement).
    positive = np.arange(0, 32768, dtype=np.int16)
    negative = (-positive.astype(np.int32) - 1).astype(np.int16)
    flipped = bytes(code ^ 0x80 for code in alaw_encode(positive))
    assert alaw_encode(negative) == flipped


def test_ulaw_encoding_is_symmetric_on_its_14_bit_grid() -> None:
    positive = np.arange(4, 32768, 4, dtype=np.int16)
    flipped = bytes(code ^ 0x80 for code in ulaw_encode(positive))
    assert ulaw_encode(-positive) == flipped


def test_encoding_is_monotonic() -> None:
    for encode, decode in ((alaw_encode, alaw_decode), (ulaw_encode, ulaw_decode)):
        levels = decode(encode(ALL_SAMPLES)).astype(np.int64)
        assert np.all(np.diff(levels) >= 0)


@pytest.mark.parametrize("encoding,decode", [("a-law", alaw_decode), ("mu-law", ulaw_decode)])
def test_decoding_matches_sox(tmp_path: Path, encoding: str, decode: Decoder) -> None:
    # Only decoding is compared: sox rounds to 13/14 bits before encoding,
    # where G.711's reference encoder truncates.
    coded = tmp_path / "in.raw"
    coded.write_bytes(ALL_CODES)
    out = tmp_path / "out.raw"
    subprocess.run(
        ["sox", "-t", "raw", "-r", "8000", "-e", encoding, "-b", "8", "-c", "1", str(coded),
         "-t", "raw", "-e", "signed", "-b", "16", str(out)],
        check=True,
    )
    assert decode(ALL_CODES).tolist() == np.frombuffer(out.read_bytes(), "<i2").tolist()


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="dtype int16"):
        alaw_encode(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError, match="one-dimensional"):
        ulaw_encode(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="numpy array"):
        alaw_encode(b"\x00\x00")  # type: ignore[arg-type]


def test_empty_input() -> None:
    assert alaw_encode(np.zeros(0, dtype=np.int16)) == b""
    assert ulaw_decode(b"").shape == (0,)
