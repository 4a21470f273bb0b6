"""IVR layer: the offer of an SMS of the tracking code, once, after it was read back.

Offered only to a caller whose number is an Iranian mobile; 1 within the wait
queues the SMS (the outbox, ``storage/outbox.py``; sent by the control process's
sender), anything else or silence goes on without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivr.channel import ANY_KEY, CallChannel
from softswitch.domain.sms import iran_mobile
from storage.errors import StoreError

log = logging.getLogger("ivr.sms_offer")

ACCEPT_KEY = "1"


class Prompts(Protocol):
    def path(self, name: str) -> Path: ...


class SmsRequests(Protocol):
    """Where a caller's request goes (the outbox, seen from the IVR)."""

    async def request_sms(self, tracking_code: str, recipient: str) -> None:
        """Queue the SMS of ``tracking_code`` to ``recipient`` (E.164)."""
        ...


@dataclass(frozen=True)
class SmsOffer:
    """The offer as one call sees it: where requests go, and how long the caller has to press 1."""

    requests: SmsRequests
    wait_s: float


async def offer_sms(channel: CallChannel, prompts: Prompts, offer: SmsOffer, tracking_code: str,
                    caller_number: str) -> str:
    """Offer the SMS of the code; the outcome for the CDR path: not_mobile, queued, declined or error."""
    recipient = iran_mobile(caller_number)
    if recipient is None:
        return "not_mobile"
    # Only a key pressed for this question counts: one typed during the read-back is no answer to it.
    channel.clear_digits()
    await channel.play([prompts.path("sms_offer")], interrupt=ANY_KEY)
    if await channel.next_digit(offer.wait_s) != ACCEPT_KEY:
        return "declined"
    try:
        await offer.requests.request_sms(tracking_code, recipient)
    except StoreError as exc:
        log.error("the SMS of the tracking code could not be queued: %s", exc)
        await channel.play([prompts.path("sms_failed")])
        return "error"
    await channel.play([prompts.path("sms_queued")])
    return "queued"
