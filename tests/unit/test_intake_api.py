"""Unit tests for the intake and reporting API (softswitch.web.intake) over aiohttp's test client and a real store."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from media.synth import EspeakSynthesizer
from softswitch.config import ApiToken, Config
from softswitch.web.app import build_app, store_unavailable
from softswitch.web.intake import OPENAPI_DOCUMENT, add_intake_routes, token_sha256
from storage.crypto import IdProtector
from storage.store import Store, open_store
from tests.fakes.desk import FakeDesk
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SMS, LETTER, REPORTS, NOTHING = "sms-secret-token", "letter-secret-token", "reports-secret-token", "idle-token"
TOKENS = (
    ApiToken(name="sms-gateway", sha256=token_sha256(SMS), channel="sms"),
    ApiToken(name="letter-office", sha256=token_sha256(LETTER), channel="letter"),
    ApiToken(name="statistics", sha256=token_sha256(REPORTS), reports=True),
    ApiToken(name="idle", sha256=token_sha256(NOTHING)),
)
SUBJECT, RELATIVE, STRANGER = "0499370899", "0790419904", "0084575948"
# The subject's ID as a Persian form writes it: Persian digits with a dash.
SUBJECT_IN_PERSIAN = "۰۴۹۹۳۷-۰۸۹۹"
NOT_AN_ID = "0499370898"  # wrong check digit
COMPLAINT = "شکایت"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path, api_tokens=TOKENS)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.db", IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as opened:
        yield opened


@pytest.fixture
def filed() -> list[tuple[str, bool]]:
    """(channel, duplicate) of each request the API told the metrics of."""
    return []


@pytest.fixture
async def client(store: Store, config: Config, filed: list[tuple[str, bool]]) -> AsyncIterator[Client]:
    app = web.Application()
    add_intake_routes(app, store, config, lambda channel, duplicate: filed.append((channel, duplicate)))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _request(channel: str = "sms", **fields: Any) -> dict[str, Any]:
    return {"channel": channel, "subject_national_id": SUBJECT, "agency": "health", "category": COMPLAINT,
            "text": "نوبت جراحی پدرم سه ماه است عقب افتاده", **fields}


async def _submit(client: Client, token: str, body: Any) -> tuple[int, Any]:
    response = await client.post("/api/cases", json=body, headers=_bearer(token))
    return response.status, await response.json()


async def test_requests_without_a_valid_token_get_401(client: Client) -> None:
    for headers in ({}, {"Authorization": f"Basic {SMS}"}, {"Authorization": "Bearer "},
                    _bearer("not-a-token"), {"Authorization": SMS}):
        for method, path in (("POST", "/api/cases"), ("GET", "/api/cases"), ("GET", "/api/reports/cases.csv"),
                             ("GET", "/api/reports/calls.csv"), ("GET", "/api/reports/ratings.csv")):
            response = await client.request(method, path, headers=headers, json=_request())
            assert response.status == 401, (headers, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await response.json()


async def test_tokens_only_do_what_they_are_for(client: Client) -> None:
    for token in (REPORTS, NOTHING):
        assert (await _submit(client, token, _request()))[0] == 403
    status, body = await _submit(client, SMS, _request(channel="letter"))
    assert status == 403 and "sms" in body["error"]
    for token in (SMS, LETTER, NOTHING):
        for path in ("/api/cases", "/api/reports/cases.csv", "/api/reports/calls.csv", "/api/reports/ratings.csv"):
            assert (await client.get(path, headers=_bearer(token))).status == 403, (token, path)


@pytest.mark.parametrize(("body", "fields"), [
    (_request(subject_national_id=NOT_AN_ID), ["subject_national_id"]),
    (_request(submitter_national_id=NOT_AN_ID), ["submitter_national_id"]),
    (_request(subject_national_id=1234567890), ["subject_national_id"]),
    (_request(agency="police"), ["agency"]),
    (_request(category="تبریک"), ["category"]),
    (_request(channel="fax"), ["channel"]),
    (_request(text="   "), ["text"]),
    (_request(extra="x"), ["extra"]),
    ({"channel": "sms"}, ["subject_national_id", "agency", "category", "text"]),
    ([SUBJECT], ["body"]),
])
async def test_invalid_requests_get_422_with_fields(client: Client, store: Store, body: Any,
                                                    fields: list[str]) -> None:
    status, answer = await _submit(client, SMS, body)
    assert status == 422
    assert [f["field"] for f in answer["fields"]] == fields
    # Error texts never echo what was sent.
    assert NOT_AN_ID not in json.dumps(answer) and SUBJECT not in json.dumps(answer)
    assert await store.list_cases() == []


async def test_a_body_that_is_not_json_gets_400(client: Client) -> None:
    response = await client.post("/api/cases", data=b"channel=sms", headers=_bearer(SMS))
    assert response.status == 400


async def test_a_body_nested_absurdly_deep_gets_400_not_500(client: Client) -> None:
    depth = 100_000  # 200 kB: within the body limit, far past the JSON parser's recursion limit
    deep = b"[" * depth + b"]" * depth
    response = await client.post("/api/cases", data=deep, headers={**_bearer(SMS), "Content-Type": "application/json"})
    assert response.status == 400
    assert await response.json() == {"error": "the body is nested too deeply"}
    deep_object = b'{"a":' * depth + b"1" + b"}" * depth
    response = await client.post("/api/cases", data=deep_object, headers=_bearer(SMS))
    assert response.status == 400


async def test_a_body_beyond_the_size_limit_gets_413(client: Client) -> None:
    response = await client.post("/api/cases", data=b" " * (2 * 1024 * 1024), headers=_bearer(SMS))
    assert response.status == 413


async def test_duplicates_from_every_channel_link_to_the_first_case(client: Client, store: Store,
                                                                    filed: list[tuple[str, bool]]) -> None:
    response = await client.post("/api/cases", json=_request(), headers=_bearer(SMS))
    assert response.status == 201
    first = await response.json()
    assert first["duplicate"] is False and response.headers["Location"] == f"/api/cases/{first['tracking_code']}"
    case = await store.get_case(first["tracking_code"])
    assert (case.status, case.channel, case.agency, case.category) == ("referred", "sms", "health", COMPLAINT)
    assert case.filed_by == "api:sms-gateway" and case.call_id is None and case.subject_is_caller

    # The same matter by letter from a family member, and again by SMS with the ID in Persian digits.
    assert await _submit(client, LETTER, _request(channel="letter", submitter_national_id=RELATIVE)) == (
        200, {"tracking_code": first["tracking_code"], "duplicate": True})
    assert await _submit(client, SMS, _request(subject_national_id=SUBJECT_IN_PERSIAN)) == (
        200, {"tracking_code": first["tracking_code"], "duplicate": True})
    assert len(await store.list_cases()) == 1
    assert filed == [("sms", False), ("letter", True), ("sms", True)]

    events = await store.case_events(case.id)
    assert [(e.actor, e.kind) for e in events] == [
        ("api:sms-gateway", "created"), ("api:letter-office", "contact"), ("api:sms-gateway", "contact")]
    assert events[1].detail["channel"] == "letter" and events[1].detail["submitter"] == "********04"
    assert events[2].detail["submitter"] == "********99"
    assert RELATIVE not in json.dumps([e.detail for e in events])

    # Another category, or the case closed: a new case.
    other = await _submit(client, SMS, _request(category="پرسش"))
    assert other[0] == 201 and other[1]["tracking_code"] != first["tracking_code"]
    await store.set_case_status(case.id, "closed", "agency:health/u1")
    again = await _submit(client, LETTER, _request(channel="letter", submitter_national_id=RELATIVE))
    assert again[0] == 201 and again[1]["duplicate"] is False
    by_relative = await store.get_case(again[1]["tracking_code"])
    assert by_relative.subject_is_caller is False and by_relative.caller_national_id_masked == "********04"
    assert await store.person_matches(by_relative.id, RELATIVE)


async def _seed(client: Client) -> dict[str, str]:
    """Three cases: health (SMS), roads (letter), health for a stranger (SMS); returns name -> tracking code."""
    codes = {}
    for name, token, body in (
        ("health", SMS, _request()),
        ("roads", LETTER, _request(channel="letter", agency="roads", submitter_national_id=RELATIVE)),
        ("stranger", SMS, _request(subject_national_id=STRANGER)),
    ):
        status, answer = await _submit(client, token, body)
        assert status == 201
        codes[name] = answer["tracking_code"]
    return codes


async def test_listing_cases_with_filters(client: Client, store: Store) -> None:
    codes = await _seed(client)
    await store.set_case_status((await store.get_case(codes["health"])).id, "closed", "agency:health/u1")

    async def listed(query: str) -> list[str]:
        response = await client.get(f"/api/cases{query}", headers=_bearer(REPORTS))
        assert response.status == 200, await response.text()
        text = await response.text()
        assert not any(national_id in text for national_id in (SUBJECT, RELATIVE, STRANGER))
        return [case["tracking_code"] for case in json.loads(text)]

    assert await listed("") == [codes["stranger"], codes["roads"], codes["health"]]
    assert await listed("?agency=health") == [codes["stranger"], codes["health"]]
    assert await listed("?agency=health&status=referred") == [codes["stranger"]]
    assert await listed("?status=closed") == [codes["health"]]
    assert await listed("?since=2000-01-01") == await listed("")
    assert await listed("?since=4102444800") == []  # 2100-01-01
    assert await listed("?limit=1") == [codes["stranger"]]

    [roads] = await (await client.get("/api/cases?agency=roads", headers=_bearer(REPORTS))).json()
    assert roads["national_id"] == "********99" and roads["caller"]["national_id"] == "********04"
    assert roads["channel"] == "letter" and roads["on_behalf_of_other"] is True

    for query, field in (("?status=done", "status"), ("?agency=police", "agency"), ("?since=soon", "since"),
                         ("?limit=0", "limit")):
        response = await client.get(f"/api/cases{query}", headers=_bearer(REPORTS))
        assert response.status == 422, query
        assert [f["field"] for f in (await response.json())["fields"]] == [field]


def _parse_csv(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # the BOM, for spreadsheet programs
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))


async def test_case_and_call_reports(client: Client, store: Store) -> None:
    codes = await _seed(client)
    call_id = await store.add_call("cdr-1@pstn", "sip:09121234567@pstn", "sip:111@gw", "127.0.0.1", 0, 1.0e9)
    phone = await store.create_case(call_id, "received", SUBJECT, "keypad")
    await store.end_call(call_id, 1.0e9 + 42, "completed", ["welcome", "message"])

    response = await client.get("/api/reports/cases.csv", headers=_bearer(REPORTS))
    assert response.status == 200 and response.content_type == "text/csv" and response.charset == "utf-8"
    assert "cases.csv" in response.headers["Content-Disposition"]
    body = await response.read()
    rows = _parse_csv(body)
    assert {row["tracking_code"] for row in rows} == {*codes.values(), phone.tracking_code}
    roads = next(row for row in rows if row["tracking_code"] == codes["roads"])
    assert (roads["national_id"], roads["caller_national_id"], roads["category"]) == ("********99", "********04",
                                                                                      COMPLAINT)
    assert roads["agency_name"] == "وزارت راه و شهرسازی" and roads["channel"] == "letter"
    for national_id in (SUBJECT, RELATIVE, STRANGER):
        assert national_id.encode() not in body
    filtered = _parse_csv(await (await client.get("/api/reports/cases.csv?agency=roads",
                                                  headers=_bearer(REPORTS))).read())
    assert [row["tracking_code"] for row in filtered] == [codes["roads"]]

    calls = _parse_csv(await (await client.get("/api/reports/calls.csv", headers=_bearer(REPORTS))).read())
    assert [(row["sip_call_id"], row["tracking_code"], row["duration_s"], row["disposition"]) for row in calls] == [
        ("cdr-1@pstn", phone.tracking_code, "42.0", "completed")]
    # The call arrived at 2001-09-09 06:16:40 in Tehran (+04:30 then); a since without offset is Tehran time.
    for since, expected in (("2001-09-09T06:16", 1), ("2001-09-09T06:17", 0), ("2001-09-09T01:46:40Z", 1),
                            ("1000000001", 0)):
        response = await client.get("/api/reports/calls.csv", params={"since": since}, headers=_bearer(REPORTS))
        assert len(_parse_csv(await response.read())) == expected, since


async def test_survey_results_per_agent_agency_and_day(client: Client, store: Store) -> None:
    # 2026-03-21 and 2026-03-22 in Tehran: 1 and 2 Farvardin 1405.
    for n, (day, agent, agency, score) in enumerate([("2026-03-21", "1001", "health", 5),
                                                      ("2026-03-21", "1001", "roads", 2),
                                                      ("2026-03-22", None, "health", 4)]):
        call_id = await store.add_call(f"rated-{n}@pstn", "sip:0912@pstn", "sip:111@gw", "127.0.0.1", 0, 1.0e9)
        await store.add_rating(call_id, "agent" if agent else "follow_up", score, at=1.0e9, day=day,
                               agent_id=agent, agency=agency)

    async def rows(**params: str) -> list[dict[str, str]]:
        response = await client.get("/api/reports/ratings.csv", params=params, headers=_bearer(REPORTS))
        assert response.status == 200 and response.content_type == "text/csv", await response.text()
        return _parse_csv(await response.read())
    assert [(r["agent"], r["count"], r["average"], r["score_2"], r["score_5"]) for r in await rows(by="agent")] == [
        ("1001", "2", "3.5", "1", "1"), ("", "1", "4.0", "0", "0")]
    assert [(r["agency"], r["name"], r["count"]) for r in await rows(by="agency")] == [
        ("health", "وزارت بهداشت، درمان و آموزش پزشکی", "2"), ("roads", "وزارت راه و شهرسازی", "1")]
    assert [(r["day"], r["name"], r["count"]) for r in await rows()] == [
        ("2026-03-21", "۱۴۰۵/۰۱/۰۱", "2"), ("2026-03-22", "۱۴۰۵/۰۱/۰۲", "1")]
    assert [r["day"] for r in await rows(since="2026-03-22", until="2026-03-22")] == ["2026-03-22"]
    for bad in ({"by": "caller"}, {"since": "yesterday"}, {"group": "agent"}):
        response = await client.get("/api/reports/ratings.csv", params=bad, headers=_bearer(REPORTS))
        assert response.status == 422, bad
    call = await (await client.get("/api/calls/rated-0@pstn", headers=_bearer(REPORTS))).json()
    assert call["rating"] == {"score": 5, "kind": "agent", "agent_id": "1001", "agency": "health"}


async def test_openapi_document_is_served_as_json(client: Client) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document == yaml.safe_load(OPENAPI_DOCUMENT.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1")


async def test_openapi_describes_every_api_route(store: Store, config: Config) -> None:
    desk = FakeDesk([])
    try:
        switch = SimpleNamespace(store=store, config=config, desk=desk, synthesizer=EspeakSynthesizer(),
                                 intake_filed=lambda channel, duplicate: None)
        app = build_app(switch)  # type: ignore[arg-type]
    finally:
        await desk.close()
    registered = {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
                  if route.resource is not None and route.resource.canonical.startswith("/api/")
                  and route.method != "HEAD"}
    assert {("/api/cases", "post"), ("/api/health", "get"), ("/api/cases/{tracking_code}", "get")} <= registered
    paths = yaml.safe_load(OPENAPI_DOCUMENT.read_text(encoding="utf-8"))["paths"]
    documented = {(path, method) for path, operations in paths.items() for method in operations}
    assert registered - documented == set(), "routes missing from configs/openapi.yaml"
    assert documented - registered == set(), "configs/openapi.yaml describes routes that do not exist"


async def test_a_database_server_gone_gets_503_not_500(config: Config) -> None:
    # A server of its own, since this test stops it.
    server = PostgresServer.start()
    try:
        async with open_store(server.url(), IdProtector({"k1": bytes(range(32))}, "k1", b"p" * 32)) as store:
            app = web.Application(middlewares=[store_unavailable])
            add_intake_routes(app, store, config, lambda channel, duplicate: None)
            async with TestClient(TestServer(app)) as test_client:
                assert (await _submit(test_client, SMS, _request()))[0] == 201
                server.stop()
                response = await test_client.post("/api/cases", json=_request(subject_national_id=STRANGER),
                                                  headers=_bearer(SMS))
                assert response.status == 503 and "Retry-After" in response.headers
                assert "StoreUnavailable" in (await response.json())["error"]
    finally:
        server.stop()
