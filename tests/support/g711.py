"""Media layer: G.711 A-law and mu-law codecs over numpy arrays."""

import numpy as np
import numpy.typing as npt

ALAW_SILENCE = 0xD5
ULAW_SILENCE = 0xFF

# Sign-magnitude segment boundaries of the ITU-T G.711 reference encoder
# (A-law works on 13-bit magnitudes, mu-law on biased 14-bit magnitudes).
_ALAW_SEGMENT_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _build_alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 3
    negative = pcm < 0
    magnitude = np.where(negative, -pcm - 1, pcm)
    mask = np.where(negative, 0x55, 0xD5)
    segment = np.searchsorted(_ALAW_SEGMENT_END, magnitude)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return _index_by_uint16((code ^ mask).astype(np.uint8))


def _build_ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 2
    negative = pcm < 0
    magnitude = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    mask = np.where(negative, 0x7F, 0xFF)
    segment = np.searchsorted(_ULAW_SEGMENT_END, magnitude)
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return _index_by_uint16((code ^ mask).astype(np.uint8))


def _index_by_uint16(table_from_minus_32768: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    # Encoding looks samples up through their uint16 view, where -32768 sits
    # at 0x8000, so the table built in ascending int16 order is rotated.
    return np.roll(table_from_minus_32768, -32768)


def _build_alaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int64) ^ 0x55
    segment = (code & 0x70) >> 4
    magnitude = ((code & 0x0F) << 4) + np.where(segment == 0, 8, 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _build_ulaw_decode_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int64) & 0xFF
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS).astype(np.int16)


_ALAW_ENCODE = _build_alaw_encode_table()
_ULAW_ENCODE = _build_ulaw_encode_table()
_ALAW_DECODE = _build_alaw_decode_table()
_ULAW_DECODE = _build_ulaw_decode_table()


def _as_uint16_view(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    if not isinstance(pcm, np.ndarray):
        raise ValueError(f"pcm must be a numpy array of int16, got {type(pcm).__name__}")
    if pcm.dtype != np.dtype(np.int16):
        raise ValueError(f"pcm must have dtype int16 (native byte order), got {pcm.dtype}")
    if pcm.ndim != 1:
        raise ValueError(f"pcm must be one-dimensional (mono), got shape {pcm.shape}")
    return pcm.view(np.uint16)


def alaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode 16-bit linear samples to G.711 A-law, one byte per sample."""
    return _ALAW_ENCODE[_as_uint16_view(pcm)].tobytes()


def alaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 A-law bytes to 16-bit linear samples."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode 16-bit linear samples to G.711 mu-law, one byte per sample."""
    return _ULAW_ENCODE[_as_uint16_view(pcm)].tobytes()


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 mu-law bytes to 16-bit linear samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
