"""Guards the worker's zero-copy read of PJSUA2 audio frames against a change of std::vector layout."""

from __future__ import annotations

import os

import pjsua2 as pj
import pytest

from softswitch.worker import frame_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, 160, 320, 640])
def test_frame_bytes_matches_the_slow_swig_copy(size: int) -> None:
    payload = os.urandom(size)
    frame = pj.MediaFrame()
    frame.buf = pj.ByteVector(payload)
    assert frame_bytes(frame) == bytes(frame.buf) == payload
