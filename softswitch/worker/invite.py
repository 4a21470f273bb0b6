"""What a worker reads off a SIP request itself: where an INVITE came from, what it asked for, its Call-ID;
whom a REFER names.

Pure text work, no library: the library thread and the endpoint's refusal
callback both use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCE_HEADER = re.compile(rb"^X-111-Source:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
CALL_ID_HEADER = re.compile(rb"^(?:Call-ID|i):\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class InviteFacts:
    source: str  # the trunk it came from (the front's X-111-Source stamp), else the sender's address
    request_uri: str
    call_id: str  # its SIP Call-ID


def describe_invite(whole_message: str, source_address: str, local_uri: str) -> InviteFacts:
    """Where an INVITE came from, what it asked for and its Call-ID, read off the message itself."""
    message = whole_message.encode("utf-8", "replace")
    match = SOURCE_HEADER.search(message)
    source = match.group(1).decode() if match else source_address
    request_line = message.split(b"\r\n", 1)[0].split(b" ")
    request_uri = request_line[1].decode("utf-8", "replace") if len(request_line) == 3 else local_uri
    call_id = CALL_ID_HEADER.search(message)
    return InviteFacts(source, request_uri, call_id.group(1).decode("utf-8", "replace") if call_id else "")


_REFER_TO = re.compile(r"^\s*<?sips?:([^@;>?]+)@([^;>?]+)(.*)$", re.IGNORECASE)


def refer_target(refer_to: str, front: str) -> str | None:
    """The user a REFER's Refer-To names at the front (host:port, or the host alone for port 5060); None
    for a URI elsewhere, or one that replaces another dialog (the phone's own attended transfer)."""
    match = _REFER_TO.match(refer_to)
    if match is None or "replaces" in match.group(3).lower():
        return None
    user, hostport = match.groups()[:2]
    if hostport.lower() != front.lower() and f"{hostport.lower()}:5060" != front.lower():
        return None
    return user
