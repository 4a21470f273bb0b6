"""Unit tests for free-text cleaning (softswitch.domain.text) and where text from people enters the store."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from softswitch.config import ApiToken, Config
from softswitch.domain.text import clean_text
from softswitch.web.intake import add_intake_routes, token_sha256
from storage.crypto import IdProtector
from storage.store import Store, open_store

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
        "\u200e", "\u200f", "\u061c"]
SMS = "sms-secret-token"


def test_bidi_controls_are_removed() -> None:
    for control in BIDI:
        assert clean_text(f"کد{control} پیگیری") == "کد پیگیری", hex(ord(control))
    # An override that would show "۱۲۳۴" as "۴۳۲۱" to the next reader.
    assert clean_text("کد \u202e۱۲۳۴\u202c است") == "کد ۱۲۳۴ است"


def test_other_controls_go_but_newlines_tabs_and_persian_joiners_stay() -> None:
    every_c0_c1 = "".join(chr(c) for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)])
    assert clean_text(f"a{every_c0_c1}b") == "a\t\n\nb"  # tab, newline; the CR of the set becomes a break
    assert clean_text("یک\r\nدو\rسه\nچهار") == "یک\nدو\nسه\nچهار"
    # ZWNJ and ZWJ spell Persian words (می‌شود); they are not controls to remove.
    assert clean_text("می\u200cشود \u200d") == "می\u200cشود \u200d"
    assert clean_text("آب کوچه ۳ روز قطع است.") == "آب کوچه ۳ روز قطع است."


def test_nothing_cleaned_holds_a_control_or_a_bidi_mark() -> None:
    text = "".join(chr(c) for c in range(0x3000)) + "".join(BIDI)
    cleaned = clean_text(text)
    assert not any(ch in cleaned for ch in BIDI)
    assert {ch for ch in cleaned if unicodedata.category(ch) == "Cc"} == {"\t", "\n"}


# -- the intake API ----------------------------------------------------------------------------------

@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.db", IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as opened:
        yield opened


@pytest.fixture
async def client(store: Store, tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    config = Config(data_dir=tmp_path, api_tokens=(ApiToken(name="sms-gateway", sha256=token_sha256(SMS),
                                                            channel="sms"),))
    add_intake_routes(app, store, config, lambda channel, duplicate: None)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _request(text: str) -> dict[str, str]:
    return {"channel": "sms", "subject_national_id": "0499370899", "agency": "health", "category": "شکایت",
            "text": text}


async def test_intake_text_reaches_the_store_without_bidi_or_control_characters(
        client: TestClient[web.Request, web.Application], store: Store) -> None:
    text = "\u202eنوبت\u202c جراحی\u2067 پدرم\u2069 عقب افتاده\u200f\x00\x1b است\u061c"
    response = await client.post("/api/cases", json=_request(text), headers={"Authorization": f"Bearer {SMS}"})
    assert response.status == 201, await response.text()
    [case] = await store.list_cases()
    assert case.summary == "نوبت جراحی پدرم عقب افتاده است"

    response = await client.post("/api/cases", json=_request(" \u202e\u200f\u2066 "),
                                 headers={"Authorization": f"Bearer {SMS}"})
    assert response.status == 422
    assert [f["field"] for f in (await response.json())["fields"]] == ["text"]
    assert len(await store.list_cases()) == 1
