"""Call routing: a pure decision from the INVITE's facts to a destination, testable without a socket."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

USER_PART = re.compile(r"^(?:\"[^\"]*\"\s*)?<?(?:sips?:([^@;>]+)@|tel:([^;>]+))", re.IGNORECASE)


@dataclass(frozen=True)
class CallFacts:
    to_uri: str
    from_uri: str
    source: str  # address the trunk's packet came from, as the SIP front saw it


@dataclass(frozen=True)
class Accept:
    flow: str


@dataclass(frozen=True)
class Reject:
    status_code: int
    reason: str


Destination = Accept | Reject


def dialled_number(uri: str) -> str | None:
    """The user part of a SIP/tel URI, with visual separators removed."""
    match = USER_PART.match(uri.strip())
    if match is None:
        return None
    return re.sub(r"[\s\-.()]", "", match.group(1) or match.group(2))


def caller_number(from_uri: str) -> str:
    """The caller's number (the From user part), or "" when the trunk sent none."""
    return dialled_number(from_uri) or ""


def source_allowed(source: str, allow: Sequence[str]) -> bool:
    host = source.rsplit(":", 1)[0] if source.count(":") == 1 else source
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)


def route(facts: CallFacts, service_number: str, trunk_allow: Sequence[str]) -> Destination:
    if not source_allowed(facts.source, trunk_allow):
        return Reject(403, "source not on the trunk allow-list")
    if dialled_number(facts.to_uri) != service_number:
        return Reject(404, "number not served here")
    return Accept("ivr")
