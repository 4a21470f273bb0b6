"""A case's life: its statuses and their order, the duplicate rule's window, and what filing came to.

A case is open until it is closed; only open cases can be duplicated. The
status only moves forward (``STATUS_ORDER``): an agency may mark a referred case
answered, then closed, never back. The names below are the ones the store
keeps; ``STATUS_LABELS`` are what people read (Persian).
"""

from __future__ import annotations

from dataclasses import dataclass

RECEIVED = "received"
RECEIVED_INCOMPLETE = "received_incomplete"  # the caller hung up before the message was complete
REFERRED = "referred"
ANSWERED = "answered"
CLOSED = "closed"
CASE_STATUSES = (RECEIVED, RECEIVED_INCOMPLETE, REFERRED, ANSWERED, CLOSED)
# Still being handled: a caller whose case is one of these and calls again is a repeat caller.
OPEN_STATUSES = (RECEIVED, RECEIVED_INCOMPLETE, REFERRED)
STATUS_ORDER = {RECEIVED: 0, RECEIVED_INCOMPLETE: 0, REFERRED: 1, ANSWERED: 2, CLOSED: 3}
# What an agency user may set on a case referred to their agency.
AGENCY_STATUSES = (ANSWERED, CLOSED)
# Not yet referred: an agent may still file (or refer) it.
UNFILED_STATUSES = (RECEIVED, RECEIVED_INCOMPLETE)
STATUS_LABELS = {
    RECEIVED: "دریافت‌شده", RECEIVED_INCOMPLETE: "ناقص دریافت‌شده", REFERRED: "ارجاع‌شده",
    ANSWERED: "پاسخ‌داده‌شده", CLOSED: "بسته‌شده",
}
# How a national ID was verified (the store's id_status).
ID_STATUSES = frozenset({"verified", "unverified", "to_transcribe", "none"})
SECONDS_PER_DAY = 86_400.0


def arrival_status(complete: bool) -> str:
    """The status a case opens with: received, or received_incomplete for a message cut short."""
    return RECEIVED if complete else RECEIVED_INCOMPLETE


def duplicate_window_s(duplicate_window_days: float) -> float:
    """How far back the one duplicate rule looks (``Store.intake``'s ``window_s``), for every channel."""
    return duplicate_window_days * SECONDS_PER_DAY


@dataclass(frozen=True)
class FiledCase:
    """What filing came to: the case's tracking code; ``duplicate`` when an open case of the same subject,
    agency and category was there already and the call was linked to it instead of opening another."""

    tracking_code: str
    duplicate: bool = False
