"""SMS of tracking codes: the texts and numbers, the config, the outbox on both engines, and the sender
against a real HTTP gateway started by each test (aiohttp on 127.0.0.1, a free port) that records what it
is sent and answers as the test scripts it: 200, 500, 400, 429, or not at all."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from softswitch.config import ConfigError, SmsConfig, load_config
from softswitch.control.metrics import Metrics, idle_state
from softswitch.control.sms import SmsSender, StoreSmsRequests, retry_delay_s, verdict
from softswitch.domain.persian import persian_digits
from softswitch.domain.sms import ANSWER_READY, TRACKING_CODE, iran_mobile, sms_text
from storage.crypto import IdProtector
from storage.models import Case, PersonId
from storage.outbox import LOST_ATTEMPT, SmsMessage
from storage.retention import RetentionWindows, apply, plan
from storage.store import Store, open_store
from tests.unit.conftest import store_protector

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

NATIONAL_ID = "0499370899"
MOBILE = "09121234567"
RECIPIENT = "+989121234567"
TOKEN = "gateway-token-5f2a9c"
T0 = 1_800_000_000.0


# -- texts and numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["09121234567", "+989121234567", "00989121234567", "989121234567",
                                    " 09351234567 "])
def test_iranian_mobiles_in_every_form_are_one_e164_number(number: str) -> None:
    assert iran_mobile(number) in (RECIPIENT, "+989351234567")


@pytest.mark.parametrize("number", ["02188776655", "+982188776655", "9121234567", "0912123456", "091212345678",
                                    "+449121234567", "111", "", "anonymous", "۰۹۱۲۱۲۳۴۵۶۷"])
def test_landlines_foreign_short_and_malformed_numbers_are_not_mobiles(number: str) -> None:
    assert iran_mobile(number) is None


def test_texts_are_persian_with_the_code_in_persian_digits_and_nothing_else_of_the_case() -> None:
    code = "123456782"
    for kind in (TRACKING_CODE, ANSWER_READY):
        text = sms_text(kind, code)
        assert persian_digits(code) in text and persian_digits("111") in text
        assert not any(c.isascii() and c.isdigit() for c in text)  # no Latin digit at all
    # Persian SMS are UCS-2: 70 characters make one message, 2 x 67 two.
    assert len(sms_text(TRACKING_CODE, code)) <= 70 and 70 < len(sms_text(ANSWER_READY, code)) <= 134
    assert persian_digits("1999") in sms_text(TRACKING_CODE, code, "1999")
    with pytest.raises(ValueError, match="tracking_code, answer_ready"):
        sms_text("promotion", code)


# -- the gateway's answers as outcomes, and the backoff -------------------------------------------------

@pytest.mark.parametrize("status, outcome", [(200, "sent"), (202, "sent"), (204, "sent"), (429, "retry"),
                                             (500, "retry"), (503, "retry"), (400, "failed"), (401, "failed"),
                                             (404, "failed"), (302, "failed")])
def test_statuses_become_outcomes(status: int, outcome: str) -> None:
    assert verdict(status, "Reason").outcome == outcome


def test_backoff_doubles_up_to_its_bound_and_honours_a_longer_retry_after() -> None:
    cfg = SmsConfig(url="http://127.0.0.1:1/", token=TOKEN, retry_initial_s=30, retry_max_s=200)
    assert [retry_delay_s(n, cfg) for n in range(1, 6)] == [30, 60, 120, 200, 200]
    assert retry_delay_s(1, cfg, verdict(429, "", "90").retry_after_s) == 90
    assert retry_delay_s(1, cfg, verdict(429, "", "100000").retry_after_s) == 200
    assert verdict(503, "", "Wed, 21 Oct 2026 07:28:00 GMT").retry_after_s is None  # a date: the backoff serves
    assert retry_delay_s(10_000, cfg) == 200


# -- the config -----------------------------------------------------------------------------------------

def test_without_a_url_nothing_is_offered_or_sent() -> None:
    assert not load_config().sms.enabled and not load_config().sms.offered
    on = load_config(overrides={"sms.url": "https://sms.example/send", "sms.token": TOKEN})
    assert on.sms.enabled and on.sms.offered
    assert not load_config(overrides={"sms.url": "https://sms.example/send", "sms.token": TOKEN,
                                      "sms.offer": False}).sms.offered


@pytest.mark.parametrize("overrides, message", [
    ({"sms.url": "http://sms.example/send", "sms.token": TOKEN}, "must be https:// beyond loopback"),
    ({"sms.url": "ftp://127.0.0.1/x", "sms.token": TOKEN}, "URL naming a host"),
    ({"sms.url": "https://user:pw@sms.example/send", "sms.token": TOKEN}, "must not hold credentials"),
    ({"sms.url": "https://sms.example/send"}, "needs its bearer token"),
    ({"sms.url": "https://sms.example/send", "sms.token": "secret token"}, "printable ASCII"),
    ({"sms.retry_initial_s": 60, "sms.retry_max_s": 30}, "retry_max_s"),
    ({"sms.attempts": 0}, "sms.attempts"),
])
def test_a_bad_sms_config_is_refused_naming_the_field_and_never_the_token(overrides: dict[str, Any],
                                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(overrides=overrides)
    assert "sms" in str(refused.value) and "secret token" not in str(refused.value)


def test_check_config_and_repr_show_the_token_as_stars() -> None:
    config = load_config(overrides={"sms.url": "https://sms.example/send", "sms.token": TOKEN})
    printed = config.model_dump_json(indent=2)  # what `softswitch check-config` prints
    assert TOKEN not in printed and TOKEN not in repr(config) and '"token": "**********"' in printed
    assert config.sms.token is not None and config.sms.token.get_secret_value() == TOKEN


# -- a real gateway ------------------------------------------------------------------------------------

@dataclass
class Received:
    body: dict[str, Any]
    raw: bytes
    authorization: str | None
    content_type: str


@dataclass
class Gateway:
    """An SMS gateway on 127.0.0.1: each request takes the next scripted answer ("200" when none is left);
    "hang" never answers (until the test ends)."""

    answers: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    url: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append(Received(json.loads(raw), raw, request.headers.get("Authorization"),
                                      request.content_type))
        answer = self.answers.pop(0) if self.answers else "200"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if answer == "hang":
            await self.released.wait()
            return web.Response(status=200)
        status, _, retry_after = answer.partition(" retry-after ")
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.json_response({"id": f"gw-{len(self.received)}"}, status=int(status), headers=headers)

    def references(self) -> list[str]:
        return [r.body["reference"] for r in self.received]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/send", gw.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gw.url = f"http://127.0.0.1:{port}/send"
    try:
        yield gw
    finally:
        gw.released.set()
        await runner.cleanup()


class Clock:
    """The sender's wall clock, moved by the test: retries fall due when the test says."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    store: Store
    gateway: Gateway
    clock: Clock
    metrics: Metrics
    sender: SmsSender
    case: Case


def sms_config(gateway: Gateway, **changes: Any) -> SmsConfig:
    values: dict[str, Any] = {"url": gateway.url, "token": TOKEN, "timeout_s": 0.5, "attempts": 3,
                              "retry_initial_s": 10.0, "retry_max_s": 40.0, "batch": 5}
    return SmsConfig.model_validate(values | changes)


async def message_case(store: Store, sip_call_id: str = "sms@trunk") -> Case:
    """A message call's case under a verified national ID, the way the IVR opens it."""
    call_id = await store.add_call(sip_call_id, f"sip:{MOBILE}@trunk", "sip:111@switch", "127.0.0.1", 0, T0)
    return await store.open_call_case(call_id, PersonId(NATIONAL_ID, "keypad", "verified"))


@pytest.fixture
async def setup(tmp_path: Path, gateway: Gateway) -> AsyncIterator[Setup]:
    async with open_store(tmp_path / "store.db", store_protector()) as store:
        clock, metrics = Clock(), Metrics(idle_state)
        sender = SmsSender(sms_config(gateway), store.sms, metrics, clock=clock)
        try:
            yield Setup(store, gateway, clock, metrics, sender, await message_case(store))
        finally:
            await sender.close()


async def request_code(s: Setup, case: Case | None = None) -> SmsMessage:
    case = case or s.case
    await StoreSmsRequests(s.store, "111").request_sms(case.tracking_code, RECIPIENT)
    return (await s.store.sms.for_case(case.id))[-1]


async def status_of(s: Setup, message: SmsMessage) -> SmsMessage:
    found = await s.store.sms.get(message.id)
    assert found is not None
    return found


def counted(metrics: Metrics, kind: str, outcome: str) -> float:
    for line in metrics.text().decode().splitlines():
        if line.startswith(f'softswitch_sms_total{{kind="{kind}",outcome="{outcome}"}}'):
            return float(line.rpartition(" ")[2])
    return 0.0


async def test_a_message_is_posted_once_with_the_documented_body_and_the_bearer_token(setup: Setup) -> None:
    message = await request_code(setup)
    assert message.status == "pending" and message.text == sms_text(TRACKING_CODE, setup.case.tracking_code)
    assert await setup.sender.send_due() == 1
    (got,) = setup.gateway.received
    assert got.body == {"to": RECIPIENT, "text": message.text, "sender": "111", "reference": str(message.id)}
    assert got.authorization == f"Bearer {TOKEN}" and got.content_type == "application/json"
    done = await status_of(setup, message)
    assert (done.status, done.attempts, done.last_error, done.sent_at) == ("sent", 1, None, T0)
    assert await setup.sender.send_due() == 0 and len(setup.gateway.received) == 1  # never again
    assert counted(setup.metrics, TRACKING_CODE, "sent") == 1


async def test_a_server_error_is_retried_after_the_backoff_then_sent(setup: Setup) -> None:
    setup.gateway.answers = ["500"]
    message = await request_code(setup)
    await setup.sender.send_due()
    waiting = await status_of(setup, message)
    assert (waiting.status, waiting.attempts, waiting.next_attempt_at) == ("pending", 1, T0 + 10)
    assert waiting.last_error == "HTTP 500 Internal Server Error"
    setup.clock.now = T0 + 9.9
    assert await setup.sender.send_due() == 0  # not due yet
    setup.clock.now = T0 + 10
    assert await setup.sender.send_due() == 1
    done = await status_of(setup, message)
    assert (done.status, done.attempts) == ("sent", 2)
    assert setup.gateway.references() == [str(message.id)] * 2  # the same reference on every attempt
    assert counted(setup.metrics, TRACKING_CODE, "retry") == 1 and counted(setup.metrics, TRACKING_CODE, "sent") == 1


async def test_a_refusal_fails_the_message_for_good(setup: Setup) -> None:
    setup.gateway.answers = ["400"]
    message = await request_code(setup)
    await setup.sender.send_due()
    setup.clock.now = T0 + 3600
    assert await setup.sender.send_due() == 0
    failed = await status_of(setup, message)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 1, "HTTP 400 Bad Request")
    assert len(setup.gateway.received) == 1 and counted(setup.metrics, TRACKING_CODE, "failed") == 1


async def test_429_waits_as_long_as_asked_and_the_last_attempt_gives_up(setup: Setup) -> None:
    setup.gateway.answers = ["429 retry-after 25", "429", "503"]
    message = await request_code(setup)
    await setup.sender.send_due()
    assert (await status_of(setup, message)).next_attempt_at == T0 + 25  # longer than the 10 s backoff
    setup.clock.now = T0 + 25
    await setup.sender.send_due()
    assert (await status_of(setup, message)).next_attempt_at == T0 + 25 + 20  # doubled
    setup.clock.now = T0 + 45
    await setup.sender.send_due()
    gave_up = await status_of(setup, message)
    assert (gave_up.status, gave_up.attempts, gave_up.last_error) == ("gave_up", 3, "HTTP 503 Service Unavailable")
    setup.clock.now = T0 + 10_000
    assert await setup.sender.send_due() == 0 and len(setup.gateway.received) == 3  # attempts bounded
    assert counted(setup.metrics, TRACKING_CODE, "gave_up") == 1


async def test_a_gateway_that_hangs_is_timed_out_and_tried_again(setup: Setup) -> None:
    setup.gateway.answers = ["hang"]
    message = await request_code(setup)
    started = time.monotonic()
    await setup.sender.send_due()
    assert time.monotonic() - started < 5
    waiting = await status_of(setup, message)
    assert (waiting.status, waiting.last_error) == ("pending", "no answer within 0.5 s")
    setup.clock.now = T0 + 10
    await setup.sender.send_due()
    assert (await status_of(setup, message)).status == "sent"


async def test_no_connection_is_retried(setup: Setup, tmp_path: Path) -> None:
    message = await request_code(setup)
    closed = SmsSender(sms_config(setup.gateway, url="http://127.0.0.1:9/send"), setup.store.sms, setup.metrics,
                       clock=setup.clock)
    try:
        await closed.send_due()
    finally:
        await closed.close()
    waiting = await status_of(setup, message)
    assert waiting.status == "pending" and waiting.last_error is not None
    assert waiting.last_error.startswith("ClientConnectorError") and TOKEN not in waiting.last_error


async def test_a_message_whose_sender_stopped_mid_attempt_is_taken_again_after_its_lease(setup: Setup) -> None:
    first = await request_code(setup)
    other = await request_code(setup, await message_case(setup.store, "other@trunk"))
    lease = setup.sender.lease_s
    # Another host claimed both and died before writing the outcome; the second was on its last attempt.
    assert len(await setup.store.sms.claim(T0, lease, 10, max_attempts=3)) == 2
    await setup.store.sms.claim(T0 + lease, lease, 10, max_attempts=3)
    await setup.store.sms.claim(T0 + 2 * lease, lease, 10, max_attempts=3)  # both at attempt 3 now
    await setup.store.sms.retry_at(await status_of(setup, first), "HTTP 500", T0 + 2 * lease)
    setup.clock.now = T0 + 2 * lease + 1
    assert await setup.sender.send_due() == 0  # first: pending but spent; other: its lease not yet over
    setup.clock.now = T0 + 3 * lease
    await setup.sender.send_due()
    spent, lost = await status_of(setup, first), await status_of(setup, other)
    assert (spent.status, spent.last_error) == ("gave_up", "HTTP 500")
    assert (lost.status, lost.attempts, lost.last_error) == ("gave_up", 3, LOST_ATTEMPT)
    assert setup.gateway.received == []


async def test_a_late_outcome_of_a_lapsed_lease_changes_nothing(setup: Setup) -> None:
    await request_code(setup)
    (mine,) = await setup.store.sms.claim(T0, 1.0, 10, max_attempts=3)
    (theirs,) = await setup.store.sms.claim(T0 + 1.0, 60.0, 10, max_attempts=3)  # another sender took it
    assert not await setup.store.sms.sent(mine, T0 + 2)
    assert await setup.store.sms.sent(theirs, T0 + 2)


async def test_the_running_sender_sends_a_queued_message_at_once_and_counts_what_waits(
        tmp_path: Path, gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="softswitch.sms")
    async with open_store(tmp_path / "store.db", store_protector()) as store:
        metrics = Metrics(idle_state)
        # Only the wake-up can make it quick; a key in the URL's query is never logged.
        cfg = sms_config(gateway, poll_interval_s=60.0, url=gateway.url + "?key=url-secret-77")
        sender = SmsSender.start(cfg, store, metrics)
        assert sender is not None and SmsSender.start(SmsConfig(), store, metrics) is None
        try:
            case = await message_case(store)
            await asyncio.sleep(0.2)  # the first round has found nothing and waits
            await StoreSmsRequests(store, "111", sender.wake).request_sms(case.tracking_code, RECIPIENT)
            async with asyncio.timeout(10):
                while not gateway.received or sender.waiting:
                    await asyncio.sleep(0.02)
            assert [m.status for m in await store.sms.for_case(case.id)] == ["sent"]
        finally:
            await sender.close()
        assert 'softswitch_sms_pending 0.0' in metrics.text().decode()
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == "softswitch.sms")
    assert "sent on attempt 1" in ours and "url-secret-77" not in ours
    for secret in (TOKEN, RECIPIENT, MOBILE[1:], gateway.received[0].body["text"]):
        assert secret not in ours


# -- both engines: two hosts, the answer-ready notice, retention -----------------------------------------

async def test_two_senders_on_one_database_never_send_a_message_twice(
        two_stores: tuple[Store, Store], gateway: Gateway) -> None:
    first, second = two_stores
    # Requests overlap, so the two senders' rounds interleave: 30 messages, 5 a round sent side by side, take
    # one sender 1.2 s alone, far longer than the other needs to claim its first.
    gateway.delay_s = 0.2
    messages = []
    for n in range(30):
        case = await message_case(first, f"c{n}@trunk")
        await StoreSmsRequests(first, "111").request_sms(case.tracking_code, RECIPIENT)
        messages.append(case)
    clock, metrics = Clock(), Metrics(idle_state)
    senders = [SmsSender(sms_config(gateway), store.sms, metrics, clock=clock) for store in two_stores]
    assert [await store.sms.waiting() for store in two_stores] == [30, 30]  # both connected, before the race
    try:
        async def drain(sender: SmsSender, store: Store) -> int:
            # A claim that loses the race for the same rows (PostgreSQL re-checks them once the other's
            # claim commits) takes nothing that round: go on until nothing is waiting, not to the first 0.
            total = 0
            for _ in range(40):  # bounded: 30 messages, 5 a round, two senders
                total += await sender.send_due()
                if await store.sms.waiting() == 0:
                    break
            return total
        claimed = await asyncio.gather(*(drain(sender, store) for sender, store in zip(senders, two_stores)))
    finally:
        for sender in senders:
            await sender.close()
    assert sum(claimed) == 30 and all(claimed)  # both took part
    assert sorted(gateway.references(), key=int) == sorted({r for r in gateway.references()}, key=int)
    assert len(gateway.references()) == 30
    assert await second.sms.waiting() == 0
    # No request carried the national ID (whole or masked) or anything but the documented fields.
    for got in gateway.received:
        assert NATIONAL_ID.encode() not in got.raw and IdProtector.mask(NATIONAL_ID).encode() not in got.raw
        assert set(got.body) == {"to", "text", "sender", "reference"}


async def answered(store: Store, case: Case) -> None:
    """The agency's answer, with the answer-ready SMS queued in its transaction, as the agency page does."""
    async def notice(tx: Store, after: Case) -> None:
        await tx.sms.queue_answer_ready(after.id, sms_text(ANSWER_READY, after.tracking_code))
    await store.set_answer(case.id, "agency:health/u1", text="پاسخ", also=notice)


async def test_the_answer_ready_notice_goes_once_to_the_number_that_asked(
        two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    asked, silent = await message_case(first, "a@trunk"), await message_case(first, "b@trunk")
    await first.sms.queue(asked.id, TRACKING_CODE, "+989350000000", "old", now=T0)
    await first.sms.queue(asked.id, TRACKING_CODE, RECIPIENT, "new", now=T0 + 1)  # asked again on a later call
    await asyncio.gather(answered(first, asked), answered(second, asked), answered(second, silent))
    await answered(first, asked)  # an answer replaced
    notices = [m for m in await second.sms.for_case(asked.id) if m.kind == ANSWER_READY]
    assert [(m.recipient, m.text, m.status) for m in notices] == [
        (RECIPIENT, sms_text(ANSWER_READY, asked.tracking_code), "pending")]
    assert await first.sms.for_case(silent.id) == []  # nobody asked: no notice
    assert (await first.get_case_by_id(silent.id)).status == "answered"


async def test_an_answer_and_its_notice_are_one_transaction(two_stores: tuple[Store, Store]) -> None:
    store, _ = two_stores
    case = await message_case(store)
    await store.sms.queue(case.id, TRACKING_CODE, RECIPIENT, "code", now=T0)

    async def broken(tx: Store, after: Case) -> None:
        await tx.sms.queue_answer_ready(after.id, "ready")
        raise RuntimeError("the notice could not be queued")
    with pytest.raises(RuntimeError):
        await store.set_answer(case.id, "agency:health/u1", text="پاسخ", also=broken)
    assert (await store.get_case_by_id(case.id)).status == "received"
    assert [m.kind for m in await store.sms.for_case(case.id)] == [TRACKING_CODE]


async def test_a_closed_case_past_its_period_goes_with_its_sms_messages(two_stores: tuple[Store, Store]) -> None:
    store, _ = two_stores
    case = await message_case(store)
    await store.sms.queue(case.id, TRACKING_CODE, RECIPIENT, "code")
    await answered(store, case)
    await store.set_case_status(case.id, "closed")
    due = await plan(store, RetentionWindows(closed_cases_days=1), time.time() + 2 * 86400)
    result = await apply(store, due)
    assert result.deleted["case"] == 1 and result.deleted["sms_message"] == 2
    assert await store.sms.for_case(case.id) == []
