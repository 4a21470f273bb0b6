"""The control protocol (softswitch/protocol.py): typed messages, their JSON lines, and refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest

from softswitch import protocol

pytestmark = pytest.mark.unit

EXAMPLES: list[protocol.Message] = [
    protocol.Hello(worker_id=1, pid=42, sip_port=5070, max_calls=None),
    protocol.Capacity(4),
    protocol.Incoming("w1-1", "abc@trunk", "sip:0912@trunk", "sip:111@front", "sip:111@front:5060", "10.0.0.1"),
    protocol.Refused("abc@trunk", "sip:0912@trunk", "sip:111@front", "sip:111@front", "10.0.0.1", 488, "Not Acceptable"),
    protocol.Ringing("w1-1-leg2"), protocol.Answered("w1-1"), protocol.Dtmf("w1-1", "#"),
    protocol.PlayDone("w1-1", "7", completed=False),
    protocol.RecordDone("w1-1", "3", "/r/a.wav", duration_s=2.5, sha256="ab", reason="silence", speech_s=1.0,
                        complete=True),
    protocol.Hangup("w1-1", 408, "rtp timeout"), protocol.Referred("w1-1-leg2", "w1-1-leg2-refer1", "1002"),
    protocol.Error("w1-1", "bridge peer is gone"),
    protocol.Answer("w1-1"), protocol.Reject("w1-1", 404), protocol.Play("w1-1", "8", ("/p/a.wav", "/p/b.wav")),
    protocol.StopPlay("w1-1"),
    protocol.Record("w1-1", "4", "/r/b.wav", max_s=120.0, silence_s=3.0, no_input_s=15.0, stop_digits="#"),
    protocol.Record("w1-1", "5", "/r/c.wav", max_s=60.0, silence_s=60.0, no_input_s=60.0, stop_digits="",
                    peer="w1-1-leg2"),
    protocol.StopRecord("w1-1", "4"), protocol.HangupCall("w1-1"), protocol.Dial("w1-1-leg2", "sip:1001@front"),
    protocol.Bridge("w1-1", "w1-1-leg2"), protocol.Monitor("w1-1-leg3", "w1-1", "w1-1-leg2", "whisper"),
    protocol.Drain(), protocol.Admit(False), protocol.Admit(True),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_survives_its_line(message: protocol.Message) -> None:
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decode = protocol.decode_event if isinstance(message, protocol.Event) else protocol.decode_command
    assert decode(line) == message


def test_every_type_is_exemplified_once_per_direction() -> None:
    assert {type(m) for m in EXAMPLES} == set(protocol.EVENTS.values()) | set(protocol.COMMANDS.values())


def line_of(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode() + b"\n"


@pytest.mark.parametrize("body, fault", [
    ({"type": "dtmf", "call": "w1-1", "digit": "1"}, "unexpected message type 'dtmf'"),  # an event
    ({"type": "explode"}, "unexpected message type 'explode'"),
    ({"type": "play", "call": "w1-1", "play_id": "1"}, "play: missing field 'files'"),
    ({"type": "play", "call": "w1-1", "play_id": "1", "files": "a.wav"}, "field 'files' is not tuple"),
    ({"type": "reject", "call": "w1-1", "status_code": "404"}, "field 'status_code' is not int"),
    ({"type": "reject", "call": "w1-1", "status_code": True}, "field 'status_code' is not int"),
    ({"type": "answer", "call": "w1-1", "extra": 1}, "answer: unknown fields \\['extra'\\]"),
    ({"type": "answer", "call": None}, "field 'call' is not str"),
    ({"type": "monitor", "call": "a", "caller": "b", "agent": "c", "mode": "spy"},
     "field 'mode' is not one of 'listen', 'whisper', 'barge'"),
    ({"type": "monitor", "call": "a", "caller": "b", "agent": "c", "mode": 1},
     "field 'mode' is not one of 'listen', 'whisper', 'barge'"),
])
def test_a_command_that_is_not_what_it_says_is_refused_with_its_fault(body: dict[str, object], fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        protocol.decode_command(line_of(body))


def test_lines_that_are_no_message_are_refused() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        protocol.decode_event(b"{oops\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        protocol.decode_event(b"[1]\n")
    with pytest.raises(ValueError, match="exceeds"):
        protocol.decode_event(b" " * (protocol.MAX_LINE + 1))


def test_numbers_are_read_as_the_field_says_and_optional_fields_may_be_left_out() -> None:
    done = protocol.decode_event(line_of({"type": "record_done", "call": "c", "rec_id": "1", "path": "/a.wav",
                                          "duration_s": 3, "sha256": "", "reason": "max", "speech_s": 0,
                                          "complete": True}))
    assert isinstance(done, protocol.RecordDone) and done.duration_s == 3.0 and isinstance(done.duration_s, float)
    assert done.detail == "" and dataclasses.replace(done, detail="x").detail == "x"
