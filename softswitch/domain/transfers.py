"""Where an agent may hand a connected call (the console, the desk and the call's dialogue share these
names): a colleague by their agent id, the queue's head, or an agency's configured line."""

from __future__ import annotations

TO_QUEUE = "queue"  # the caller goes back to the head of the queue, for the next agent
AGENCY_PREFIX = "agency:"  # "agency:<id>": the agency's phone number, dialled through the outbound trunk


def agency_line(agency_id: str) -> str:
    """The transfer target of an agency's line."""
    return AGENCY_PREFIX + agency_id


def agency_of(target: str) -> str | None:
    """The agency a transfer target names, or None for a colleague or the queue."""
    return target[len(AGENCY_PREFIX):] if target.startswith(AGENCY_PREFIX) else None
