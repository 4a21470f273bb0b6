"""Control process: the SMS sender, which takes due messages off the outbox and posts them to the gateway.

The gateway contract (README, "SMS of the tracking code"): ``POST sms.url`` with the JSON
body ``{"to", "text", "sender", "reference"}`` and ``Authorization: Bearer
<sms.token>``. A 2xx answer means sent; 429, 5xx, a timeout or no connection
is tried again after a backoff (``retry_initial_s`` doubling up to
``retry_max_s``, or the gateway's Retry-After when longer) until
``sms.attempts`` attempts in all, then the message is given up; any other
answer (4xx, a redirect) fails it for good. The claim on the outbox
(``storage/outbox.py``) keeps two hosts from sending one message twice; a
message whose sender stopped mid-attempt is taken again once its lease runs
out, with the same ``reference``, so the gateway may drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from softswitch.config import SmsConfig
from softswitch.control.metrics import Metrics
from softswitch.domain.sms import TRACKING_CODE, sms_text
from softswitch.domain.tracking_code import code_tail
from storage.errors import StoreError
from storage.outbox import SmsMessage, SmsOutbox
from storage.store import Store

log = logging.getLogger("softswitch.sms")

# A claimed message is leased for the request's timeout and this much more (the outcome's write):
# only a sender that stopped leaves it that long.
LEASE_MARGIN_S = 30.0
# What of an error is kept in the outbox and the log: the gateway's status line or the client's error,
# never a body (which may quote the number or the text).
ERROR_MAX_CHARS = 200
CLOSE_MARGIN_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """What one attempt came to: ``sent``, ``retry`` (maybe after ``retry_after_s``) or ``failed``."""

    outcome: str
    error: str | None = None
    retry_after_s: float | None = None


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (RFC 9110 §10.2.3); an HTTP date or anything else is ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def verdict(status: int, reason: str | None, retry_after_header: str | None = None) -> Verdict:
    """The gateway's answer as an outcome: 2xx sent; 429 and 5xx retry; anything else failed for good."""
    error = f"HTTP {status} {reason or ''}".strip()[:ERROR_MAX_CHARS]
    if 200 <= status < 300:
        return Verdict("sent")
    if status == 429 or 500 <= status < 600:
        return Verdict("retry", error, retry_after(retry_after_header))
    return Verdict("failed", error)


def retry_delay_s(attempt: int, cfg: SmsConfig, asked_s: float | None = None) -> float:
    """How long after failed attempt number ``attempt`` (1, 2, ...) the next is made: ``retry_initial_s``
    doubling each time, at most ``retry_max_s``; a longer Retry-After is honoured up to that bound too."""
    backoff = cfg.retry_initial_s * 2.0 ** min(attempt - 1, 32)
    return min(max(backoff, asked_s or 0.0), cfg.retry_max_s)


class SmsSender:
    """The outbox's sender, a task of the control process while a gateway is configured."""

    def __init__(self, cfg: SmsConfig, outbox: SmsOutbox, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        assert cfg.url is not None and cfg.token is not None, "no SMS gateway configured"
        self.cfg = cfg
        self.url = cfg.url
        self._authorization = f"Bearer {cfg.token.get_secret_value()}"
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.waiting = 0  # messages pending or sending, as of the last round (the metrics' gauge)
        self._due = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def start(cls, cfg: SmsConfig, store: Store, metrics: Metrics) -> SmsSender | None:
        """The running sender, or None when no gateway is configured (nothing is ever sent)."""
        if not cfg.enabled:
            return None
        sender = cls(cfg, store.sms, metrics)
        sender._task = asyncio.create_task(sender._run(), name="sms-sender")
        return sender

    @property
    def lease_s(self) -> float:
        return self.cfg.timeout_s + LEASE_MARGIN_S

    def wake(self) -> None:
        """A message was queued here: look at the outbox now rather than at the next poll."""
        self._due.set()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # No proxy from the environment, no cookies kept: each request is the contract's alone.
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                                               cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def close(self) -> None:
        """Stop taking messages; a round in progress may finish its requests (bounded by the timeout)."""
        self._stopping = True
        self._due.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.cfg.timeout_s + CLOSE_MARGIN_S)
            except asyncio.TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        # The URL without its query: an operator may have put a key there.
        where = urlsplit(self.url)._replace(query="", fragment="").geturl()
        log.info("sms: sending through %s as %s, %d attempts at most", where, self.cfg.sender, self.cfg.attempts)
        failing = False
        while not self._stopping:
            self._due.clear()
            handled = 0
            try:
                handled = await self.send_due()
                self.waiting = await self.outbox.waiting()
                if failing:
                    log.warning("sms: the outbox can be read again")
                failing = False
            except StoreError as exc:
                if not failing:
                    log.error("sms: the outbox cannot be read, messages wait: %s", exc)
                failing = True
            except Exception:
                log.exception("sms: a round failed; the next starts after the poll interval")
            if handled < self.cfg.batch or failing:  # a full batch: more may be due at once
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._due.wait(), self.cfg.poll_interval_s)

    async def send_due(self) -> int:
        """One round: give up what has had its attempts, claim up to ``batch`` due messages and send them
        side by side; how many were claimed."""
        now = self.clock()
        for message in await self.outbox.give_up_spent(now, self.cfg.attempts):
            self._counted(message, "gave_up", message.last_error)
        claimed = await self.outbox.claim(now, self.lease_s, self.cfg.batch, self.cfg.attempts)
        await asyncio.gather(*(self._deliver(message) for message in claimed))
        return len(claimed)

    async def _post(self, message: SmsMessage) -> Verdict:
        body = {"to": message.recipient, "text": message.text, "sender": self.cfg.sender,
                "reference": str(message.id)}
        try:
            async with self._session().post(self.url, json=body, allow_redirects=False,
                                            headers={"Authorization": self._authorization}) as response:
                return verdict(response.status, response.reason, response.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            return Verdict("retry", f"no answer within {self.cfg.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return Verdict("retry", f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS])

    async def _deliver(self, message: SmsMessage) -> None:
        result = await self._post(message)
        outcome = result.outcome
        try:
            if outcome == "sent":
                kept = await self.outbox.sent(message, self.clock())
            elif outcome == "failed":
                kept = await self.outbox.failed(message, result.error or "")
            elif message.attempts >= self.cfg.attempts:
                outcome = "gave_up"
                kept = await self.outbox.gave_up(message, result.error or "")
            else:
                delay = retry_delay_s(message.attempts, self.cfg, result.retry_after_s)
                kept = await self.outbox.retry_at(message, result.error or "", self.clock() + delay)
        except StoreError as exc:
            # Its lease runs out and it is taken again: the gateway sees the same reference twice.
            log.error("sms %d: attempt %d was %s, and the outbox could not be told: %s", message.id,
                      message.attempts, outcome, exc)
            return
        if not kept:
            log.warning("sms %d: attempt %d was %s after its lease ran out; another sender holds it now",
                        message.id, message.attempts, outcome)
        self._counted(message, outcome, result.error)

    def _counted(self, message: SmsMessage, outcome: str, error: str | None) -> None:
        """The metric and one log line; the number and the text never go into either."""
        self.metrics.sms_attempted(message.kind, outcome)
        level = logging.INFO if outcome in ("sent", "retry") else logging.WARNING
        log.log(level, "sms %d (%s, case %d) %s on attempt %d%s", message.id, message.kind, message.case_id,
                outcome.replace("_", " "), message.attempts, f": {error}" if error else "",
                extra={"event": "sms", "sms_id": message.id, "kind": message.kind, "outcome": outcome,
                       "attempt": message.attempts})


class StoreSmsRequests:
    """The IVR's view of the outbox (``ivr.sms_offer.SmsRequests``): a caller's request for the SMS of a code."""

    def __init__(self, store: Store, service_number: str, wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.service_number = service_number
        self.wake = wake  # the sender of this host, told a message is due

    async def request_sms(self, tracking_code: str, recipient: str) -> None:
        case = await self.store.get_case(tracking_code)
        message_id = await self.store.sms.queue(case.id, TRACKING_CODE, recipient,
                                                sms_text(TRACKING_CODE, tracking_code, self.service_number))
        log.info("sms %d (tracking_code) queued for case %s", message_id, code_tail(tracking_code),
                 extra={"event": "sms_queued", "sms_id": message_id, "tracking_code_tail": code_tail(tracking_code)})
        self.wake()
