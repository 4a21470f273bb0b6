"""Control protocol between the control process and media workers: JSON lines over a Unix socket.

Every message is one JSON object on one line with a ``type`` field. Workers send
events (what happened on a call); the control process sends commands (what to do).
Calls are named by a worker-local handle (``call``), never by anything the caller
said or keyed. The protocol is the only thing the IVR knows of a media engine: a
different engine that speaks it can replace the PJSUA2 workers.

Events (worker -> control):
  hello        worker_id, pid, sip_port, max_calls (null until learnt)
  capacity     max_calls                      (the engine refused a call: cap learnt)
  incoming     call, sip_call_id, from_uri, to_uri, request_uri, source
  refused      sip_call_id, from_uri, to_uri, request_uri, source, status_code, reason
                                              (an INVITE the worker or its library refused itself)
  ringing      call                           (an outgoing leg is ringing)
  answered     call
  dtmf         call, digit
  play_done    call, play_id, completed
  record_done  call, rec_id, path, duration_s, sha256, reason, speech_s, complete
  hangup       call, status_code, reason
  error        call, detail

Commands (control -> worker):
  answer       call
  reject       call, status_code
  play         call, play_id, files
  stop_play    call
  record       call, rec_id, path, max_s, silence_s, no_input_s, stop_digits[, peer]
                                              (with peer: both parties, no end-pointing)
  stop_record  call, rec_id
  hangup       call
  dial         call, uri                      (new outgoing leg named by the control process)
  bridge       call, peer                     (two-way audio between two calls of one worker)
  drain                                       (refuse new calls with 503)
"""

from __future__ import annotations

import json
from typing import Any

EVENT_TYPES = frozenset(
    {"hello", "capacity", "incoming", "refused", "ringing", "answered", "dtmf", "play_done", "record_done", "hangup",
     "error"}
)
COMMAND_TYPES = frozenset(
    {"answer", "reject", "play", "stop_play", "record", "stop_record", "hangup", "dial", "bridge", "drain"}
)
MAX_LINE = 64 * 1024


def encode(message_type: str, **fields: Any) -> bytes:
    """One message as a newline-terminated JSON line."""
    if message_type not in EVENT_TYPES and message_type not in COMMAND_TYPES:
        raise ValueError(f"unknown message type {message_type!r}")
    return json.dumps({"type": message_type, **fields}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """Parse one line; raise ValueError naming what is wrong."""
    if len(line) > MAX_LINE:
        raise ValueError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"message is not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    message_type = message.get("type")
    if message_type not in allowed:
        raise ValueError(f"unexpected message type {message_type!r}")
    return message
